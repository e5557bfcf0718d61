"""Spec parsing and validation (`parse_spec`, `load_spec`) and `file:line: field: msg` errors."""

from __future__ import annotations

import hashlib
import signal
import sys
from pathlib import Path

import pytest

from gradaudit.errors import SpecError
from gradaudit.spec import LoadedSpec, Spec, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
WHERE = "s.yaml"
# Lines 1-3; whatever a test appends starts on line 4.
BASE = "name: demo\nmodel: {plugin: m}\ngradients: {plugin: g}\n"


def errors(text: str) -> list[str]:
    """The SpecError's lines for `text`."""
    with pytest.raises(SpecError) as info:
        parse_spec(text, WHERE)
    return str(info.value).splitlines()


# --- valid specs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["charrnn", "charrnn-shakespeare"])
def test_shipped_specs_validate(name: str) -> None:
    loaded = load_spec(REPO / "specs" / f"{name}.yaml")
    spec = loaded.spec
    assert spec.name == name
    assert spec.model.plugin == "charrnn"
    assert spec.gradients.plugin == "charrnn-bptt"
    assert spec.data.plugin == "text"
    assert spec.batches.split == "train"
    assert spec.batches.seed == 64
    assert spec.devices == ["cpu", "cuda"]
    assert spec.tolerance.mode == "auto"  # no hand-tuned numbers in the shipped specs
    assert spec.tolerance.overrides == []
    assert spec.tolerance.rtol is None and spec.tolerance.atol is None


def test_minimal_spec_takes_the_defaults() -> None:
    spec = parse_spec(BASE, WHERE)
    assert spec.name == "demo"
    assert spec.data.plugin == "text"
    assert spec.data.options == {}
    assert (spec.batches.split, spec.batches.count, spec.batches.size) == ("train", 8, 32)
    assert spec.batches.seed == 0
    assert spec.devices == ["cpu"]
    assert spec.dtypes == ["float32"]
    assert spec.tensors == ["*"]
    assert spec.tolerance.overrides == []


def test_val_split_may_leave_count_and_size_unset() -> None:
    spec = parse_spec(BASE + "batches: {split: val, count: null, size: null}\n", WHERE)
    assert spec.batches.count is None and spec.batches.size is None


@pytest.mark.parametrize(
    ("literal", "value"),
    [("1e-6", 1e-6), ("1E-6", 1e-6), ("1.5e3", 1500.0), ("2.5", 2.5), ("1e+2", 100.0)],
)
@pytest.mark.parametrize("field", ["rtol", "atol"])
def test_exponent_literals_are_floats_in_tolerances(field: str, literal: str, value: float) -> None:
    spec = parse_spec(BASE + f"tolerance:\n  {field}: {literal}\n", WHERE)
    got = getattr(spec.tolerance, field)
    assert isinstance(got, float)
    assert got == value


def test_an_int_is_accepted_for_a_float_field() -> None:
    spec = parse_spec(BASE + "tolerance: {rtol: 0, atol: 2}\n", WHERE)
    assert spec.tolerance.rtol == 0.0 and isinstance(spec.tolerance.rtol, float)
    assert spec.tolerance.atol == 2.0 and isinstance(spec.tolerance.atol, float)


def test_exponent_literals_are_floats_in_plugin_options() -> None:
    text = (
        "name: demo\n"
        "model: {plugin: m, options: {a: 1e-6, b: 1E-6, c: 1.5e3, d: -2e-8,"
        " e: 1.2.3, f: 1e, g: 10, h: '1e-6'}}\n"
        "gradients: {plugin: g}\n"
    )
    options = parse_spec(text, WHERE).model.options
    assert options == {
        "a": 1e-6,
        "b": 1e-6,
        "c": 1500.0,
        "d": -2e-8,
        "e": "1.2.3",
        "f": "1e",
        "g": 10,
        "h": "1e-6",
    }
    assert [type(options[k]) for k in "abcdefgh"] == [float] * 4 + [str, str, int, str]


def test_negative_exponent_rtol_is_a_range_error_not_a_type_error() -> None:
    # -2e-8 must reach validation as a float (YAML 1.1 would make it a string).
    assert errors(BASE + "tolerance:\n  rtol: -2e-8\n") == [
        f"{WHERE}:5: tolerance.rtol: Input should be greater than or equal to 0"
    ]


