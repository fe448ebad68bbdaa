"""Render conversations with the model's own chat template: exactly, and fast.

`ChatRenderer.render` returns what `tokenizer.apply_chat_template(messages, tools=...,
tokenize=False, add_generation_prompt=..., **template_kwargs)` returns. Rows that hold only
{role, content} messages (and no tools) usually take a shortcut, a *recipe*:

A render of one conversation shape (the roles in order, the flags) is run once with each
content wrapped in `_Observed`, a str that records every question the template asks of it
(`content.startswith('<tool_response>')` -> False, `'</think>' in content` -> False,
`content.lstrip('\\n')` -> unchanged, ...) and that survives `+` as a `_Rope`, so the output
comes back as template text and whole contents. The template is a deterministic function of
what it read, so any later row of that shape whose contents give the same answers renders to
the same text with its own contents in place. A render makes no recipe ("opaque") when the
template reads a content in a way no method call shows: passed to a filter such as `tojson`,
to a call (iterators drained first, so `|map(...)|join` is seen), `str.format`, `repr`
(`{{ [content] }}`), `~`, `%`, or anything rendered into a buffer (captured blocks, macros,
recursive loops, blocks, autoescape): `_replay_blocker` refuses templates that can. The
first render of every recipe, and its first CHECKED_REPLAYS replays for other contents (saved
recipes included), are checked against `apply_chat_template` itself; a mismatch turns recipes
off for that tokenizer, so a read the observation missed shows there. Everything else renders through `apply_chat_template`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import ItemsView, KeysView, ValuesView

MAX_RECIPES_PER_SHAPE = 8
MAX_SHAPES = 512
CHECKED_REPLAYS = 3  # a recipe's first replays are checked against apply_chat_template: a read it missed shows there
MAX_FRUITLESS_LEARNS = 64  # a shape whose renders keep making no recipe stops being observed
_SAME = object()  # a guard result meaning "returned the content itself"
_renderers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_renderers_lock = threading.Lock()


def chat_renderer(tok) -> "ChatRenderer":
    """The renderer of `tok`'s chat template (one per tokenizer and template, kept while `tok` lives)."""
    template = tok.get_chat_template()
    with _renderers_lock:
        renderer = _renderers.get(tok)
        if renderer is None or renderer.template != template:
            renderer = _renderers[tok] = ChatRenderer(tok, template)
    return renderer


class ChatRenderer:
    """One tokenizer's chat template, with a cache of recipes per conversation shape."""

    def __init__(self, tok, template: str):
        self.tok = tok
        self.template = template
        self.recipes: dict[tuple, list[_Recipe]] = {}
        self.fruitless: dict[tuple, int] = {}  # shape -> learns in a row that kept no recipe
        self.seeded: set = set()  # saved recipe files already read into `recipes` (saved_recipes)
        self._compiled: tuple | None = None  # (observing template, why replay is off), compiled on first need
        self._mismatch: str | None = None

    @property
    def observing(self):
        """The template compiled to observe renders (None when it cannot be); compiled on first
        use, so rows that recipes render need neither jinja nor transformers."""
        if self._compiled is None:
            self._compiled = _observing_template(self.template)
        return self._compiled[0]

    @property
    def replay_off(self) -> str | None:
        """Why renders are never replayed from recipes, or None."""
        if self._mismatch is not None:
            return self._mismatch
        self.observing
        return self._compiled[1]

    def render(self, messages: list[dict], tools: list | None, generation_prompt: bool, template_kwargs: dict, plain: bool) -> str:
        """The conversation as text; `plain` says every message is exactly {role, content: str}."""
        if not (plain and tools is None) or self._mismatch is not None:
            return self.reference(messages, tools, generation_prompt, template_kwargs)
        key = (tuple([m["role"] for m in messages]), generation_prompt, tuple(template_kwargs.items()))
        contents = [m["content"] for m in messages]
        for recipe in self.recipes.get(key, ()):  # only ever made while replay was on, for this template
            if recipe.holds(contents):
                text = recipe.build(contents)
                if recipe.checks_left > 0:  # its first replays, for other contents, are checked too
                    recipe.checks_left -= 1
                    reference = self.reference(messages, tools, generation_prompt, template_kwargs)
                    if reference != text:
                        self._mismatch = "a replayed render differed from apply_chat_template"
                        return reference
                return text
        if self.observing is None or self.replay_off is not None:
            return self.reference(messages, tools, generation_prompt, template_kwargs)
        return self._learn(key, messages, contents, generation_prompt, template_kwargs)

    def reference(self, messages: list[dict], tools: list | None, generation_prompt: bool, template_kwargs: dict) -> str:
        """`apply_chat_template` itself: the slow path, and the truth recipes are checked against."""
        return self.tok.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt, **template_kwargs
        )

    def _learn(self, key: tuple, messages: list[dict], contents: list[str], generation_prompt: bool, template_kwargs: dict) -> str:
        """Render with observed contents; keep the recipe if it is reusable and matches the reference."""
        text = self.reference(messages, None, generation_prompt, template_kwargs)
        fruitless = self.fruitless.get(key, 0)
        if fruitless >= MAX_FRUITLESS_LEARNS:
            return text
        recipe = self._observe(messages, generation_prompt, template_kwargs)
        if recipe is not None and recipe.reusable() and recipe.build(contents) != text:
            self._mismatch = "an observed render differed from apply_chat_template"
            return text
        if recipe is not None and recipe.reusable() and self._keep(key, recipe):
            self.fruitless[key] = 0
        else:
            self.fruitless[key] = fruitless + 1
        return text

    def _keep(self, key: tuple, recipe: "_Recipe") -> bool:
        """Store a recipe unless the cache is full; whether it was stored."""
        if key not in self.recipes and len(self.recipes) >= MAX_SHAPES:
            return False
        kept = self.recipes.setdefault(key, [])
        if len(kept) >= MAX_RECIPES_PER_SHAPE:
            return False
        kept.append(recipe)
        return True

    def _observe(self, messages: list[dict], generation_prompt: bool, template_kwargs: dict) -> "_Recipe | None":
        """One render with every content observed; None when the template failed or read a content unobservably."""
        rec = _Recorder()
        observed = [{"role": m["role"], "content": _Observed(m["content"], i, rec)} for i, m in enumerate(messages)]
        variables = {
            "messages": observed,
            "tools": None,
            "documents": None,
            "add_generation_prompt": generation_prompt,
            **self.tok.special_tokens_map,
            **template_kwargs,
        }
        try:
            pieces = list(self.observing.root_render_func(self.observing.new_context(variables)))
        except Exception:  # the reference render already succeeded; a failure here only means no recipe
            return None
        if rec.opaque:
            return None
        return _Recipe(_parts(pieces, rec), tuple(rec.guards))


