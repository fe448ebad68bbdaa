"""rules: the ML rules that compile an evsys config into nodes and run them.

Importing this package stays light: torch/transformers load only inside nodes that run.
"""
