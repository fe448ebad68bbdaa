"""Plugins: one registry per kind, the built-in kinds, plugin loading and code identity."""
