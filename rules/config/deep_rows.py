"""`validate --deep` on the data: every row streamed through the source and the transforms (the
same transform objects the build runs), then checked as tokenize would check it. A problem is
reported with the words and the location the build would use; an empty result is an error too.

Rows flow in batches through row-local transforms; a transform that needs every row (dedup,
shuffle, sample) gathers them, as its node does. Locations follow the build's rule
(nodes/row_chunks.py): a row is named by its data file line when every transform before the
failing stage is row-local (one that drops rows, such as filter, included), else as `row N of
<node>`; on an error the source is read once more, batch by batch through those transforms,
then row by row in the batch that holds the failing row.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from evsys_build.errors import ConfigError

from ..data.conversation import check_conversation
from ..nodes.transform import make_transform
from ..plugins.environment_watch import environment_checked
from .deep_tokens import RowRefused, RowTokenizer
from .loading import Arm

BATCH = 1024


@dataclass
class Stage:
    name: str
    transform: object
    row_local: bool
    rows_in: int = 0


@dataclass
class RowsChecked:
    source_rows: int = 0
    rows: int = 0  # after the transforms: what tokenize gets
    stages: list[Stage] = field(default_factory=list)


class _Found(Exception):
    """The first problem: which stage (len(stages) = tokenize), which input row, what message."""

    def __init__(self, stage: int, index: int | None, message: str):
        self.stage, self.index, self.message = stage, index, message


def check_rows(arm: Arm, source, tokenizer: RowTokenizer | None = None) -> RowsChecked:
    """Stream every row; raise the build's ConfigError for the first row it would reject. With
    `tokenizer` the rows are tokenized as the build would; without one (the model's tokenizer
    is not on this machine) they get the checks that need none."""
    stages = _stages(arm)
    supervise = getattr(arm.params.get("algorithm"), "supervise", "all_assistant")
    out = RowsChecked(stages=stages)
    try:
        for batch in _through(stages, _source_batches(source, out), upto=len(stages)):
            if tokenizer is not None:
                try:
                    tokenizer(batch)
                except RowRefused as refused:
                    raise _Found(len(stages), refused.index, f"tokenize: {refused.message}") from None
                out.rows += len(batch)
                continue
            for row in batch:
                try:
                    check_conversation(row, supervise, "row")
                except ConfigError as exc:
                    raise _Found(len(stages), out.rows, f"tokenize: {exc.message.removeprefix('row: ')}") from None
                out.rows += 1
    except _Found as found:
        raise ConfigError(_located(arm, source, found)) from None
    return out


def _stages(arm: Arm) -> list[Stage]:
    return [
        Stage(f"transform[{i}] {spec.kind}", t, bool(getattr(t, "row_local", False)))
        for i, spec in enumerate(arm.config.transforms)
        for t in [make_transform(arm, i)]
    ]


def _source_batches(source, out: RowsChecked | None) -> Iterator[list[dict]]:
    rows = iter(source.iter_rows() if hasattr(source, "iter_rows") else source.read())
    while True:
        batch = list(itertools.islice(rows, BATCH))
        if not batch:
            return
        if out is not None:
            out.source_rows += len(batch)
        yield batch


def _through(stages: list[Stage], batches: Iterable[list[dict]], upto: int) -> Iterator[list[dict]]:
    """Batches after stages[:upto]; a stage's error becomes _Found."""
    for s, stage in enumerate(stages[:upto]):
        batches = _apply(s, stage, batches)
    return iter(batches)


def _apply(s: int, stage: Stage, batches: Iterable[list[dict]]) -> Iterator[list[dict]]:
    if not stage.row_local:
        rows = [row for batch in batches for row in batch]
        stage.rows_in = len(rows)
        out = _run(s, stage, rows, 0)
        for start in range(0, len(out), BATCH):
            yield out[start : start + BATCH]
        return
    for batch in batches:
        start = stage.rows_in
        stage.rows_in += len(batch)
        out = _run(s, stage, batch, start)
        if out:
            yield out


def _run(s: int, stage: Stage, rows: list[dict], start: int) -> list[dict]:
    try:
        with environment_checked(type(stage.transform), f"the transform {stage.name.split(' ', 1)[-1]}"):
            out = stage.transform(rows)
    except ConfigError as exc:
        if not stage.row_local:
            raise _Found(s, None, exc.message) from None
        for i, row in enumerate(rows):  # name the failing row, as the build does
            try:
                stage.transform([dict(row)])
            except ConfigError as row_exc:
                raise _Found(s, start + i, f"{stage.name}: {row_exc.message}") from None
        raise _Found(s, None, exc.message) from None
    except Exception as exc:  # noqa: BLE001 - a plugin bug: one line here, the traceback at build time
        raise _Found(s, None, f"{stage.name} failed: {type(exc).__name__}: {exc}") from None
    if out is None:
        raise _Found(s, None, f"{stage.name}: the transform returned None; it must return the rows (rows -> rows)")
    out = list(out)
    bad = next((r for r in out if not isinstance(r, dict)), None)
    if bad is not None:
        raise _Found(s, None, f"{stage.name}: the transform returned a {type(bad).__name__}, not a dict row")
    return out


def _located(arm: Arm, source, found: _Found) -> str:
    """The build's words: `<where>: <message>`, where is the file line or `row N of <node>`."""
    if found.index is None:
        return found.message
    before = _stages(arm)[: found.stage]
    node_name = before[-1].name if before else "source"
    position = _source_row(before, source, found.index) if all(st.row_local for st in before) else None
    located = source.location(position) if position is not None and hasattr(source, "location") else None
    return f"{located or f'row {found.index} of {node_name}'}: {found.message}"


def _source_row(stages: list[Stage], source, index: int) -> int | None:
    """The source row that row `index` after the row-local `stages` came from (as the build
    finds it: batch by batch, then row by row in the batch that holds it)."""
    seen_out = seen_in = 0
    try:
        for batch in _source_batches(source, None):
            made = len(_chain(stages, batch))
            if index < seen_out + made:
                left = index - seen_out
                for i, row in enumerate(batch):
                    one = len(_chain(stages, [row]))
                    if left < one:
                        return seen_in + i
                    left -= one
                return None
            seen_out += made
            seen_in += len(batch)
    except Exception:  # noqa: BLE001 - only naming a row: the check's own message stands
        return None
    return None


def _chain(stages: list[Stage], rows: list[dict]) -> list[dict]:
    for stage in stages:
        rows = list(stage.transform([dict(r) for r in rows]) or [])
    return rows
