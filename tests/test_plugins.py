"""Plugin discovery (entry points, spec files and modules) and the `Registry` they fill."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import gradaudit_text
import pytest

from gradaudit.errors import PluginError
from gradaudit.plugins import ALLOW_ENV, TRACE_ENV, Registration, Registry, plugin_manager

GOOD_PLUGIN = """
from gradaudit import hookimpl

__version__ = "2.5"


def build(vocab_size, **options):
    return None


def grads(model, batch, forward, **options):
    return {}


@hookimpl
def register_models(register):
    register("toy", build)


@hookimpl
def register_gradients(register):
    register("toy-grad", grads)
"""

MODULE_PREFIX = "gatest_plugin_"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(TRACE_ENV, raising=False)
    yield
    for name in [m for m in sys.modules if m.startswith(MODULE_PREFIX)]:
        del sys.modules[name]


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def plugin_error(spec_plugins: list[str], base_dir: Path | None = None) -> str:
    with pytest.raises(PluginError) as info:
        plugin_manager(spec_plugins, base_dir)
    return str(info.value)


# --- entry points ----------------------------------------------------------------------


def test_entry_points_register_the_shipped_plugins() -> None:
    registry = plugin_manager()
    dist_version = version("gradaudit")
    model = registry.entries["model"]["charrnn"]
    gradients = registry.entries["gradients"]["charrnn-bptt"]
    data = registry.entries["data"]["text"]
    assert model == Registration(
        "model",
        "charrnn",
        model.obj,
        "charrnn",
        "built in (gradaudit_charrnn)",
        dist_version,
    )
    assert gradients.plugin == "charrnn" and gradients.source == "built in (gradaudit_charrnn)"
    assert data.plugin == "text" and data.source == "built in (gradaudit_text)"
    assert model.version == gradients.version == data.version == dist_version

    from gradaudit_charrnn.bptt import charrnn_bptt
    from gradaudit_charrnn.model import build_charrnn

    assert registry.get("model", "charrnn") is build_charrnn
    assert registry.get("gradients", "charrnn-bptt") is charrnn_bptt
    assert registry.get("data", "text") is gradaudit_text.load_text
    assert ("charrnn", "built in (gradaudit_charrnn)", dist_version) in registry.plugins
    assert ("text", "built in (gradaudit_text)", dist_version) in registry.plugins
    from gradaudit_charrnn.gallery import GALLERY

    kinds = {r.kind for r in registry.all()}
    assert kinds == {"model", "gradients", "data", "op"}
    from gradaudit_ops import rmsnorm

    op = registry.entries["op"]["rmsnorm"]
    assert op.obj is rmsnorm and op.source == "built in (gradaudit_ops)"
    assert not set(GALLERY) & set(registry.entries["gradients"])  # only on request
    builtin = {(r.kind, r.name) for r in registry.all(builtin=True)} - set(
        (r.kind, r.name) for r in registry.all()
    )
    assert builtin == {
        ("check", "repeat"),
        ("check", "finite_difference"),
        ("check", "micro_batch"),
        ("check", "saved_tensors"),
        ("reporter", "console"),
        ("reporter", "junit"),
        ("reporter", "json"),
        ("reporter", "github"),
    }
    tp = [(r.kind, r.name) for r in registry.all() if r.plugin == "tp"]  # docs/distributed.md
    assert tp == [("model", "tp-mlp"), ("gradients", "tp-mlp-manual")]  # the gallery on request
    gallery = plugin_manager(["gradaudit_tp.gallery"])
    assert {r.name for r in gallery.all() if r.plugin == "gradaudit_tp.gallery"} == {
        f"tp-mlp-bug-{s}"
        for s in ("no-allreduce", "rank1-only", "world-size-twice", "bias-unsynced")
    }


def test_allow_list_loads_only_the_named_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "text")
    registry = plugin_manager()
    assert set(registry.entries["data"]) == {"text"}
    assert registry.entries["model"] == {}
    assert registry.entries["gradients"] == {}
    assert [p[0] for p in registry.plugins] == ["text"]
    with pytest.raises(PluginError, match="unknown model plugin 'charrnn'; available: none"):
        registry.get("model", "charrnn")


def test_empty_allow_list_loads_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "")
    registry = plugin_manager()
    assert registry.all() == []
    assert registry.plugins == []


def test_allow_list_is_comma_separated_and_trims(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, " charrnn , ,text ")
    registry = plugin_manager()
    assert {r.name for r in registry.all()} == {"charrnn", "charrnn-bptt", "text"}


def test_allow_list_matches_whole_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "char,tex")
    assert plugin_manager().all() == []


def test_unset_allow_list_loads_all() -> None:
    names = {r.name for r in plugin_manager().all()}
    assert {"charrnn", "charrnn-bptt", "text"} <= names


def test_allow_list_does_not_filter_spec_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "toy.py", GOOD_PLUGIN)
    monkeypatch.setenv(ALLOW_ENV, "")
    registry = plugin_manager(["toy.py"], tmp_path)
    assert {r.name for r in registry.all()} == {"toy", "toy-grad"}


# --- spec plugins: files and modules ---------------------------------------------------


def test_py_file_relative_to_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "plugs/toy.py", GOOD_PLUGIN)
    monkeypatch.chdir(Path(__file__).parent)  # not the base dir
    registry = plugin_manager(["plugs/toy.py"], tmp_path)
    model = registry.entries["model"]["toy"]
    path = (tmp_path / "plugs" / "toy.py").resolve()
    assert model.plugin == "plugs/toy.py"
    assert model.source == f"file {path}"
    assert model.version == "2.5"
    assert callable(registry.get("model", "toy"))
    assert registry.get("gradients", "toy-grad")(None, None, None) == {}
    assert ("plugs/toy.py", f"file {path}", "2.5") in registry.plugins
    # the entry-point plugins are still there
    assert "charrnn" in registry.entries["model"]


def test_py_file_without_base_dir_resolves_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "toy.py", GOOD_PLUGIN)
    monkeypatch.chdir(tmp_path)
    registry = plugin_manager(["toy.py"])
    assert registry.entries["model"]["toy"].source == f"file {(tmp_path / 'toy.py').resolve()}"


def test_absolute_py_file(tmp_path: Path) -> None:
    path = write(tmp_path, "abs_toy.py", GOOD_PLUGIN)
    registry = plugin_manager([str(path)], tmp_path / "elsewhere")
    assert "toy" in registry.entries["model"]


def test_dotted_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = MODULE_PREFIX + "pkg"
    write(tmp_path, f"{pkg}/__init__.py", "")
    write(tmp_path, f"{pkg}/toy.py", GOOD_PLUGIN.replace('"2.5"', '"3.0"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = f"{pkg}.toy"
    registry = plugin_manager([ref], tmp_path)
    model = registry.entries["model"]["toy"]
    assert (model.plugin, model.source, model.version) == (ref, f"module {ref}", "3.0")


def test_module_without_version_reports_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = MODULE_PREFIX + "noversion"
    write(tmp_path, f"{name}.py", GOOD_PLUGIN.replace('__version__ = "2.5"', ""))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = plugin_manager([name])
    assert registry.entries["model"]["toy"].version == "-"


def test_missing_file(tmp_path: Path) -> None:
    message = plugin_error(["nope.py"], tmp_path)
    assert message == f"plugin file not found: {(tmp_path / 'nope.py').resolve()}"


def test_missing_module() -> None:
    message = plugin_error([MODULE_PREFIX + "absent"])
    assert message == (
        f"plugin '{MODULE_PREFIX}absent' failed to import: "
        f"ModuleNotFoundError: No module named '{MODULE_PREFIX}absent'"
    )


IMPORT_ERROR = 'raise ImportError("needs fancylib\\nsee the docs\\nfor more")\n'


def test_file_raising_import_error(tmp_path: Path) -> None:
    write(tmp_path, "broken.py", IMPORT_ERROR)
    message = plugin_error(["broken.py"], tmp_path)
    assert message == "plugin 'broken.py' failed to import: ImportError: needs fancylib"


def test_module_raising_import_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = MODULE_PREFIX + "broken"
    write(tmp_path, f"{name}.py", IMPORT_ERROR)
    monkeypatch.syspath_prepend(str(tmp_path))
    message = plugin_error([name])
    assert message == f"plugin '{name}' failed to import: ImportError: needs fancylib"
    assert "\n" not in message


def test_file_with_a_syntax_error(tmp_path: Path) -> None:
    write(tmp_path, "syntax.py", "def oops(:\n")
    message = plugin_error(["syntax.py"], tmp_path)
    assert message.startswith("plugin 'syntax.py' failed to import: SyntaxError: ")
    assert "\n" not in message


# --- bad hook implementations ------------------------------------------------------------


def test_misspelled_hook_name(tmp_path: Path) -> None:
    write(
        tmp_path,
        "typo.py",
        """
        from gradaudit import hookimpl

        @hookimpl
        def register_model(register):
            register("x", len)
        """,
    )
    message = plugin_error(["typo.py"], tmp_path)
    assert "'register_model'" in message
    assert "typo.py" in message  # names the plugin
    assert "\n" not in message


MISNAMED_ARGUMENT = """
from gradaudit import hookimpl

