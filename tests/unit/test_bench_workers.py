"""The workers' target of `hearth bench`: judged under wrk at c=32 where it ran (the bench's
own Python client shares the two cores with the servers), else on the bench's own figure."""

from __future__ import annotations

from typing import Any

from hearth.bench import wrk
from hearth.bench.bench_figures import Figures
from hearth.bench.bench_report import targets

TARGET = "`--workers 2` ≥ 1.6× one worker's req/s at c=32"


def _row(name: str, rps: float) -> dict[str, Any]:
    return {"contender": name, "concurrency": 32, "rps": rps, "p50_ms": 10.0,
            "cpu_s_per_1000": 0.5, "errors": {}}  # fmt: skip


def _report(own: tuple[float, float], under_wrk: tuple[float, float] | None) -> dict[str, Any]:
    cross: dict[str, Any] = {"tool": "wrk", "concurrency": 1, "seconds": 10, "rows": []}
    if under_wrk is not None:
        one, two = under_wrk
        cross["workers"] = {"concurrency": 32, "seconds": 10, "rows": [
            {"contender": "monolith", "rps": one, "cpu_s_per_1000": 0.5, "errors": {}},
            {"contender": "monolith-w2", "rps": two, "cpu_s_per_1000": 0.6, "errors": {}},
        ]}  # fmt: skip
    return {
        "results": [_row("monolith", own[0]), _row("monolith-w2", own[1])],
        "contenders": [{"name": n, "label": n} for n in ("monolith", "monolith-w2")],
        "cross_check": cross,
    }


def _verdict(report: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in targets(Figures(report)) if t["target"] == TARGET)


def test_judged_under_wrk_where_it_ran_with_the_own_figure_beside_it() -> None:
    met = _verdict(_report(own=(2000, 2800), under_wrk=(2000, 3300)))
    assert met["met"] is True
    assert met["measured"].startswith("×1.65 under wrk, 0 errors (judged); ×1.40 with")
    missed = _verdict(_report(own=(2000, 3400), under_wrk=(2000, 3000)))
    assert missed["met"] is False  # the own client's ×1.70 does not rescue it


def test_judged_on_the_benchs_own_figure_without_wrk() -> None:
    verdict = _verdict(_report(own=(2000, 3300), under_wrk=None))
    assert verdict["met"] is True and "wrk" not in verdict["measured"]


def test_the_report_states_both_wrk_runs() -> None:
    cross = _report(own=(1, 1), under_wrk=(2000, 3300))["cross_check"]
    cross["rows"] = [
        {"contender": "monolith", "rps": 700, "cpu_s_per_1000": 1.3, "errors": {}},
        {"contender": "monolith-w2", "rps": 800, "cpu_s_per_1000": 1.2, "errors": {}},
    ]
    lines = [line for line in wrk.scaling(cross, "monolith", "monolith-w2") if line]
    assert lines[0].startswith("Under wrk at c=1 (10 s each): 700 → 800 req/s, **×1.14**")
    assert lines[1].startswith("Under wrk at c=32 (10 s each): 2,000 → 3,300 req/s, **×1.65**")
