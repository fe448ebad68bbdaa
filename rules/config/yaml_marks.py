"""Safe YAML loading that remembers where every key and value sits, and rejects duplicate keys."""

from __future__ import annotations

from pathlib import Path

import yaml

from evsys_build.errors import ConfigError

Marks = dict[tuple, tuple[int, int]]  # path -> (line, column), 1-based


class _MarkedLoader(yaml.SafeLoader):
    pass


def load_yaml_with_marks(path: Path) -> tuple[object, Marks]:
    """Parse `path`; returns (data, marks). Duplicate keys and syntax errors are ConfigErrors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; give the config file (e.g. {path}/config.yaml)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); save the config as UTF-8") from None
    try:
        root = yaml.compose(text, Loader=_MarkedLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        return {}, {}
    marks: Marks = {}
    data = _build(root, (), marks, path)
    return data, marks


def _build(node: yaml.Node, path: tuple, marks: Marks, file: Path):
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in out:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                dotted = ".".join(str(p) for p in path + (key,))
                raise ConfigError(f"{file}:{line}:{col}: {dotted}: duplicate key (remove one of the two)")
            marks[path + (key, "<key>")] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, path + (key,), marks, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), marks, file) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node):
    """The Python value of a scalar node, with YAML's safe type resolution."""
    return _MarkedLoader("").construct_object(node)
