"""The Tinker training client: the SFT loop's TrainingClient on a Tinker-API service.

Every call is submitted at once and answered by a future, so the loop keeps one step in flight
ahead of the one it waits for. The training model is created on first use: fresh
(`create_lora_training_client`) or, on resume, from the saved state
(`create_training_client_from_state_with_optimizer`). A checkpoint is the service's state and
sampler weights (`tinker://` paths), plus the adapter's files when the service offers them for
download, so a checkpoint that expires on the service keeps its weights in the local store.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Callable, Optional, Sequence

from ..base import AdamParams, Datum
from .service import call, rest_client, service_client

STATE_FILE = "tinker_state.json"  # the state blob: which tinker:// path to resume from
SAMPLER_FILE = "tinker_sampler.json"  # among the weights: which tinker:// path samplers load
# Which layers get adapters: attention and MLP, not the unembedding, as the local backend's
# LORA_TARGETS. Said explicitly: the SDK's own default also trains the unembedding, and the same
# config must train the same weights on both backends.
LORA_LAYERS = {"train_attn": True, "train_mlp": True, "train_unembed": False}


def tinker_datum(datum: Datum):
    """A local Datum as Tinker's: the model reads input_ids[:-1] and predicts input_ids[1:], each
    prediction weighted by weights[1:] (weights[t] weighs predicting token t in evsys)."""
    from tinker import types

    ids = datum.input_ids.tolist()
    return types.Datum(
        model_input=types.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={"target_tokens": ids[1:], "weights": datum.weights[1:].tolist()},
    )


class _Mapped:
    """An SDK future whose result is mapped to evsys's shape and whose errors to one line."""

    def __init__(self, result: Callable[[], object], what: str, base_url: Optional[str]):
        self._result, self._what, self._base_url = result, what, base_url
        self._value, self._done = None, False

    def result(self):
        if not self._done:
            self._value = call(self._result, self._what, self._base_url)
            self._done = True
        return self._value


