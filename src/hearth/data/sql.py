"""SQL text for DuckDB: literals and identifiers quoted safely."""

from __future__ import annotations


def lit(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A quoted SQL identifier (``timestamp`` is a keyword)."""
    return '"' + name.replace('"', '""') + '"'


def in_list(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(lit(v) for v in values) + ")"
