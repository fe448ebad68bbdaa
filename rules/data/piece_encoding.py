"""Texts -> token ids and character offsets, exactly as the fast tokenizer encodes them, with the
encoding of repeated pieces reused.

A `tokenizers` pipeline first splits the raw text at its non-normalized added tokens
(`<|im_start|>`, `<|im_end|>`, `<think>`, ...: `AddedVocabulary::extract_and_normalize`,
leftmost-longest), then normalizes, pre-tokenizes and models each piece between them on its own.
So the ids of a text are the ids of its pieces in order, the added tokens' own ids between them,
and each piece's offsets shift by where it starts. Chat renderings repeat most of their pieces
(the system prompt, role headers, the empty think block), so each distinct piece is encoded once
per chunk, and pieces that recur are kept for later chunks.

The split is the whole story only when no added token strips whitespace beside itself or matches
single words (lstrip, rstrip, single_word), special tokens are never encoded as text, and no
pre-tokenizer depends on where a piece sits in the text (Metaspace's `prepend_scheme: first`).
Other tokenizers are encoded whole. As a check on all of this, the first texts an encoder sees,
and the first text of every batch, are also encoded whole and compared, ids and offsets: a
difference turns the piece path off for that tokenizer and the batch is encoded whole.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import json
import re
import threading
import weakref
from dataclasses import dataclass

MAX_KEPT_PIECES = 8192  # pieces kept across batches (recurring ones); cleared when full
CHECKED_FIRST = 64  # texts per encoder also encoded whole and compared
_encoders: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_encoders_lock = threading.Lock()


@dataclass
class EncodedTexts:
    """Token ids, and each token's [start, end) characters within its own text; text i's tokens
    are [bounds[i], bounds[i + 1])."""

    ids: "object"  # np.int32
    starts: "object"  # np.int64
    ends: "object"  # np.int64
    bounds: "object"  # np.int64, len(texts) + 1


def piece_encoder(backend) -> "PieceEncoder":
    """The encoder of a `tokenizers.Tokenizer` (one per backend object, rebuilt when its pipeline changes)."""
    fingerprint = _fingerprint(backend)
    with _encoders_lock:
        encoder = _encoders.get(backend)
        if encoder is None or encoder.fingerprint != fingerprint:
            encoder = _encoders[backend] = PieceEncoder(backend, fingerprint)
    return encoder


class PieceEncoder:
    """One tokenizer's encoder: pieces between its non-normalized added tokens, encoded once each."""

    def __init__(self, backend, fingerprint: tuple):
        self.backend = backend
        self.fingerprint = fingerprint
        self.off, splitters = _piece_path(backend)
        self.tokens = {content: backend.token_to_id(content) for content in splitters}
        alternatives = sorted(splitters, key=len, reverse=True)  # leftmost-longest, as the tokenizer matches
        self.split = re.compile("(" + "|".join(re.escape(s) for s in alternatives) + ")").split if alternatives else None
        self.kept: dict[str, tuple] = {}
        self.checked = 0
        self.lock = threading.Lock()

    def encode(self, texts: list[str], boundaries: list[list[int]] | None = None) -> EncodedTexts:
        """Ids and offsets of `texts`. With `boundaries` (per text, the character positions where
        its loss spans start or end), a piece that holds none of them, edges included, gets the
        piece's own [start, end) as every token's offsets: a span covers the whole piece or none
        of it, so the weights cut from these offsets are the same, and reading each token's
        offsets out of the tokenizer costs more than encoding the piece."""
        if self.off is not None or self.split is None or not texts:
            return _whole(self.backend, texts)
        with self.lock:
            checks = list(range(min(len(texts), max(1, CHECKED_FIRST - self.checked))))
            self.checked += len(checks)
            encoded = self._pieces(texts, boundaries, len(checks))
        whole = _whole(self.backend, [texts[i] for i in checks])
        for j, i in enumerate(checks):
            if not _same_row(encoded, i, whole, j):
                self.off = f"piece encoding differed from the whole text's on {texts[i][:60]!r}"
                return _whole(self.backend, texts)
        return encoded

    def _pieces(self, texts: list[str], boundaries: list[list[int]] | None, checked: int) -> EncodedTexts:
        import numpy as np

        parts: list[str] = []
        per_text: list[int] = []
        exact: set[str] | None = None if boundaries is None else set()  # parts whose tokens need their own offsets
        for i, text in enumerate(texts):
            split = self.split(text)
            parts.extend(split)
            per_text.append(len(split))
            if exact is not None:
                if i < checked:  # compared with the whole text's encoding, offsets included
                    exact.update(split)
                elif boundaries[i]:
                    exact.update(_parts_at(split, boundaries[i]))
        counts = collections.Counter(parts)
        table = dict.fromkeys(counts)  # this batch's distinct parts -> (ids, offsets)
        new = []
        for part in table:
            hit = self.kept.get(part) if part not in self.tokens else ((self.tokens[part],), ((0, len(part)),))
            if hit is None and part:
                new.append(part)
            table[part] = hit if part else ((), ())
        if new:
            for part, enc in zip(new, self.backend.encode_batch(new, add_special_tokens=False)):
                ids = enc.ids
                real = exact is None or counts[part] > 1 or part in exact  # a kept part may meet a boundary later
                table[part] = (ids, enc.offsets if real else ((0, len(part)),) * len(ids))
            if len(self.kept) + len(new) > MAX_KEPT_PIECES:
                self.kept.clear()
            self.kept.update((p, table[p]) for p in new if counts[p] > 1)
        return _assemble(np, parts, per_text, table)


