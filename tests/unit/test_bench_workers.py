"""The workers' target of `hearth bench`: judged under wrk at c=32 where it ran (the bench's
own Python client shares the two cores with the servers), else on the bench's own figure."""

from __future__ import annotations

import calendar
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hearth.bench import run, wrk
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


def _wrk(name: str, rps: float, seconds: float = 10.0, **more: Any) -> dict[str, Any]:
    return {"contender": name, "concurrency": 32, "requests": int(rps * seconds), "errors": {},
            "p50_ms": 10.0, "p90_ms": 15.0, "p99_ms": 20.0, "max_ms": 30.0, "rps": rps,
            "seconds": seconds, "last_s": 100, "wrk_cpu_s": 0.5, "cpu_s_per_1000": 0.5,
            "others_cores": 0.1} | more  # fmt: skip


def test_rounds_pool_into_one_row_per_contender() -> None:
    rows = [
        _wrk("monolith", 1000, p50_ms=9.0, max_ms=40.0, last_s=200, errors={"timeout": 1}),
        _wrk("monolith", 2000, seconds=5.0, p50_ms=12.0, cpu_s_per_1000=0.8, others_cores=0.4),
        _wrk("monolith", 1500, p50_ms=10.0, errors={"timeout": 2, "read": 1}),
    ]
    row = wrk.pooled(rows)
    assert row["requests"] == 10_000 + 10_000 + 15_000
    assert row["seconds"] == 25.0
    assert row["rps"] == pytest.approx((10_000 + 10_000 + 15_000) / 25)  # not the mean of rps
    assert row["p50_ms"] == 10.0 and row["max_ms"] == 40.0 and row["last_s"] == 200
    assert row["errors"] == {"timeout": 3, "read": 1}
    assert row["cpu_s_per_1000"] == pytest.approx((0.5 * 25_000 + 0.8 * 10_000) / 35_000)
    assert row["others_cores"] == pytest.approx((0.1 * 20 + 0.4 * 5) / 25)


def _rounds_report(ratios: list[float]) -> dict[str, Any]:
    report = _report(own=(2000, 2800), under_wrk=None)
    rounds = [
        {"monolith": _wrk("monolith", 2000), "monolith-w2": _wrk("monolith-w2", 2000 * r)}
        for r in ratios
    ]
    report["cross_check"]["workers"] = wrk.rounds_run(32, 10, ["monolith", "monolith-w2"], rounds)
    return report


def test_rounds_are_judged_on_the_median_of_their_ratios() -> None:
    verdict = _verdict(_rounds_report([1.70, 1.50, 1.66, 1.72, 1.64]))
    assert verdict["met"] is True  # one slow round does not decide it
    assert verdict["measured"].startswith("×1.66 under wrk (median of 5 rounds, ×1.50–1.72)")
    missed = _verdict(_rounds_report([1.70, 1.50, 1.55, 1.72, 1.58]))
    assert missed["met"] is False  # nor do two fast ones
    assert missed["measured"].startswith("×1.58 under wrk (median of 5 rounds")


def test_the_report_lists_every_rounds_ratio() -> None:
    cross = _rounds_report([1.7, 1.5, 1.6])["cross_check"]
    lines = [line for line in wrk.scaling(cross, "monolith", "monolith-w2") if line]
    assert lines == [
        "Under wrk at c=32 (3 rounds of 10 s each, alternating which goes first): "
        "2,000 → 3,200 req/s over all rounds, **×1.60** (the median of the rounds' "
        "×1.70, 1.50, 1.60; ×1.50–1.70), CPU-s per 1,000 0.50 → 0.50. Meanwhile the rest of "
        "the machine (neither the server nor wrk) kept 0.10 → 0.10 cores busy."
    ]


def test_rounds_alternate_and_never_reuse_a_transaction_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[str, str, datetime]] = []

    def fake_row(name: str, server: Any, workload: Any, start: datetime, c: int,
                 seconds: float, *_: Any, prefix: str = "") -> dict[str, Any]:  # fmt: skip
        calls.append((name, prefix, start))
        last = calendar.timegm(start.timetuple()) + 3600
        return _wrk(name, 1000 if name == "monolith" else 1700, seconds, last_s=last)

    monkeypatch.setattr(run, "_wrk_row", fake_row)
    config = run.BenchConfig(workers_rounds=4, wrk_s=2.0)
    servers: dict[str, Any] = {"monolith": object(), "monolith-w2": object()}
    out = run._workers_rounds(["monolith", "monolith-w2"], servers, None, datetime(2030, 1, 1),  # type: ignore[arg-type]
                              tmp_path, config, run.Progress(say=lambda _: None))  # fmt: skip
    assert [name for name, _, _ in calls] == ["monolith", "monolith-w2", "monolith-w2",
        "monolith", "monolith", "monolith-w2", "monolith-w2", "monolith"]  # fmt: skip
    per_server = {
        name: [p for n, p, _ in calls if n == name] for name in ("monolith", "monolith-w2")
    }
    assert all(len(set(prefixes)) == 4 for prefixes in per_server.values())
    starts = [s for _, _, s in calls]
    assert starts[2] > starts[1] and starts[4] > starts[3] and starts[6] > starts[5]  # later days
    assert out["rounds"] == 4 and out["ratios"] == [1.7] * 4 and out["seconds"] == 2.0
    assert [r["contender"] for r in out["rows"]] == ["monolith", "monolith-w2"]


def test_the_workers_rounds_run_with_the_other_contenders_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Fake:
        stopped = False

        def stop(self) -> None:
            self.stopped = True

    servers: dict[str, Any] = {n: Fake() for n in ("echo", "monolith", "monolith-w2", "mlflow")}
    seen: list[tuple[int, str, list[str]]] = []

    def fake_row(name: str, server: Any, workload: Any, start: datetime, c: int,
                 *_: Any, prefix: str = "") -> dict[str, Any]:  # fmt: skip
        seen.append((c, name, sorted(n for n, s in servers.items() if s.stopped)))
        return _wrk(name, 1000, last_s=calendar.timegm(start.timetuple()) + 60, concurrency=c)

    monkeypatch.setattr(run, "_wrk_row", fake_row)
    monkeypatch.setattr(wrk, "available", lambda: True)
    workload = type("W", (), {"transactions": [{"timestamp": "2030-01-01T00:00:00"}]})()
    config = run.BenchConfig(workers_rounds=2, wrk_s=1.0)
    cross = run._cross_check(servers, workload, tmp_path, config, run.Progress(say=lambda _: None))  # type: ignore[arg-type]
    assert [(c, n, stopped) for c, n, stopped in seen if c == 1] == [
        (1, n, []) for n in servers
    ]  # the cross-check drives every contender, all of them up
    rounds = [stopped for c, _, stopped in seen if c == 32]
    assert len(rounds) == 4 and all(stopped == ["echo", "mlflow"] for stopped in rounds)
    assert cross["workers"]["rounds"] == 2
