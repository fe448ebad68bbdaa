"""docs/config.md, generated from the pydantic models of the config and each registered kind's
Config class (or a verifier's signature):

    python -m evsys_rules.config.docs > docs/config.md

A field's meaning is its `Field(description=...)`, else the comment written after it in the
source (`max_steps: int = Field(100, ge=1)  # optimizer steps`); a block's or kind's meaning is
the first paragraph of its docstring. tests/test_docs_generated.py fails when the file is stale.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from . import schema

COMMAND = "python -m evsys_rules.config.docs > docs/config.md"

BLOCKS = [  # (heading, the key path in a config, model)
    ("experiment", "experiment", schema.ExperimentInfo),
    ("data", "data", schema.DataConfig),
    ("transforms[] and callbacks[]", "transforms: [{kind, params}]", schema.KindSpec),
    ("model", "model", schema.ModelConfig),
    ("backend", "backend", schema.BackendConfig),
    ("algorithm", "algorithm", schema.AlgorithmConfig),
    ("metadata", "metadata", schema.MetadataConfig),
    ("metadata.benchmark[]", "metadata: {benchmark: [...]}", schema.BenchmarkConfig),
    ("arms[]", "arms: [{name, set}]", schema.ArmConfig),
]

KINDS = [  # (registry attribute, the config key that picks it, where its params go)
    ("sources", "data.source_kind", "data.params (and data.path)"),
    ("transforms", "transforms[].kind", "transforms[].params"),
    ("backends", "backend.kind", "backend.params"),
    ("algorithms", "algorithm.kind", "algorithm.params"),
    ("callbacks", "callbacks[].kind", "callbacks[].params"),
    ("verifiers", 'a task\'s verifier {"kind": "in_process", "fn_name": ...}', "the verifier object's other keys"),
]


def render() -> str:
    from ..plugins import kinds  # the built-ins registered (no entry-point plugins: the docs are ours)

    out = [
        "# Config reference",
        "",
        f"Generated from the pydantic models and each built-in kind's Config; do not edit by hand. Regenerate with `{COMMAND}`.",
        "Unknown keys are errors everywhere. Relative paths resolve against the directory you run from (the Python API: `base_dir=` when given).",
        "See `docs/plugins.md` for writing kinds of your own and `docs/sweeps.md` for `arms:` and `sweep:`.",
        "",
        "## Top level",
        "",
        *_table(schema.ExperimentConfig),
    ]
    for heading, where, model in BLOCKS:
        out += ["", f"## {heading}", "", f"`{where}`. {_doc(model)}".rstrip(), "", *_table(model)]
    for attr, picked_by, params_at in KINDS:
        registry = getattr(kinds, attr)
        out += ["", f"## {registry.kind} kinds", "", f"Picked by `{picked_by}`; params in `{params_at}`."]
        for name in registry.names():
            out += ["", *_kind_section(name, registry.get(name))]
    return "\n".join(out).rstrip() + "\n"


def _kind_section(name: str, impl: Any) -> list[str]:
    lines = [f"### `{name}`", ""]
    doc = _doc(impl)
    if doc:
        lines += [doc, ""]
    config = getattr(impl, "Config", None)
    if isinstance(config, type) and issubclass(config, BaseModel):
        lines += _table(config) if config.model_fields else ["No params."]
    elif isinstance(impl, types.FunctionType):
        lines += _signature_table(impl)
    else:
        lines.append("No params (the class takes none).")
    return lines


def _table(model: type[BaseModel]) -> list[str]:
    comments = _field_comments(model)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        meaning = field.description or comments.get(name, "")
        rows.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {_cell(meaning)} |")
    return rows


def _signature_table(fn) -> list[str]:
    params = list(inspect.signature(fn).parameters.values())[1:]  # the first is the prediction
    if not params:
        return ["No args."]
    rows = ["| arg | type | default |", "|---|---|---|"]
    for p in params:
        kind = _type(p.annotation) if p.annotation is not p.empty else "any"
        default = "required" if p.default is p.empty else f"`{json.dumps(p.default)}`"
        rows.append(f"| `{p.name}` | {kind} | {default} |")
    return rows


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(its defaults)"
    return f"`{json.dumps(value, default=str)}`"


def _type(annotation) -> str:
    """`int`, `float \\| None`, `"right" \\| "left"`, `list[str]`, ... for a table cell."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin in (list, dict, tuple, set):
        return f"{origin.__name__}[{', '.join(_type(a).replace(chr(96), '') for a in args)}]"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _doc(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    if not doc or (isinstance(obj, type) and obj.__doc__ is None):
        return ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").strip()


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name → the comment after its line in the class source (the classes keep their docs
    there); a field a subclass inherits keeps its base class's comment."""
    comments: dict[str, str] = {}
    for cls in reversed([c for c in model.__mro__ if isinstance(c, type) and issubclass(c, BaseModel) and c is not BaseModel]):
        comments.update(_own_field_comments(cls))
    return comments


def _own_field_comments(model: type[BaseModel]) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    comments = {}
    by_line = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = node.end_lineno
            if line in by_line:
                comments[node.target.id] = by_line[line]
    return comments


if __name__ == "__main__":  # python -m evsys_rules.config.docs > docs/config.md
    sys.stdout.write(render())
