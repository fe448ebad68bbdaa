"""evsys_build: the generic build engine (hashing, store, graph, planner, executor, CLI).

Knows nothing about ML: rules plug in through `evsys_build.project`.
"""

__version__ = "0.1.0"
