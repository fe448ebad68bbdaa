"""Backends: the Tinker-shaped protocol, the local torch backend, and hosted Tinker."""
