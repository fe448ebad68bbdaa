"""A Tinker-protocol HTTP server for tests (server.py, wire.py) and the compute behind it
(local_compute.py: evsys's local backend on the tiny model). Test code, not a product."""