# --- error messages: file:line: field: message -----------------------------------------


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    assert errors(BASE + "dtype: [float32]\n") == [
        f"{WHERE}:4: dtype: unknown key (did you mean 'dtypes'?)"
    ]


def test_unknown_key_with_nothing_close_has_no_suggestion() -> None:
    assert errors(BASE + "zzqqxx: 1\n") == [f"{WHERE}:4: zzqqxx: unknown key"]


def test_unknown_nested_key_has_its_line_and_a_suggestion() -> None:
    text = BASE + "batches:\n  count: 3\n  sise: 4\n"
    assert errors(text) == [f"{WHERE}:6: batches.sise: unknown key (did you mean 'size'?)"]


def test_unknown_key_in_tolerance_suggests() -> None:
    text = BASE + "description: x\ntolerance:\n  overides: []\n"
    assert errors(text) == [
        f"{WHERE}:6: tolerance.overides: unknown key (did you mean 'overrides'?)"
    ]


def test_unknown_key_inside_an_override_suggests() -> None:
    text = BASE + "tolerance:\n  overrides:\n    - tensors: [a]\n      rtoll: 1\n"
    assert errors(text) == [
        f"{WHERE}:7: tolerance.overrides.0.rtoll: unknown key (did you mean 'rtol'?)"
    ]


@pytest.mark.parametrize("value", ['"8"', "'8'", "true", "8.0"])
def test_count_is_strictly_an_int(value: str) -> None:
    assert errors(BASE + f"batches:\n  count: {value}\n") == [
        f"{WHERE}:5: batches.count: Input should be a valid integer"
    ]


def test_a_number_is_not_a_string() -> None:
    assert errors(BASE + "description: 3\n") == [
        f"{WHERE}:4: description: Input should be a valid string"
    ]


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("batches:\n  count: 0\n", "5: batches.count: Input should be greater than 0"),
        ("batches: {size: -3}\n", "4: batches.size: Input should be greater than 0"),
        (
            "tolerance:\n  rtol: -1e-3\n",
            "5: tolerance.rtol: Input should be greater than or equal to 0",
        ),
        (
            "dtypes: [float8]\n",
            "4: dtypes.0: Input should be 'float64', 'float32', 'bfloat16' or 'float16'",
        ),
        (
            "devices: [cpu, gpu]\n",
            "4: devices.1: not a device: expected cpu, cuda, cuda:N, mps, xpu or xpu:N",
        ),
        (
            "tolerance: {mode: rtol}\n",
            "4: tolerance.mode: Input should be 'auto', 'exact', 'allclose', 'baseline', 'ulps' "
            "or 'finite'",
        ),
        ("batches: {split: test}\n", "4: batches.split: Input should be 'train' or 'val'"),
    ],
)
def test_bad_values(tail: str, expected: str) -> None:
    assert errors(BASE + tail) == [f"{WHERE}:{expected}"]


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps", "xpu", "xpu:1"])
def test_good_devices(device: str) -> None:
    assert parse_spec(BASE + f"devices: ['{device}']\n", WHERE).devices == [device]


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "mps:0", " cpu"])
def test_bad_devices(device: str) -> None:
    assert errors(BASE + f"devices: ['{device}']\n") == [
        f"{WHERE}:4: devices.0: not a device: expected cpu, cuda, cuda:N, mps, xpu or xpu:N"
    ]


def test_bad_name() -> None:
    text = "name: 'two words'\nmodel: {plugin: m}\ngradients: {plugin: g}\n"
    assert errors(text) == [f"{WHERE}:1: name: use only letters, digits, '.', '_' and '-'"]


def test_block_list_item_errors_point_at_the_item() -> None:
    text = BASE + "dtypes:\n  - float32\n  - float64\n  - float8\n"
    assert errors(text) == [
        f"{WHERE}:7: dtypes.2: Input should be 'float64', 'float32', 'bfloat16' or 'float16'"
    ]


def test_multiline_flow_list_item_errors_point_at_the_item() -> None:
    text = BASE + "dtypes: [\n  float32,\n  float8,\n]\n"
    assert errors(text) == [
        f"{WHERE}:6: dtypes.1: Input should be 'float64', 'float32', 'bfloat16' or 'float16'"
    ]


