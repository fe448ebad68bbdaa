"""Sampling through a Tinker sampling client: every prompt of a round is submitted before any
result is awaited, so the service sees the whole benchmark at once."""

from __future__ import annotations

from typing import Optional, Sequence

from evsys_build.errors import NodeFailed

from ..base import StepFailed
from .service import call


class TinkerSamplingClient:
    """The SamplingClient protocol over `tinker.SamplingClient` (a checkpoint's sampler weights)."""

    per_prompt_seeds = True  # sample() takes `seeds`, one per prompt, in one submission

    def __init__(self, sampler, base_url: Optional[str]):
        self.sampler, self.base_url = sampler, base_url

    def sample(
        self,
        prompts: list[list[int]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop_token_ids: Sequence[int] = (),
        n: int = 1,
        seed: int = 0,
        seeds: Optional[Sequence[int]] = None,
    ) -> list[list[list[int]]]:
        """Per prompt, `n` completions of generated ids, cut before the first stop token."""
        from tinker import types

        stops = [int(t) for t in stop_token_ids]
        seeds = list(seeds) if seeds is not None else [seed] * len(prompts)
        futures = [
            call(
                lambda p=p, s=s: self.sampler.sample(
                    prompt=types.ModelInput.from_ints(list(p)),
                    num_samples=n,
                    sampling_params=types.SamplingParams(max_tokens=max_tokens, temperature=temperature, stop=stops, seed=s),
                ),
                "submitting a sampling request",
                self.base_url,
            )
            for p, s in zip(prompts, seeds)
        ]
        return [[_cut_at_stop(list(seq.tokens), set(stops)) for seq in response.sequences] for response in self._answers(futures, "sampling")]

    def score(self, datums) -> list[tuple[float, float]]:
        """Per datum, (sum over t of -log p(ids[t] | ids[:t]) × weights[t], sum of weights[1:]),
        from the service's prompt logprobs (`compute_logprobs`), every row submitted before any
        answer is awaited: the local backend's held-out scoring, computed by the service."""
        from tinker import types

        rows = [(list(map(int, d.input_ids)), [float(w) for w in d.weights]) for d in datums]
        futures = [
            call(lambda ids=ids: self.sampler.compute_logprobs(types.ModelInput.from_ints(ids)), "submitting a scoring request", self.base_url)
            if len(ids) >= 2 and any(weights[1:]) else None
            for ids, weights in rows
        ]
        out = []
        for (ids, weights), logprobs in zip(rows, self._answers(futures, "scoring")):
            if logprobs is None:
                out.append((0.0, 0.0))
                continue
            if len(logprobs) != len(ids) or any(logprobs[t] is None for t in range(1, len(ids)) if weights[t]):
                raise NodeFailed(f"tinker: the service scored {len(logprobs)} of a row's {len(ids)} tokens, some without a logprob; held-out loss needs every weighted one")
            out.append((-sum(weights[t] * logprobs[t] for t in range(1, len(ids)) if weights[t]), sum(weights[1:])))
        return out

    def _answers(self, futures, what: str):
        """Each submitted request's answer, in order (None stays None). Nothing is recovered here:
        the per-task memo keeps what was sampled before a failure."""
        for future in futures:
            if future is None:
                yield None
                continue
            try:
                yield call(future.result, what, self.base_url)
            except StepFailed as exc:
                raise NodeFailed(f"tinker: {exc}") from None


def _cut_at_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for k, tok in enumerate(tokens):
        if tok in stops:
            return tokens[:k]
    return tokens
