"""Observed renders: contents that record every question a chat template asks of them, and the
jinja environment that notices when a template reads a content some other way (`chat_render`
keeps a recipe only from a render that read nothing unobserved)."""

from __future__ import annotations

from collections.abc import ItemsView, KeysView, ValuesView

_SAME = object()  # a guard result meaning "returned the content itself"


class _Recorder:
    """What one observed render asked of its contents, and whether it read one unobservably."""

    __slots__ = ("guards", "opaque")

    def __init__(self):
        self.guards: list[tuple] = []
        self.opaque = False


class _Traced(str):
    """Text in an observed render that remembers where it came from: `+` keeps it (a `_Rope`),
    and reading it character by character or as `repr` (`{{ [content] }}`, `'%r' % (x,)`)
    leaves text no slot survives in, so the render makes no recipe."""

    _rec: _Recorder

    def __str__(self):  # `{{ content }}` outputs the text itself, slots and all
        return self

    def __add__(self, other):
        return _Rope.concat(self, other, self._rec) if isinstance(other, str) else NotImplemented

    def __radd__(self, other):
        return _Rope.concat(other, self, self._rec) if isinstance(other, str) else NotImplemented

    def __iter__(self):
        self._rec.opaque = True
        return iter(str.__str__(self))

    def __repr__(self):
        self._rec.opaque = True
        return str.__repr__(str.__str__(self))


class _Observed(_Traced):
    """A message content inside an observed render: every method call on it is a recorded guard."""

    def __new__(cls, value: str, slot: int, rec: _Recorder):
        self = str.__new__(cls, value)
        self._slot = slot
        self._rec = rec
        return self


class _Rope(_Traced):
    """Text built with `+` from template literals and contents; remembers which parts were contents."""

    def __new__(cls, parts: tuple, rec: _Recorder):
        self = str.__new__(cls, "".join(str.__str__(p) for p in parts))
        self._parts = parts
        self._rec = rec
        return self

    @staticmethod
    def concat(left: str, right: str, rec: _Recorder) -> "_Rope":
        return _Rope(_rope_parts(left) + _rope_parts(right), rec)


def _rope_parts(value: str) -> tuple:
    return value._parts if isinstance(value, _Rope) else (value,)


def _parts(pieces: list, rec: _Recorder) -> list:
    """The rendered pieces as template text (merged) and content slots (ints)."""
    parts: list = []
    for piece in pieces:
        for part in _rope_parts(piece):
            if isinstance(part, _Observed):
                if part._rec is not rec:
                    rec.opaque = True
                parts.append(part._slot)
            elif parts and parts[-1].__class__ is str:
                parts[-1] += str.__str__(part)
            else:
                parts.append(str.__str__(part))
    return parts


def _str_ops() -> dict:
    """The str operations a template can apply to a content, by name, as plain functions."""
    skip = {
        "__class__", "__delattr__", "__dir__", "__doc__", "__getattribute__", "__getnewargs__", "__getstate__",
        "__init__", "__init_subclass__", "__new__", "__reduce__", "__reduce_ex__", "__setattr__", "__sizeof__",
        "__subclasshook__", "__str__", "__add__", "__iter__", "__repr__", "maketrans",
    }
    ops = {name: getattr(str, name) for name in dir(str) if name not in skip and callable(getattr(str, name))}
    ops["__bool__"] = lambda s: str.__len__(s) != 0  # str.__len__: never the observed __len__
    return ops


_STR_OPS = _str_ops()


def _observer(name: str, fn):
    """`_Observed.<name>`: run the str operation and record (slot, name, args, result) as a guard."""

    def method(self, *args, **kwargs):
        rec = self._rec
        if _holds_observed(args) or _holds_observed(kwargs.values()):
            rec.opaque = True
            return fn(str.__str__(self), *args, **kwargs)
        try:
            result = fn(self, *args, **kwargs)
        except Exception:  # jinja turns `content[40]` raising into Undefined: an answer no guard could hold
            rec.opaque = True
            raise
        if type(result) is str and str.__eq__(result, self):
            rec.guards.append((self._slot, name, args, tuple(sorted(kwargs.items())), _SAME))
            return self
        rec.guards.append((self._slot, name, args, tuple(sorted(kwargs.items())), result))
        return result

    method.__name__ = name
    return method


