"""Algorithms: training recipes that run on any backend (sft)."""
