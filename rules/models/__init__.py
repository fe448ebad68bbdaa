"""Models: the tiny offline Qwen3 model, and resolving a model name to its files."""