def _opaque(name: str, fn):
    """`_Rope.<name>`: reading built text is not worth replaying; the render makes no recipe."""

    def method(self, *args, **kwargs):
        self._rec.opaque = True
        return fn(str.__str__(self), *args, **kwargs)

    method.__name__ = name
    return method


for _name, _fn in _STR_OPS.items():
    if _name not in ("__radd__",):
        setattr(_Observed, _name, _observer(_name, _fn))
        setattr(_Rope, _name, _opaque(_name, _fn))
_Observed.__hash__ = _observer("__hash__", str.__hash__)
_Rope.__hash__ = _opaque("__hash__", str.__hash__)


def _holds_observed(values, depth: int = 0) -> bool:
    """Whether a content (or text built from one) is among `values`, looking into lists and dicts."""
    for value in values:
        if isinstance(value, (_Observed, _Rope)):
            return True
        if depth < 8 and isinstance(value, (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)) and _holds_observed(value, depth + 1):
            return True
        if depth < 8 and isinstance(value, dict) and (_holds_observed(value.keys(), depth + 1) or _holds_observed(value.values(), depth + 1)):
            return True
    return False


def _mark_if_observed(values) -> None:
    """A content reached code that reads it without a method call: no recipe from this render."""
    for value in values:
        if isinstance(value, (_Observed, _Rope)):
            value._rec.opaque = True
        elif isinstance(value, (list, tuple, dict, set, frozenset, KeysView, ValuesView, ItemsView)) and _holds_observed([value]):
            _mark_nested(value)


def _mark_nested(value, depth: int = 0) -> None:
    items = list(value.keys()) + list(value.values()) if isinstance(value, dict) else list(value)
    for item in items:
        if isinstance(item, (_Observed, _Rope)):
            item._rec.opaque = True
        elif depth < 8 and isinstance(item, (list, tuple, dict, set, frozenset, KeysView, ValuesView, ItemsView)):
            _mark_nested(item, depth + 1)


# Filters and tests that only reach a content through its (observed) methods, or not at all.
_SAFE_FILTERS = frozenset(
    {"length", "count", "first", "last", "reverse", "string", "trim", "lower", "upper", "capitalize", "replace",
     "default", "d", "list", "select", "reject", "selectattr", "rejectattr", "map", "items"}
)
_VALUE_ONLY_FILTERS = frozenset({"replace", "trim"})  # safe for the value, not for their other arguments
_UNSAFE_TESTS = frozenset({"sameas", "in"})
_JINJA_CALL_STATE = frozenset({"_loop_vars", "_block_vars"})  # jinja's own bookkeeping, not arguments
_IMPURE_NAMES = frozenset({"strftime_now", "lipsum"})  # output that depends on the clock or chance


def _observing_template(source: str):
    """(template compiled in an environment that notices unobservable reads, reason replay is off or None)."""
    from ..ml_stack import preload_chat_templates

    try:
        preload_chat_templates()  # the first import of transformers holds the ML stack's lock
        from transformers.utils.chat_template_utils import _compile_jinja_template

        env = _observing_environment(_compile_jinja_template(source).environment)
        blocker = _replay_blocker(env, source)
        return env.from_string(source), blocker
    except Exception as exc:  # a template (or transformers) we cannot mirror: always use apply_chat_template
        return None, f"cannot compile the template for replay ({type(exc).__name__}: {exc})"


