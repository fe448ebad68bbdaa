"""Benchmark verifiers: `fn(prediction: str, **args) -> bool`, looked up by name.

A task's verifier spec is `{"kind": "in_process", "fn_name": NAME, **args}`. Specs are data:
nothing in a task file is ever evaluated as code; names resolve through the registry only.
"""

from __future__ import annotations

import inspect
import math
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable

from evsys_build.errors import ConfigError
from evsys_build.hashing import digest, digest_bytes
from evsys_build.statcache import StatCache
from evsys_build.watch import listings_watched, unwatchable, watch

from ..plugins.code_identity import code_identity
from ..plugins.environment_reads import environment_read_by
from ..plugins.environment_watch import environment_checked
from ..plugins.registry import Registry, register_verifier, verifiers

KINDS = Registry("verifier runner")  # how a spec runs; only in-process functions for now
KINDS.register("in_process")("in_process")

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER_RE = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def _builtin(name: str, check_args: Callable[..., None] | None = None):
    """Register a built-in verifier (keyed by its source, like any plugin) with an optional arg checker."""

    def decorate(fn):
        if check_args is not None:
            fn.check_args = check_args
        return register_verifier(name)(fn)

    return decorate


def _check_regex(pattern: str) -> None:
    try:
        compiled = re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise ConfigError(f"regex pattern {pattern!r} does not compile: {exc} (fix the pattern)") from None
    if compiled.search("") is not None:
        raise ConfigError(f"regex pattern {pattern!r} matches the empty string, so every prediction would pass (anchor or require text)")


def _check_contains(expected: str) -> None:
    if not isinstance(expected, str) or not expected:
        raise ConfigError(f"contains expected={expected!r} must be non-empty text (an empty one is in every prediction)")


def _check_numeric(expected: Any, tol: float = 0.0) -> None:
    for label, value in (("expected", expected), ("tol", tol)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"numeric {label}={value!r} is not a number (give a number)") from None
        if math.isnan(number):
            raise ConfigError(f"numeric {label} is NaN (give a finite number)")
    if float(tol) < 0:
        raise ConfigError(f"numeric tol={tol!r} is negative (use tol >= 0)")


@_builtin("contains", _check_contains)
def contains(prediction: str, expected: str) -> bool:
    """True when `expected` (non-empty text) occurs in the prediction."""
    return expected in prediction


@_builtin("exact_match")
def exact_match(prediction: str, expected: str, ignore_case: bool = False) -> bool:
    """True when the stripped prediction equals the stripped `expected`."""
    a, b = prediction.strip(), expected.strip()
    return a.casefold() == b.casefold() if ignore_case else a == b


@_builtin("regex", _check_regex)
def regex(prediction: str, pattern: str) -> bool:
    """True when `re.search(pattern, prediction)` matches (a pattern that matches the empty string is refused)."""
    _check_regex(pattern)
    return re.search(pattern, prediction) is not None


@_builtin("answer_tag")
def answer_tag(prediction: str, expected: str) -> bool:
    """True when the last `<answer>...</answer>` (stripped) equals `expected` (bare or tagged)."""
    found = _ANSWER_RE.findall(prediction)
    if not found:
        return False
    want = expected.strip()
    inner = _ANSWER_RE.fullmatch(want)
    if inner:
        want = inner.group(1).strip()
    return found[-1].strip() == want


@_builtin("numeric", _check_numeric)
def numeric(prediction: str, expected: float | int | str, tol: float = 0.0) -> bool:
    """True when the last number in the prediction is within `tol` of `expected`, compared as
    exact decimals (as floats, 2**53 + 1 would equal 2**53; a float param is read as it prints)."""
    found = _NUMBER_RE.findall(prediction)
    if not found:
        return False
    try:
        value, want, tolerance = Decimal(found[-1].replace(",", "")), Decimal(str(expected).strip()), Decimal(str(tol))
    except InvalidOperation:
        return False
    if want.is_infinite() or tolerance.is_infinite():
        return tolerance.is_infinite() or value == want
    return abs(value - want) <= tolerance


