"""Markdown pieces the bench reports share: a table row, a table, a time in seconds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def md_row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_table(head: Sequence[str], align: str, rows: Iterable[Iterable[object]] = ()) -> list[str]:
    """A Markdown table: `align` has a letter per column, ``l`` (left) or ``r`` (right)."""
    rule = "".join("|---:" if a == "r" else "|---" for a in align) + "|"
    return [md_row(head), rule, *(md_row(r) for r in rows)]


def seconds(value: float | None, sign: str = "") -> str:
    return "–" if value is None else f"{value:{sign}.2f}"
