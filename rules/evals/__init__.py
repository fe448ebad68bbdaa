"""Evaluation: benchmarks (tasks.jsonl), verifiers, pass@k."""
