"""Config: the pydantic schema, YAML with file:line marks, one-line errors, loading, validation."""