def test_errors_deep_in_overrides_point_at_the_item() -> None:
    text = (
        BASE
        + "tolerance:\n"  # 4
        + "  overrides:\n"  # 5
        + "    - tensors: ['w*']\n"  # 6
        + "      dtypes: [float32]\n"  # 7
        + "    - tensors: ['b*']\n"  # 8
        + "      devices:\n"  # 9
        + "        - cpu\n"  # 10
        + "        - gpu\n"  # 11
        + "    - tensors: []\n"  # 12
    )
    lines = errors(text)
    assert len(lines) == 2
    assert lines[0].startswith(f"{WHERE}:11: tolerance.overrides.1.devices.1: ")
    assert lines[1] == (
        f"{WHERE}:12: tolerance.overrides.2.tensors: "
        "List should have at least 1 item after validation, not 0"
    )


def test_bad_device_in_an_override_gets_the_friendly_message() -> None:
    text = BASE + "tolerance:\n  overrides:\n    - tensors: ['*']\n      devices: [gpu]\n"
    assert errors(text) == [
        f"{WHERE}:7: tolerance.overrides.0.devices.0: "
        "not a device: expected cpu, cuda, cuda:N, mps, xpu or xpu:N"
    ]


@pytest.mark.parametrize("missing", ["model", "gradients", "name"])
def test_missing_required_key(missing: str) -> None:
    parts = {
        "name": "name: demo\n",
        "model": "model: {plugin: m}\n",
        "gradients": "gradients: {plugin: g}\n",
    }
    text = "".join(v for k, v in parts.items() if k != missing)
    assert errors(text) == [f"{WHERE}:1: {missing}: Field required"]


def test_missing_nested_required_key_points_at_its_parent() -> None:
    text = BASE + "data:\n  options: {}\n"
    assert errors(text) == [f"{WHERE}:4: data.plugin: Field required"]


def test_duplicate_top_level_key_reports_the_second() -> None:
    assert errors(BASE + "description: a\nname: again\n") == [f"{WHERE}:5: name: duplicate key"]


def test_duplicate_nested_key_reports_the_second() -> None:
    text = BASE + "batches:\n  count: 3\n  size: 4\n  count: 5\n"
    assert errors(text) == [f"{WHERE}:7: batches.count: duplicate key"]


def test_duplicate_key_in_flow_mapping() -> None:
    assert errors(BASE + "batches: {count: 3, count: 4}\n") == [
        f"{WHERE}:4: batches.count: duplicate key"
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "  \n# c\n"])
def test_empty_spec(text: str) -> None:
    assert errors(text) == [f"{WHERE}:1: the spec is empty"]


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("hello\n", "str"), ("3\n", "int")]
)
def test_spec_must_be_a_mapping(text: str, kind: str) -> None:
    assert errors(text) == [f"{WHERE}:1: the spec must be a mapping of keys, not {kind}"]


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("description: ok\ntensors: a: b\nfoo: 1\n", "5: not valid YAML: mapping values"),
        ("description: ok\n\ttensors: [a]\n", "5: not valid YAML: found character '\\t'"),
        ("description: ok\nx: 1\nbatches: {count: 3\nfoo: [\n", "7: not valid YAML: expected"),
    ],
)
def test_invalid_yaml_reports_the_line(tail: str, expected: str) -> None:
    lines = errors(BASE + tail)
    assert len(lines) == 1
    assert lines[0].startswith(f"{WHERE}:{expected}")


def test_split_train_needs_count() -> None:
    assert errors(BASE + "batches: {split: train, count: null}\n") == [
        f"{WHERE}:4: batches: split 'train' needs both count and size"
    ]


def test_split_train_needs_size_nested_line() -> None:
    text = BASE + "description: x\nbatches:\n  size: null\n"
    assert errors(text) == [f"{WHERE}:5: batches: split 'train' needs both count and size"]


@pytest.mark.parametrize("field", ["devices", "dtypes"])
def test_repeated_entry_is_rejected(field: str) -> None:
    value = "cpu" if field == "devices" else "float32"
    lines = errors(BASE + f"{field}:\n  - {value}\n  - {value}\n")
    assert len(lines) == 1
    assert lines[0] == f"{WHERE}:4: {field}: listed more than once: {value}"


