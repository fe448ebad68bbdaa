"""Unbiased pass@k (Chen et al. 2021) and its mean over a benchmark's tasks."""

from __future__ import annotations

from evsys_build.errors import ConfigError


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) for n samples of which c are correct, in stable product form."""
    if n < 1 or k < 1:
        raise ConfigError(f"pass@k needs n >= 1 and k >= 1, got n={n}, k={k}")
    if not 0 <= c <= n:
        raise ConfigError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if k > n:
        raise ConfigError(f"pass@{k} needs at least {k} samples per task, got {n} "
                          f"(set num_samples >= {k})")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def aggregate(per_task_correct: list[list[bool]], ks: list[int]) -> dict[str, float]:
    """`{"pass@k": mean over tasks}` for each k; every task needs at least max(ks) samples."""
    if not per_task_correct:
        raise ConfigError("pass@k over no tasks (the benchmark's tasks.jsonl has no tasks)")
    out: dict[str, float] = {}
    for k in ks:
        total = 0.0
        for index, samples in enumerate(per_task_correct):
            n = len(samples)
            if k > n:
                raise ConfigError(f"pass@{k} needs num_samples >= {k}, but task #{index} has {n} "
                                  f"sample(s) (raise num_samples to at least {k} or drop pass@{k})")
            total += pass_at_k(n, sum(bool(s) for s in samples), k)
        out[f"pass@{k}"] = total / len(per_task_correct)
    return out
