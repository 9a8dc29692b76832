"""Fixtures of the KeNet tests: the tiny encoder (`tiny_encoder`) lives in the top-level conftest."""
