"""Data: sources, transforms, chat rendering with loss weights, token chunks."""
