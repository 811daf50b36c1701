"""The batched fitting engine (functional core)."""