def test_repeated_device_entry_names_the_field_and_its_line() -> None:
    lines = errors(BASE + "description: x\ndevices:\n  - cpu\n  - cpu\n")
    assert len(lines) == 1
    assert lines[0].split(": ")[1] == "devices"
    assert lines[0].split(":")[1] in {"5", "7"}  # the key or the repeated item


def test_multiple_errors_give_one_line_each_in_order() -> None:
    text = (
        BASE
        + "batches:\n"  # 4
        + "  count: 0\n"  # 5
        + "  size: -1\n"  # 6
        + "dtypes: [float8]\n"  # 7
        + "colour: red\n"  # 8
    )
    assert errors(text) == [
        f"{WHERE}:5: batches.count: Input should be greater than 0",
        f"{WHERE}:6: batches.size: Input should be greater than 0",
        f"{WHERE}:7: dtypes.0: Input should be 'float64', 'float32', 'bfloat16' or 'float16'",
        f"{WHERE}:8: colour: unknown key",
    ]


# --- safety ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system",
        "!!python/object/new:os.system",
        "!!python/object/apply:subprocess.check_call",
    ],
)
def test_python_tags_are_rejected_not_executed(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "pwned"
    args = f'["touch {marker}"]' if "os.system" in tag else f'[["touch", "{marker}"]]'
    lines = errors(BASE + f"description: {tag} {args}\n")
    assert not marker.exists()
    assert len(lines) == 1
    assert lines[0].startswith(f"{WHERE}:4: not valid YAML: could not determine a constructor")
    assert "python/object" in lines[0]


def test_python_name_tag_is_rejected() -> None:
    lines = errors(BASE + "description: !!python/name:os.system ''\n")
    assert lines[0].startswith(f"{WHERE}:4: not valid YAML: ")


def test_recursive_alias_is_a_spec_error() -> None:
    with pytest.raises(SpecError):
        parse_spec(BASE + "tensors: &a [*a]\n", WHERE)


class _TookTooLong(Exception):
    pass


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="needs SIGALRM")
def test_nested_aliases_do_not_blow_up() -> None:
    text = BASE + "x0: &x0 [a, a, a, a, a, a, a, a, a, a]\n"
    for i in range(1, 7):
        text += f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]\n"

    def alarm(signum: int, frame: object) -> None:
        raise _TookTooLong

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        lines = errors(text)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # refused before anything expands them: 10**6 values through aliases
    assert lines == [f"{WHERE}:7: aliases expand to more than 10000 values"]


# --- load_spec ---------------------------------------------------------------------------


def test_load_spec_records_path_base_dir_and_sha256(tmp_path: Path) -> None:
    folder = tmp_path / "audits"
    folder.mkdir()
    path = folder / "mine.yaml"
    raw = (BASE + "# trailing comment — non-ASCII ✓\n").encode()
    path.write_bytes(raw)
    loaded = load_spec(path)
    assert isinstance(loaded, LoadedSpec)
    assert isinstance(loaded.spec, Spec)
    assert loaded.spec.name == "demo"
    assert loaded.path == path
    assert loaded.base_dir == folder.resolve()
    assert loaded.sha256 == hashlib.sha256(raw).hexdigest()


def test_load_spec_with_a_relative_path_has_an_absolute_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.yaml").write_text(BASE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    loaded = load_spec("sub/a.yaml")
    assert loaded.base_dir.is_absolute()
    assert loaded.base_dir == (tmp_path / "sub").resolve()


def test_sha256_changes_with_the_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(BASE, encoding="utf-8")
    b.write_text(BASE + "\n", encoding="utf-8")
    assert load_spec(a).sha256 != load_spec(b).sha256


def test_load_spec_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + "batches:\n  count: 0\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}:5: batches.count: Input should be greater than 0"


def test_load_spec_rejects_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\nmodel: {plugin: m}\ngradients: {plugin: g}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}:1: the spec is not UTF-8 text (invalid continuation byte)"


def test_load_spec_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: cannot read spec: No such file or directory"


@pytest.mark.skipif(sys.platform == "win32", reason="reading a directory differs on Windows")
def test_load_spec_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read spec: Is a directory"