def _observing_environment(reference_env):
    """A copy of transformers' chat-template environment whose filters, tests and calls mark opaque renders."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class ObservingEnvironment(ImmutableSandboxedEnvironment):
        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
            args = _drained(args)
            kwargs = {k: v if k in _JINJA_CALL_STATE else _drain(v) for k, v in kwargs.items()}
            _mark_if_observed(args)
            _mark_if_observed(v for k, v in kwargs.items() if k not in _JINJA_CALL_STATE)
            return super().call(__context, __obj, *args, **kwargs)

        def getattr(self, obj, attribute):
            if isinstance(obj, (_Observed, _Rope)) and attribute in ("format", "format_map"):
                obj._rec.opaque = True
            _mark_if_observed([attribute])
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            if isinstance(obj, (_Observed, _Rope)) and argument in ("format", "format_map"):
                obj._rec.opaque = True
            _mark_if_observed([argument])
            return super().getitem(obj, argument)

    settings = {
        name: getattr(reference_env, name)
        for name in (
            "block_start_string", "block_end_string", "variable_start_string", "variable_end_string",
            "comment_start_string", "comment_end_string", "line_statement_prefix", "line_comment_prefix",
            "trim_blocks", "lstrip_blocks", "newline_sequence", "keep_trailing_newline", "autoescape", "finalize",
        )
    }
    env = ObservingEnvironment(extensions=[type(e) for e in reference_env.extensions.values()], **settings)
    env.globals.update(reference_env.globals)
    env.filters = {
        name: (_value_only(f) if name in _VALUE_ONLY_FILTERS else f) if name in _SAFE_FILTERS else _guarded(f)
        for name, f in reference_env.filters.items()
    }
    env.tests = {name: _guarded(t) if name in _UNSAFE_TESTS else t for name, t in reference_env.tests.items()}
    return env


def _value_only(fn):
    """A filter that reads its value through (observed) methods but its other arguments in C
    (`'{content}'|replace('{content}', m.content)`, `role|trim(m.content)`): a content among those
    makes the render opaque."""
    return _guarded(fn, skip=(1 if hasattr(fn, "jinja_pass_arg") else 0) + 1)  # the context jinja may pass, then the value


def _guarded(fn, skip: int = 0):
    """A filter or test that marks the render opaque when a content is among its arguments (those after the first `skip`)."""

    def guarded(*args, **kwargs):
        args, kwargs = _drained(args), {k: _drain(v) for k, v in kwargs.items()}
        _mark_if_observed(args[skip:])
        _mark_if_observed(kwargs.values())
        return fn(*args, **kwargs)

    if hasattr(fn, "jinja_pass_arg"):
        guarded.jinja_pass_arg = fn.jinja_pass_arg
    return guarded


def _drain(value):
    """An iterator (`messages|map(attribute='content')` is a generator) as a list, so the contents
    it yields can be seen before a filter or call (`join`) reads them in C; anything else as is."""
    if isinstance(value, (KeysView, ValuesView, ItemsView)):  # `message.values()|join`
        return list(value)
    if isinstance(value, (str, bytes, list, tuple, dict)) or not hasattr(value, "__next__") or type(value).__name__ == "LoopContext":
        return value  # jinja's `loop` is an iterator too: never consume it
    return list(value)


def _drained(args: tuple) -> tuple:
    return tuple(_drain(a) for a in args)


def _replay_blocker(env, source: str) -> str | None:
    """Why renders of this template can never be replayed (a construct that reads values unobservably), or None."""
    from jinja2 import nodes

    tree = env.parse(source)
    for node_type, why in (
        (nodes.Concat, "uses `~`"),
        (nodes.AssignBlock, "captures output with {% set %}...{% endset %}"),
        (nodes.Macro, "defines macros"),
        (nodes.CallBlock, "uses call blocks"),
        (nodes.FilterBlock, "uses filter blocks"),
        (nodes.Block, "defines blocks"),  # `self.name()` renders one into a buffer
        (nodes.EvalContextModifier, "changes autoescaping"),  # markupsafe escapes a content in C
        (nodes.Extends, "extends a template"),
        (nodes.Include, "includes a template"),
        (nodes.Import, "imports a template"),
        (nodes.FromImport, "imports a template"),
    ):
        if tree.find(node_type) is not None:
            return f"the template {why}"
    if any(loop.recursive for loop in tree.find_all(nodes.For)):
        return "the template uses a recursive loop"  # `loop(...)` renders into a buffer
    for name in tree.find_all(nodes.Name):
        if name.name in _IMPURE_NAMES:
            return f"the template calls {name.name}"
    for mod in tree.find_all(nodes.Mod):  # `'%c' % (content,)` reads a content with no method call
        numeric = isinstance(mod.right, nodes.Const) and type(mod.right.value) in (int, float)  # `loop.index0 % 2`
        if not numeric or (isinstance(mod.left, nodes.Const) and isinstance(mod.left.value, str)):
            return "the template formats text with `%`"
    for flt in tree.find_all(nodes.Filter):
        if flt.name == "random":
            return "the template uses the random filter"
    for compare in tree.find_all(nodes.Compare):
        left = compare.expr
        for operand in compare.ops:
            if operand.op in ("in", "notin") and not (
                isinstance(left, nodes.Const) or isinstance(operand.expr, (nodes.List, nodes.Tuple, nodes.Dict))
            ):
                return "the template tests `x in y` where y may be a string"
            left = operand.expr
    return None
