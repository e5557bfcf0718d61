"""Reading YAML for specs: PyYAML's safe loader only, the line of every key, and refusal
of duplicate keys, alias bombs and cycles before anything is expanded."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel

from gradaudit.errors import SpecError


class Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-6` as a float (YAML 1.2 style) instead of a string.

    It also puts a line on values PyYAML cannot build (`2024-02-30`, `!!int eight`), which
    PyYAML reports as plain ValueErrors with no position.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({one_line(str(exc))})", node.start_mark
            ) from None


Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

Loc = tuple[str | int, ...]


def key_lines(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], where: str, seen: set[int] | None = None
) -> None:
    """Record the line of every key and item; reject duplicate keys (YAML keeps the last)."""
    lines.setdefault(loc, node.start_mark.line + 1)
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias: walked once, so alias bombs and cycles stay cheap
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in keys:
                line = key_node.start_mark.line + 1
                path = dotted(loc + (key,))
                raise SpecError(f"{where}:{line}: {path}: duplicate key")
            keys.add(key)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            key_lines(value_node, loc + (key,), lines, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key_lines(item, loc + (i,), lines, where, seen)


MAX_EXPANDED_NODES = 10_000


def check_expansion(node: yaml.Node, where: str) -> None:
    """Refuse alias bombs and cycles before anything expands them (plugin options included)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise SpecError(f"{where}:{n.start_mark.line + 1}: a recursive alias")
        active.add(key)
        children: list[yaml.Node] = []
        if isinstance(n, yaml.MappingNode):
            children = [part for pair in n.value for part in pair]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_EXPANDED_NODES:
                raise SpecError(
                    f"{where}:{n.start_mark.line + 1}: aliases expand to more than "
                    f"{MAX_EXPANDED_NODES} values"
                )
        active.discard(key)
        sizes[key] = total
        return total

    size(node)


def deep_line(text: str, limit: int = 100) -> int:
    """The line where bracket nesting first passes `limit` (for the nested-too-deeply error)."""
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        for char in line:
            depth += char in "[{"
            depth -= char in "]}"
            if depth > limit:
                return number
    return 1


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def dotted(loc: Loc) -> str:
    """A field path for messages; odd keys (line breaks, control characters) are escaped."""
    return ".".join(str(p).encode("unicode_escape").decode("ascii") for p in loc)


def line_for(loc: Loc, lines: dict[Loc, int]) -> int:
    while loc not in lines and loc:
        loc = loc[:-1]
    return lines.get(loc, 1)


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `Batches`, `list[X]` or `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


MAX_SPEC_BYTES = 1 << 20  # a spec is a page of YAML; anything bigger is a mistake


def read_spec_file(path: Path) -> tuple[bytes, str]:
    """The bytes and UTF-8 text of a spec file; anything but a readable regular file of at
    most MAX_SPEC_BYTES is a one-line SpecError (a FIFO is refused: reading it would block)."""
    if path.is_dir():
        raise SpecError(f"{path}: cannot read spec: Is a directory")
    if path.exists() and not path.is_file():
        raise SpecError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}:1: the spec is {size} bytes; the limit is {MAX_SPEC_BYTES}")
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec: {exc.strerror or exc}") from None
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}:1: the spec is not UTF-8 text ({exc.reason})") from None


def read_mapping(text: str, where: str) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Safe-load one YAML document that must be a mapping, with the line of every key;
    every problem is a SpecError `where:line: message`."""
    loader: Loader | None = None
    try:
        loader = Loader(text)
        node = loader.get_single_node()
        if node is None:
            raise SpecError(f"{where}:1: the spec is empty")
        lines: dict[Loc, int] = {}
        key_lines(node, (), lines, where)
        check_expansion(node, where)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "not valid YAML"
        raise SpecError(f"{where}:{line}: not valid YAML: {one_line(problem)}") from None
    except SpecError:
        raise
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise SpecError(f"{where}:{line}: not valid YAML: {one_line(str(exc.reason))}") from None
    except RecursionError:
        line = deep_line(text)
        raise SpecError(f"{where}:{line}: not valid YAML: nested too deeply") from None
    except Exception as exc:  # PyYAML raises plain ValueError etc. for unbuildable scalars
        raise SpecError(f"{where}:1: not valid YAML: {one_line(str(exc))}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:
        raise SpecError(f"{where}:1: the spec is empty")
    if not isinstance(data, dict):
        raise SpecError(f"{where}:1: the spec must be a mapping of keys, not {type(data).__name__}")
    return data, lines
