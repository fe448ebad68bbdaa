"""Node kinds, one module each: its version, the function that builds its node, and its runner."""