@hookimpl
def register_models(reg):
    reg("x", len)
"""


def test_misnamed_hook_argument(tmp_path: Path) -> None:
    write(tmp_path, "argtypo.py", MISNAMED_ARGUMENT)
    message = plugin_error(["argtypo.py"], tmp_path)
    assert message.startswith("plugin 'argtypo.py' cannot be registered: ")
    assert "'reg'" in message


def test_misnamed_hook_argument_is_one_line(tmp_path: Path) -> None:
    write(tmp_path, "argtypo.py", MISNAMED_ARGUMENT)
    assert "\n" not in plugin_error(["argtypo.py"], tmp_path)


def test_same_name_registered_twice_names_both_plugins(tmp_path: Path) -> None:
    write(
        tmp_path,
        "dup.py",
        """
        from gradaudit import hookimpl

        @hookimpl
        def register_models(register):
            register("charrnn", len)
        """,
    )
    message = plugin_error(["dup.py"], tmp_path)
    assert message == "model plugin 'charrnn' is registered twice: by 'charrnn' and 'dup.py'"


def test_same_name_registered_twice_by_one_plugin(tmp_path: Path) -> None:
    write(
        tmp_path,
        "twice.py",
        """
        from gradaudit import hookimpl

        @hookimpl
        def register_data(register):
            register("mine", len)
            register("mine", len)
        """,
    )
    message = plugin_error(["twice.py"], tmp_path)
    assert message == "data plugin 'mine' is registered twice: by 'twice.py' and 'twice.py'"


def test_same_name_in_different_kinds_is_fine(tmp_path: Path) -> None:
    write(
        tmp_path,
        "kinds.py",
        """
        from gradaudit import hookimpl

        @hookimpl
        def register_gradients(register):
            register("charrnn", len)
        """,
    )
    registry = plugin_manager(["kinds.py"], tmp_path)
    assert registry.get("gradients", "charrnn") is len
    assert registry.entries["model"]["charrnn"].plugin == "charrnn"


def test_spec_plugin_that_is_already_an_entry_point_is_a_no_op() -> None:
    registry = plugin_manager(["gradaudit_charrnn"])  # loading the same module twice
    assert [p[0] for p in registry.plugins].count("gradaudit_charrnn") == 0
    assert registry.get("model", "charrnn") is plugin_manager().get("model", "charrnn")


def test_register_hook_that_raises(tmp_path: Path) -> None:
    write(
        tmp_path,
        "boom.py",
        """
        from gradaudit import hookimpl

        @hookimpl
        def register_data(register):
            raise RuntimeError("boom\\nsecond line")
        """,
    )
    message = plugin_error(["boom.py"], tmp_path)
    assert message == "plugin 'boom.py' failed to register: RuntimeError: boom"


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ('register("nc", 3)', "model plugin 'nc' from 'bad.py' is not callable"),
        ('register("", len)', "plugin 'bad.py' registered a model with no name"),
        ("register(None, len)", "plugin 'bad.py' registered a model with no name"),
    ],
)
def test_bad_registrations(tmp_path: Path, call: str, expected: str) -> None:
    write(
        tmp_path,
        "bad.py",
        f"""
        from gradaudit import hookimpl

        @hookimpl
        def register_models(register):
            {call}
        """,
    )
    assert plugin_error(["bad.py"], tmp_path) == expected


# --- Registry ------------------------------------------------------------------------------


def test_registry_get_suggests_and_lists() -> None:
    registry = plugin_manager()
    with pytest.raises(PluginError) as info:
        registry.get("model", "charnn")
    message = str(info.value)
    assert message.startswith("unknown model plugin 'charnn' (did you mean 'charrnn'?)")
    assert message.endswith("; available: charrnn, mlp-batchnorm, tp-mlp")


def test_registry_get_lists_sorted_names_without_a_suggestion() -> None:
    registry = Registry()
    for name in ("zeta", "alpha", "mid"):
        registry.entries["data"][name] = Registration("data", name, len, "p", "s", "1")
    assert registry.get("data", "alpha") is len
    with pytest.raises(PluginError) as info:
        registry.get("data", "qqqq")
    assert str(info.value) == "unknown data plugin 'qqqq'; available: alpha, mid, zeta"


def test_empty_registry() -> None:
    registry = Registry()
    assert registry.all() == []
    with pytest.raises(PluginError, match=r"^unknown gradients plugin 'x'; available: none$"):
        registry.get("gradients", "x")


# --- tracing ---------------------------------------------------------------------------------


def test_no_trace_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    plugin_manager()
    assert "register_models" not in capsys.readouterr().err


def test_trace_env_writes_hook_calls_to_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TRACE_ENV, "1")
    plugin_manager()
    err = capsys.readouterr().err
    for hook in ("register_models", "register_gradients", "register_data"):
        assert hook in err