def _parts_at(split: list[str], positions: list[int]) -> list[str]:
    """The parts of one text's split that hold any of `positions`, their edges included."""
    ends = list(itertools.accumulate(map(len, split)))
    found = []
    for x in positions:
        i = bisect.bisect_left(ends, x)  # the first part that ends at or after x: it holds x
        if i < len(split):
            found.append(split[i])
        while i + 1 < len(split) and ends[i] == x:  # x is its end, so the next part starts at x
            i += 1
            found.append(split[i])
    return found


def _assemble(np, parts: list[str], per_text: list[int], table: dict) -> EncodedTexts:
    """Lay out the parts' tokens in order, offsets shifted to where each part starts in its text."""
    distinct = list(table)
    index = {p: i for i, p in enumerate(distinct)}
    sizes = np.fromiter((len(table[p][0]) for p in distinct), dtype=np.int64, count=len(distinct))
    first = np.zeros(len(distinct) + 1, dtype=np.int64)
    first[1:] = np.cumsum(sizes)
    total_table = int(first[-1])
    ids_table = np.fromiter(itertools.chain.from_iterable(table[p][0] for p in distinct), dtype=np.int32, count=total_table)
    offsets_table = np.fromiter(
        itertools.chain.from_iterable(itertools.chain.from_iterable(table[p][1] for p in distinct)), dtype=np.int64, count=2 * total_table
    ).reshape(-1, 2)

    which = np.fromiter((index[p] for p in parts), dtype=np.int64, count=len(parts))
    chars = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    part_text = np.repeat(np.arange(len(per_text)), per_text)
    text_first_part = np.zeros(len(per_text) + 1, dtype=np.int64)
    text_first_part[1:] = np.cumsum(per_text)
    char_end = np.cumsum(chars)
    char_start_all = char_end - chars
    text_char_start = char_start_all[text_first_part[:-1]]  # every text has at least one part
    shift = char_start_all - text_char_start[part_text]  # where each part starts within its own text

    lens = sizes[which]
    token_part_start = np.cumsum(lens) - lens
    total = int(lens.sum())
    gather = np.repeat(first[which] - token_part_start, lens) + np.arange(total, dtype=np.int64)
    token_shift = np.repeat(shift, lens)
    tokens_per_text = np.bincount(part_text, weights=lens, minlength=len(per_text)).astype(np.int64)
    bounds = np.zeros(len(per_text) + 1, dtype=np.int64)
    bounds[1:] = np.cumsum(tokens_per_text)
    return EncodedTexts(ids_table[gather], offsets_table[gather, 0] + token_shift, offsets_table[gather, 1] + token_shift, bounds)


def _whole(backend, texts: list[str]) -> EncodedTexts:
    """Each text encoded whole, in one batched call."""
    import numpy as np

    encodings = backend.encode_batch(texts, add_special_tokens=False) if texts else []
    sizes = [len(e.ids) for e in encodings]
    bounds = np.zeros(len(texts) + 1, dtype=np.int64)
    bounds[1:] = np.cumsum(sizes)
    total = int(bounds[-1])
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int32, count=total)
    offsets = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(e.offsets for e in encodings)), dtype=np.int64, count=2 * total).reshape(-1, 2)
    return EncodedTexts(ids, offsets[:, 0].copy(), offsets[:, 1].copy(), bounds)


def _same_row(a: EncodedTexts, i: int, b: EncodedTexts, j: int) -> bool:
    import numpy as np

    sa, sb = slice(a.bounds[i], a.bounds[i + 1]), slice(b.bounds[j], b.bounds[j + 1])
    return bool(np.array_equal(a.ids[sa], b.ids[sb]) and np.array_equal(a.starts[sa], b.starts[sb]) and np.array_equal(a.ends[sa], b.ends[sb]))


def _piece_path(backend) -> tuple[str | None, list[str]]:
    """(why the piece path is off or None, the added tokens the tokenizer splits raw text at)."""
    added = list(backend.get_added_tokens_decoder().values())
    splitters = [t for t in added if not t.normalized]
    odd = [t.content for t in splitters if t.lstrip or t.rstrip or t.single_word]
    if odd:
        return f"added tokens {odd[:3]} strip whitespace or match single words", []
    if "Metaspace" in json.dumps(_state(backend.pre_tokenizer)):
        return "a Metaspace pre-tokenizer treats the text's first piece differently", []
    return None, [t.content for t in splitters if t.content]


def _state(component) -> object:
    """A normalizer's or pre-tokenizer's settings, as JSON-able data (None when absent)."""
    if component is None:
        return None
    return json.loads(component.__getstate__())


def _fingerprint(backend) -> tuple:
    """What the piece path depends on; a change (an added token, a new pre-tokenizer) rebuilds the encoder."""
    added = backend.get_added_tokens_decoder()
    return (
        backend.get_vocab_size(with_added_tokens=True),
        tuple((i, t.content, t.normalized, t.lstrip, t.rstrip, t.single_word) for i, t in sorted(added.items())),
        json.dumps([_state(backend.normalizer), _state(backend.pre_tokenizer), _state(backend.post_processor)], sort_keys=True),
        getattr(backend, "encode_special_tokens", False),
    )
