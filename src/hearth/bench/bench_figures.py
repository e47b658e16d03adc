"""Look-ups over a bench report's results, and how its figures are written."""

from __future__ import annotations

import math
from typing import Any

Row = dict[str, Any]


class Figures:
    """Look-ups over a report's results: one row per (contender, concurrency)."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report
        self.rows: dict[tuple[str, int], Row] = {
            (r["contender"], r["concurrency"]): r for r in report["results"]
        }
        self.names = [c["name"] for c in report["contenders"]]
        self.labels = {c["name"]: c["label"] for c in report["contenders"]}
        self.levels = sorted({r["concurrency"] for r in report["results"]})

    def get(self, name: str, level: int, key: str) -> float:
        row = self.rows.get((name, level))
        return float(row.get(key, math.nan)) if row is not None else math.nan

    def errors(self, name: str, level: int) -> int:
        row = self.rows.get((name, level))
        return sum(row["errors"].values()) if row is not None else 0


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def fmt(value: float, digits: int = 2, prefix: str = "") -> str:
    return "–" if math.isnan(value) else f"{prefix}{value:,.{digits}f}"