class _Recipe:
    """A render's output as template text and content slots, and the guards that make it reusable."""

    __slots__ = ("parts", "guards", "named_guards", "checks_left")

    def __init__(self, parts: list, guards: tuple):
        self.parts = parts
        self.checks_left = CHECKED_REPLAYS
        self.named_guards = tuple(guards)  # (slot, str method name, args, kwargs, result), as recorded
        self.guards = tuple((slot, _STR_OPS[name], args, dict(kwargs) if kwargs else None, result) for slot, name, args, kwargs, result in guards)

    def reusable(self) -> bool:
        """Worth keeping: guards that pin whole strings (a split, a changed strip) match one row only."""
        return all(r is _SAME or not isinstance(r, (str, bytes, list, tuple)) for *_, r in self.guards)

    def holds(self, contents: list[str]) -> bool:
        """Whether these contents answer every question the template asked as the recorded ones did."""
        for slot, fn, args, kwargs, expected in self.guards:
            value = contents[slot]
            try:
                got = fn(value, *args) if kwargs is None else fn(value, *args, **kwargs)
            except Exception:
                return False
            if expected is _SAME:
                if not (type(got) is str and got == value):
                    return False
            elif type(got) is not type(expected) or got != expected:
                return False
        return True

    def build(self, contents: list[str]) -> str:
        return "".join([contents[p] if p.__class__ is int else p for p in self.parts])


class _Recorder:
    """What one observed render asked of its contents, and whether it read one unobservably."""

    __slots__ = ("guards", "opaque")

    def __init__(self):
        self.guards: list[tuple] = []
        self.opaque = False


class _Observed(str):
    """A message content inside an observed render: every method call on it is a recorded guard."""

    def __new__(cls, value: str, slot: int, rec: _Recorder):
        self = str.__new__(cls, value)
        self._slot = slot
        self._rec = rec
        return self

    def __str__(self):  # `{{ content }}` outputs the content itself, slot and all
        return self

    def __add__(self, other):
        return _Rope.concat(self, other, self._rec) if isinstance(other, str) else NotImplemented

    def __radd__(self, other):
        return _Rope.concat(other, self, self._rec) if isinstance(other, str) else NotImplemented

    def __iter__(self):
        self._rec.opaque = True
        return iter(str.__str__(self))

    def __repr__(self):  # `{{ [content] }}`, `{{ message }}`, `'%r' % (content,)`: text no slot survives in
        self._rec.opaque = True
        return str.__repr__(str.__str__(self))


class _Rope(str):
    """Text built with `+` from template literals and contents; remembers which parts were contents."""

    def __new__(cls, parts: tuple, rec: _Recorder):
        self = str.__new__(cls, "".join(str.__str__(p) for p in parts))
        self._parts = parts
        self._rec = rec
        return self

    @staticmethod
    def concat(left: str, right: str, rec: _Recorder) -> "_Rope":
        return _Rope(_rope_parts(left) + _rope_parts(right), rec)

    def __str__(self):
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
    try:
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
    first = 1 if hasattr(fn, "jinja_pass_arg") else 0  # the context jinja passes before the value

    def value_only(*args, **kwargs):
        args, kwargs = _drained(args), {k: _drain(v) for k, v in kwargs.items()}
        _mark_if_observed(args[first + 1 :])
        _mark_if_observed(kwargs.values())
        return fn(*args, **kwargs)

    if hasattr(fn, "jinja_pass_arg"):
        value_only.jinja_pass_arg = fn.jinja_pass_arg
    return value_only


def _guarded(fn):
    """A filter or test that marks the render opaque when a content is among its arguments."""

    def guarded(*args, **kwargs):
        args, kwargs = _drained(args), {k: _drain(v) for k, v in kwargs.items()}
        _mark_if_observed(args)
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