class TinkerTrainingClient:
    """forward_backward / optim_step / checkpoints of one LoRA training run on the service."""

    def __init__(self, base_model: str, lora_rank: int, seed: int, base_url: Optional[str], download_weights: bool = True):
        self.base_model, self.lora_rank, self.seed = base_model, lora_rank, seed
        self.base_url, self.download_weights = base_url, download_weights
        self._tc = None
        self._barrier = None  # a sampler save that later calls must not overtake (see save_checkpoint_async)

    # -- the training model on the service
    def _client(self):
        """The training client, once every earlier call has its place in the service's order."""
        if self._barrier is not None:
            barrier, self._barrier = self._barrier, None
            call(barrier.result, "saving sampler weights", self.base_url)
        if self._tc is None:
            sc = service_client(self.base_url)
            self._tc = call(
                lambda: sc.create_lora_training_client(base_model=self.base_model, rank=self.lora_rank, seed=self.seed, **LORA_LAYERS).result(),
                f"creating a LoRA training client for {self.base_model}",
                self.base_url,
            )
        return self._tc

    def load_state(self, blobs: dict[str, bytes]) -> None:
        """Resume: create the training model from the saved state, weights and Adam moments."""
        path = json.loads(blobs[STATE_FILE])["path"]
        sc = service_client(self.base_url)
        self._tc = call(lambda: sc.create_training_client_from_state_with_optimizer(path).result(), f"resuming from {path}", self.base_url)

    def recover(self, state: Optional[dict[str, bytes]]) -> None:
        self._tc, self._barrier = None, None
        if state is not None:
            self.load_state(state)

    # -- steps
    def forward_backward_async(self, datums: Sequence[Datum], loss: str = "cross_entropy") -> _Mapped:
        batch = [tinker_datum(d) for d in datums]
        tc = self._client()
        future = call(lambda: tc.forward_backward(batch, loss), "submitting forward_backward", self.base_url)
        counts = {
            "weight_sum": float(sum(float(d.weights[1:].sum()) for d in datums)),
            "num_tokens": sum(d.num_tokens for d in datums),
            "num_loss_tokens": sum(int((d.weights[1:] != 0).sum()) for d in datums),
            "num_sequences": len(datums),
        }

        def result() -> dict:
            out = future.result()
            return {"loss_sum": float(out.metrics["loss:sum"]), **counts}

        return _Mapped(result, "forward_backward", self.base_url)

    def optim_step_async(self, adam: AdamParams) -> _Mapped:
        from tinker import types

        params = types.AdamParams(
            learning_rate=adam.learning_rate, beta1=adam.beta1, beta2=adam.beta2, eps=adam.eps,
            weight_decay=adam.weight_decay, grad_clip_norm=adam.grad_clip or 0.0,
        )
        tc = self._client()
        future = call(lambda: tc.optim_step(params), "submitting optim_step", self.base_url)

        def result() -> dict:
            metrics = dict(future.result().metrics or {})
            norms = [v for k, v in metrics.items() if k.split(":", 1)[0] == "grad_norm"]
            return {"learning_rate": adam.learning_rate, **({"grad_norm": float(norms[0])} if norms else {})}

        return _Mapped(result, "optim_step", self.base_url)

    def forward_backward(self, datums: Sequence[Datum], loss: str = "cross_entropy") -> dict:
        return self.forward_backward_async(datums, loss).result()

    def optim_step(self, adam: AdamParams) -> dict:
        return self.optim_step_async(adam).result()

    # -- checkpoints
    def save_checkpoint_async(self, name: str) -> _Mapped:
        """Submit save_state (resume) and save_weights_for_sampler (evaluation) right after the
        last submitted step, and an export of the adapter's files when downloads are on.

        SDK 0.38 gives save_weights_for_sampler its place in the model's request order on its own
        event loop, after the call returns, so a forward_backward submitted at once could overtake
        it and the sampler would see the next step's weights: `_fence` waits until it has its place."""
        tc = self._client()
        state = call(lambda: tc.save_state(name), "submitting save_state", self.base_url)
        export = None
        if self.download_weights:
            export = call(lambda: tc.save_weights_external(name), "submitting save_weights_external", self.base_url)
        sampler = call(lambda: tc.save_weights_for_sampler(name), "submitting save_weights_for_sampler", self.base_url)
        self._fence(tc, sampler)

        def result():
            state_path = state.result().path
            sampler_path = sampler.result().path
            refs = {"path": None, "base_model": self.base_model, "lora_rank": self.lora_rank}
            weights = {SAMPLER_FILE: _json({**refs, "path": sampler_path})}
            if export is not None:
                weights.update(self._download(export))
            return {STATE_FILE: _json({**refs, "path": state_path})}, weights, {"state": state_path, "sampler": sampler_path}

        return _Mapped(result, f"saving checkpoint {name}", self.base_url)

    def _fence(self, tc, sampler) -> None:
        """Return once the sampler save has its sequence number: a no-op run on the SDK's event
        loop after it (asyncio runs scheduled tasks' first steps in order, and the save takes its
        number in its first step). Without that loop in reach, the next call waits for the save's
        result instead (correct, one round trip less pipelined)."""
        run = getattr(getattr(tc, "holder", None), "run_coroutine_threadsafe", None)
        if run is None:
            self._barrier = sampler
            return

        async def queued_after_the_save() -> None:
            return None

        run(queued_after_the_save()).result(timeout=60)

    def _download(self, export) -> dict[str, bytes]:
        """The exported adapter's files (from the service's signed URLs), then the export deleted
        from the service. A service that offers no export, or files that still fail to download
        after retries, leave the checkpoint stored without them (with a warning): the state and
        sampler weights are already saved on the service, and a step's work is never thrown away
        for an optional copy."""
        import tinker

        try:
            path = export.result().path
        except (tinker.NotFoundError, tinker.BadRequestError, tinker.PermissionDeniedError):
            return {}
        rest = rest_client(self.base_url)
        urls = call(lambda: rest.get_external_weights_urls(path).result(), f"listing the files of {path}", self.base_url).urls
        try:
            files = {f"adapter/{name}": _fetch(url) for name, url in sorted(urls.items())}
        except DownloadFailed as exc:
            print(f"evsys: warning: checkpoint {path}: {exc}; stored without the adapter's files "
                  "(export downloads it from the service while the checkpoint is kept there)", file=sys.stderr, flush=True)
            files = {}
        try:
            rest.delete_checkpoint_from_tinker_path(path).result()
        except Exception:  # noqa: BLE001 - a leftover export only costs the service's storage until its TTL
            pass
        return files

    def save_state(self) -> dict[str, bytes]:
        return self.save_checkpoint_async(f"state-{uuid.uuid4().hex[:12]}").result()[0]

    def weights_blobs(self) -> dict[str, bytes]:
        return self.save_checkpoint_async(f"weights-{uuid.uuid4().hex[:12]}").result()[1]

    def info(self) -> dict:
        return {"lora_rank": self.lora_rank, "base_model": self.base_model, "device": "tinker", "service": self.base_url or "hosted"}

    def sampling_client(self):
        from .sampling import TinkerSamplingClient

        tc = self._client()
        return TinkerSamplingClient(call(lambda: tc.save_weights_and_get_sampling_client().result(), "saving weights for a sampler", self.base_url), self.base_url)


class DownloadFailed(Exception):
    """A signed URL that still failed after every retry."""


DOWNLOAD_RETRIES = (1.0, 4.0, 15.0)  # seconds slept before each retry


def _fetch(url: str) -> bytes:
    """One file from a signed URL (no key is sent), retried on transient failures: connection
    errors, timeouts, 408/429/5xx, and a body shorter than its length."""
    import http.client  # http.client and ssl: only a build that exports weights pays for them
    import urllib.error
    import urllib.request

    for attempt, pause in enumerate((0.0, *DOWNLOAD_RETRIES)):
        time.sleep(pause)
        try:
            with urllib.request.urlopen(url, timeout=300) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code} {exc.reason}"
            if exc.code not in (408, 429) and exc.code < 500:
                break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    raise DownloadFailed(f"downloading {url.split('?', 1)[0]} failed after {attempt + 1} tries ({error})")


def _json(value) -> bytes:
    return json.dumps(value, sort_keys=True).encode()
