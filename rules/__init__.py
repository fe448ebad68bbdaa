"""evsys_rules (the repository's `rules/` folder): the ML frontend of the evsys engine.

config/ loads and checks a config; plugins/ holds the registries; compile.py wires the node kinds
of nodes/ (one module each) over data/, evals/, algorithms/, backends/ and models/; outputs/ writes
the run dir and the `evsys show` previews. Importing this package stays light: torch and
transformers load only inside nodes that run. docs/architecture.md has the map.
"""
