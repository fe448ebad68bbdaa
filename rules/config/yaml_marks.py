"""Safe YAML loading that remembers where every key and value sits, and rejects duplicate keys.

Hostile or broken input fails fast with one line: the file size, nesting depth, number of
aliases and the size of the expanded document are bounded before anything is built, so an
alias bomb or 5,000 nested brackets cost milliseconds, not gigabytes or a RecursionError.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from evsys_build.errors import ConfigError
from evsys_build.watch import watch

Marks = dict[tuple, tuple[int, int]]  # path -> (line, column), 1-based

MAX_BYTES = 1 << 20  # a config is a page of YAML, not data
MAX_DEPTH = 64  # nested mappings/sequences
MAX_ALIASES = 100  # `*name` references
MAX_NODES = 100_000  # values after aliases are expanded


class _MarkedLoader(yaml.SafeLoader):
    pass


# libyaml's parser (when PyYAML was built with it) gives the same nodes, tags and marks 15x
# faster; its error messages are terser, so a document it rejects is parsed again by the
# pure-Python loader for the message (tests/test_yaml_marks.py compares the two on the
# walkthrough, varied documents and a set of broken ones)
_FastLoader = getattr(yaml, "CSafeLoader", _MarkedLoader)


def load_yaml_with_marks(path: Path) -> tuple[object, Marks, str]:
    """Parse `path`; returns (data, marks, text). Duplicate keys, syntax errors and documents
    past the limits above are ConfigErrors."""
    watch(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; a config is limited to {MAX_BYTES} bytes (keep data in data files)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; give the config file (e.g. {path}/config.yaml)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); save the config as UTF-8") from None
    try:
        root = _compose(text, path, _FastLoader)
    except yaml.YAMLError as fast_error:
        try:
            _compose(text, path, _MarkedLoader)
            error = fast_error
        except yaml.YAMLError as exc:
            error = exc
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(error, 'problem', error)}") from None
    if root is None:
        return {}, {}, text
    marks: Marks = {}
    data = _build(root, (), marks, path, [0], yaml.constructor.SafeConstructor())
    return data, marks, text


def _compose(text: str, path: Path, loader: type) -> "yaml.Node | None":
    """The document's node tree, once its shape is within bounds (ConfigError if not)."""
    _check_shape(text, path, loader)
    return yaml.compose(text, Loader=loader)


def _check_shape(text: str, path: Path, loader: type) -> None:
    """Bound depth and aliases from the event stream (iterative: no recursion, nothing built)."""
    depth = aliases = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{_at(path, event)}: nested more than {MAX_DEPTH} levels deep; flatten the config")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise ConfigError(f"{_at(path, event)}: more than {MAX_ALIASES} YAML aliases (*name); write the values out")


def _at(path: Path, event) -> str:
    return f"{path}:{event.start_mark.line + 1}:{event.start_mark.column + 1}"


def _build(node: yaml.Node, path: tuple, marks: Marks, file: Path, count: list[int], scalars: yaml.constructor.SafeConstructor):
    count[0] += 1
    if count[0] > MAX_NODES:
        raise ConfigError(f"{file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: the config expands to more than {MAX_NODES} values (an alias bomb?); write it out plainly")
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(f"{file}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}: a key must be a plain name, not a {'list' if isinstance(key_node, yaml.SequenceNode) else 'mapping'}")
            key = scalars.construct_object(key_node)
            if key in out:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                dotted = ".".join(str(p) for p in path + (key,))
                raise ConfigError(f"{file}:{line}:{col}: {dotted}: duplicate key (remove one of the two)")
            marks[path + (key, "<key>")] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, path + (key,), marks, file, count, scalars)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), marks, file, count, scalars) for i, item in enumerate(node.value)]
    return scalars.construct_object(node)  # YAML's safe type resolution
