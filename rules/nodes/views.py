"""Typed views of the node outputs that runners pass along.

Each view is the one place that reads (`of(manifest)`) and writes (`outputs()`) its part of a
manifest, so runners never chain `ctx.inputs[...]["outputs"][...]` lookups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evsys_build.errors import StoreError

from ..data.token_chunks import cut_summary


def _outputs(manifest: dict, name: str, rule: str) -> dict:
    try:
        return manifest["outputs"][name]
    except (KeyError, TypeError):
        raise StoreError(f"node {manifest.get('key', '?')[:12]} ({manifest.get('name')}) has no {name!r} output of a {rule} node") from None


@dataclass(frozen=True)
class RowDataset:
    """Rows as content-defined chunks (`{"blob", "rows"}`): what source and transform nodes output."""

    chunks: list[dict]

    @property
    def num_rows(self) -> int:
        return sum(c["rows"] for c in self.chunks)

    @classmethod
    def of(cls, manifest: dict) -> "RowDataset":
        return cls.from_json(_outputs(manifest, "dataset", "source or transform"))

    @classmethod
    def from_json(cls, dataset: dict) -> "RowDataset":
        if dataset.get("kind") != "rows":
            raise StoreError(f"expected a row dataset, got kind {dataset.get('kind')!r}")
        return cls(list(dataset["chunks"]))

    def to_json(self) -> dict:
        return {"kind": "rows", "num_rows": self.num_rows, "chunks": self.chunks}

    def outputs(self) -> dict:
        return {"dataset": self.to_json()}


@dataclass(frozen=True)
class TokenDataset:
    """Tokenized rows as chunks (`{"rows", "tokens", "loss_tokens", "blob"}`, `token_chunks`): what tokenize outputs,
    with the tokenizer's files attached (not keyed on) so `evsys show` can decode."""

    chunks: list[dict]
    tokenizer_blobs: dict[str, str] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return sum(c["rows"] for c in self.chunks)

    @property
    def num_tokens(self) -> int:
        return sum(c["tokens"] for c in self.chunks)

    @property
    def num_loss_tokens(self) -> int:
        return sum(c["loss_tokens"] for c in self.chunks)

    @property
    def num_truncated(self) -> int:
        """Rows cut to max_length (chunks record it only when they cut one)."""
        return sum(c.get("truncated", 0) for c in self.chunks)

    @property
    def num_trained_cut(self) -> int:
        """Trained tokens those cuts dropped."""
        return sum(c.get("trained_cut", 0) for c in self.chunks)

    def cut_summary(self, max_length: int, truncation: str) -> str:
        """What max_length cut, in words ('' when it cut nothing)."""
        return cut_summary(self.num_truncated, self.num_rows, self.num_trained_cut, max_length, truncation)

    @classmethod
    def of(cls, manifest: dict) -> "TokenDataset":
        dataset = _outputs(manifest, "dataset", "tokenize")
        if dataset.get("kind") != "tokens":
            raise StoreError(f"expected a token dataset, got kind {dataset.get('kind')!r}")
        tokenizer = (manifest.get("attachments") or {}).get("tokenizer", {}).get("blobs", {})
        return cls(list(dataset["chunks"]), dict(tokenizer))

    def outputs(self) -> dict:
        dataset = {
            "kind": "tokens",
            "num_rows": self.num_rows,
            "num_tokens": self.num_tokens,
            "num_loss_tokens": self.num_loss_tokens,
            "chunks": self.chunks,
        }
        if self.num_truncated:
            dataset.update(num_truncated=self.num_truncated, num_trained_cut=self.num_trained_cut)
        return {"dataset": dataset}

    def attachments(self) -> dict:
        return {"tokenizer": {"blobs": self.tokenizer_blobs}}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's blobs: weights (what a sampler loads), state (what resume loads), and meta
    (step, data position, metrics so far), all content; and, attached, the per-step timings
    (wall-clock, so they differ between runs that compute the same bytes)."""

    weights: dict[str, str]
    state: dict[str, str]
    meta_blob: str
    timings_blob: str | None = None

    @classmethod
    def of(cls, manifest: dict) -> "Checkpoint":
        out = manifest.get("outputs") or {}
        timings = (manifest.get("attachments") or {}).get("timings", {}).get("blob")
        try:
            return cls(dict(out["weights"]["blobs"]), dict(out["state"]["blobs"]), out["meta"]["blob"], timings)
        except (KeyError, TypeError):
            raise StoreError(f"node {manifest.get('key', '?')[:12]} ({manifest.get('name')}) is not a checkpoint") from None

    def outputs(self) -> dict:
        return {"weights": {"blobs": self.weights}, "state": {"blobs": self.state}, "meta": {"blob": self.meta_blob}}

    def attachments(self) -> dict:
        return {"timings": {"blob": self.timings_blob}} if self.timings_blob else {}


@dataclass(frozen=True)
class TrainResult:
    """What a train node outputs: the per-step history (content: loss, learning rate, ...) and the
    final checkpoint's node key and state; and, attached, the per-step timings (wall-clock: a
    retrain that computes the same bytes has the same output digest, so what reads it is cached)."""

    history_blob: str
    checkpoint_final: str
    state_final: dict[str, str]
    timings_blob: str | None = None

    @classmethod
    def of(cls, manifest: dict) -> "TrainResult":
        out = manifest.get("outputs") or {}
        timings = (manifest.get("attachments") or {}).get("timings", {}).get("blob")
        try:
            return cls(out["history"]["blob"], out["checkpoint-final"], dict(out["state-final"]["blobs"]), timings)
        except (KeyError, TypeError):
            raise StoreError(f"node {manifest.get('key', '?')[:12]} ({manifest.get('name')}) is not a train node") from None

    def outputs(self) -> dict:
        return {"history": {"blob": self.history_blob}, "checkpoint-final": self.checkpoint_final, "state-final": {"blobs": self.state_final}}

    def attachments(self) -> dict:
        return {"timings": {"blob": self.timings_blob}} if self.timings_blob else {}

    def history(self, store) -> list[dict]:
        """The per-step history with each step's timings (tokens/s, step time) merged in, for
        what shows it (the run dir's metrics.jsonl, callbacks, `show`)."""
        import json

        return with_timings(store, self.timings_blob, json.loads(store.get_bytes(self.history_blob)))


def with_timings(store, timings_blob: str | None, history: list[dict]) -> list[dict]:
    """`history` with each step's attached timings merged in (as they were before being kept apart)."""
    if not timings_blob:
        return history
    import json

    timings = {t["step"]: t for t in json.loads(store.get_bytes(timings_blob))}
    return [{**m, **timings.get(m["step"], {})} for m in history]


@dataclass(frozen=True)
class EvalResult:
    """One benchmark scored at one checkpoint: predictions (JSONL blob) and the metrics (both
    content: the report reads them, so they are part of the digest its key is made of)."""

    predictions_blob: str
    metrics: dict

    @classmethod
    def of(cls, manifest: dict) -> "EvalResult":
        return cls(_outputs(manifest, "predictions", "eval")["blob"], dict(_outputs(manifest, "metrics", "eval")))

    def outputs(self) -> dict:
        return {"predictions": {"blob": self.predictions_blob}, "metrics": self.metrics}


@dataclass(frozen=True)
class ReportFiles:
    """The run dir's files (relative path -> blob) that a report node outputs."""

    files: dict[str, str]

    @classmethod
    def of(cls, manifest: dict) -> "ReportFiles":
        return cls(dict(_outputs(manifest, "files", "report")["blobs"]))

    def outputs(self) -> dict:
        return {"files": {"blobs": self.files}}