def resolve(spec: dict, where: str = "") -> tuple[Callable[..., bool], dict]:
    """Check a spec and return (function, args); errors name `where` and the fix."""
    prefix = f"{where}: " if where else ""
    if not isinstance(spec, dict):
        raise ConfigError(f"{prefix}verifier must be an object, got {type(spec).__name__} "
                          '(use {"kind": "in_process", "fn_name": ...})')
    if "kind" not in spec:
        raise ConfigError(f'{prefix}verifier has no "kind" (add "kind": "in_process")')
    KINDS.get(str(spec["kind"]), where)
    if "fn_name" not in spec:
        raise ConfigError(f'{prefix}verifier has no "fn_name" (name a registered verifier: '
                          f"{', '.join(verifiers.names())})")
    fn = verifiers.get(str(spec["fn_name"]), where)
    args = {k: v for k, v in spec.items() if k not in ("kind", "fn_name")}
    _check_signature(fn, args, spec["fn_name"], prefix)
    checker = getattr(fn, "check_args", None)
    if checker is not None:
        try:
            checker(**args)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}verifier {spec['fn_name']!r}: {exc.message}") from None
    return fn, args


def _check_signature(fn: Callable, args: dict, name: str, prefix: str) -> None:
    params = list(inspect.signature(fn).parameters.values())[1:]  # first one is the prediction
    if any(p.kind is p.VAR_KEYWORD for p in params):
        named = {p.name for p in params if p.kind is not p.VAR_KEYWORD}
        extra: list[str] = []
    else:
        named = {p.name for p in params}
        extra = sorted(set(args) - named)
    required = [p.name for p in params
                if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    missing = [n for n in required if n not in args]
    if not (missing or extra):
        return
    shown = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params)
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected {', '.join(extra)}")
    raise ConfigError(f"{prefix}verifier {name!r}: {'; '.join(problems)} "
                      f"(its parameters are: {shown or 'none'})")


def check(spec: dict, prediction: str, where: str) -> bool:
    """Run the spec's verifier on one prediction."""
    fn, args = resolve(spec, where)
    with environment_checked(fn, f"the verifier {spec['fn_name']}"):
        return bool(fn(prediction, **args))


def verifier_code(name: str, statcache: StatCache | None = None) -> str:
    """The code identity of the verifier registered as `name`, with the values of the environment
    variables its modules name (environment_reads.py), the bytes of the files its `files()` lists
    and what its `identity()` returns, if it has them. Given the compile's `statcache`, the listed
    files are digested through it, so a build refuses to score once one of them changed since."""
    fn = verifiers.get(name)
    environment = environment_read_by(fn, f"the verifier {name}")
    declared = ""
    files = getattr(fn, "files", None)  # the files it reads as it scores: `fn.files = lambda: [Path(...)]`
    if callable(files):
        declared += f" files:{digest(_declared_files(name, files, statcache))}"
    identity = getattr(fn, "identity", None)  # what else it reads, declared: `fn.identity = lambda: {...}`
    if callable(identity):
        unwatchable(f"the verifier {name}'s identity()")
        declared += f" identity:{digest(identity())}"
    return code_identity(fn) + (f" env:{digest(environment)}" if environment else "") + declared


def _declared_files(name: str, files: Callable, statcache: StatCache | None) -> list[str]:
    """The digests of the bytes of each file a verifier's `files()` lists, in its order (each
    watched, with its folder and what the call listed, for the fast paths)."""
    with listings_watched(f"the verifier {name}'s files()"):
        listed = [Path(f) for f in files()]
    out = []
    for path in listed:
        watch(path)
        watch(path.parent)
        try:
            out.append(statcache.file_digest(path) if statcache is not None else digest_bytes(path.read_bytes()))
        except OSError as exc:
            raise ConfigError(f"the verifier {name}'s files() lists {path}, which cannot be read ({exc.strerror or exc}); fix files() or the file") from None
    return out
