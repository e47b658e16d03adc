"""`hearth soak`'s options → SoakConfig, the verdict's criteria and the report, without a
server (the soak itself: tests/integration/test_soak.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from hearth.bench import soak as soak_module
from hearth.bench import soak_report
from hearth.bench.soak import (
    SoakConfig,
    TransactionStream,
    clock_summary,
    criteria,
    kept_up,
)
from hearth.bench.workload import DataPace, data_pace
from hearth.config import Settings


def _window(i: int, p99: float, rss: float, **statuses: int) -> dict[str, Any]:
    statuses = {"200": 100, **statuses}
    return {"window": i, "requests": sum(statuses.values()), "rps": 1.7, "p50_ms": 5.0,
            "p99_ms": p99, "max_ms": p99, "client_lag_p99_ms": 1.0,
            "errors": sum(n for s, n in statuses.items() if s != "200"),
            "statuses": statuses, "rss_mib": rss, "server_cores": 0.5}  # fmt: skip


def test_criteria_judge_errors_p99_drift_and_rss_growth() -> None:
    good = [_window(1, 10.0, 600.0), _window(2, 99.0, 700.0), _window(3, 15.0, 659.0)]
    assert [c["met"] for c in criteria(good, SoakConfig())] == [True, True, True]
    bad = [_window(1, 10.0, 600.0), _window(2, 16.0, 661.0, **{"503": 2, "timeout": 1})]
    met = {c["criterion"]: (c["value"], c["met"]) for c in criteria(bad, SoakConfig())}
    assert met["errors"] == (3, False)
    assert met["p99 last window / first window"] == (1.6, False)
    assert met["RSS growth, end of first window → end of last"] == (pytest.approx(0.1017), False)


def test_an_open_loop_step_kept_up_without_errors_or_a_growing_backlog() -> None:
    def quarters(*p50: float, **statuses: int) -> list[dict[str, Any]]:
        return [{**_window(i, 20.0, 600.0, **statuses), "p50_ms": p} for i, p in enumerate(p50)]

    assert kept_up(quarters(8.0, 9.0, 30.0, 60.0))  # noise: within 2x + 100 ms
    assert not kept_up(quarters(8.0, 150.0, 400.0, 900.0))  # the backlog grows
    assert not kept_up(quarters(8.0, 8.0, 8.0, 8.0, **{"503": 1}))  # one error


def test_every_body_is_a_new_transaction_at_the_time_given() -> None:
    base = {"transaction_id": "t", "customer_id": "c1", "amount": 12.5, "timestamp": "x"}
    stream = TransactionStream([base])
    first, second = (json.loads(stream.body(1_800_000_000.0 + i)) for i in range(2))
    assert first["transaction_id"] != second["transaction_id"]
    assert first["transaction_id"].startswith("soak-")
    assert (first["timestamp"], second["timestamp"]) == (
        "2027-01-15T08:00:00",
        "2027-01-15T08:00:01",
    )
    assert first["customer_id"] == "c1" and first["amount"] == 12.5
    assert base["transaction_id"] == "t"  # the pool is not modified


def test_the_data_clock_replays_the_population_at_its_own_pace_never_ahead_of_the_wall() -> None:
    base = {"transaction_id": "t", "customer_id": "c1", "amount": 12.5, "timestamp": "x"}
    pace = DataPace(end_s=1_800_000_000.0, gap_s=30.0, transactions=1000, customers=50)
    stream = TransactionStream([base], "data", pace)
    wall = 1_900_000_000.0  # the send time: far after the data
    first, second = (json.loads(stream.body(wall)) for _ in range(2))
    assert (first["timestamp"], second["timestamp"]) == (
        "2027-01-15T08:00:30",  # the data's end + one gap, whatever the send time
        "2027-01-15T08:01:00",
    )
    stream.unsend(1)  # made, never sent: the next body takes its id and date again
    assert json.loads(stream.body(wall)) == second
    # A date never passes the send time (the server refuses the future).
    assert json.loads(stream.body(1_800_000_010.0))["timestamp"] == "2027-01-15T08:00:10"
    with pytest.raises(ValueError, match="needs the data's pace"):
        TransactionStream([base], "data")
    with pytest.raises(ValueError, match="expected one of data, wall"):
        TransactionStream([base], "sundial", pace)


def test_the_data_pace_is_the_span_over_the_count(tmp_path: Path) -> None:
    times = pd.to_datetime(["2026-01-01 00:00:00", "2026-01-01 00:01:00", "2026-01-01 00:03:00"])
    frame = pd.DataFrame({"timestamp": times, "customer_id": ["c1", "c2", "c1"]})
    frame.to_parquet(tmp_path / "transactions.parquet")
    pace = data_pace(tmp_path)
    assert pace == DataPace(end_s=times[-1].timestamp(), gap_s=90.0, transactions=3, customers=2)
    # Replayed to one of its two customers, the stream slows down: that one keeps its pace.
    assert (pace.step_s(2), pace.step_s(1)) == (90.0, 180.0)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"duration_s": 600.0, "window_s": 60.0, "capacity_s": 20.0, "fraction": 0.8,
              "clock": "data"}),
        (["--clock", "wall"], {"clock": "wall"}),
        (["--duration", "60"], {"duration_s": 60.0, "window_s": 30.0, "capacity_s": 6.0}),
        (["--duration", "300", "--window", "30", "--fraction", "0.5"],
         {"duration_s": 300.0, "window_s": 30.0, "fraction": 0.5}),
        (["--rate", "40"], {"rate": 40.0, "probe_fractions": ()}),
    ],
)  # fmt: skip
def test_cli_options_make_the_config(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: dict
) -> None:
    from hearth.cli import app

    seen: dict[str, Any] = {}

    def fake_run_soak(config: SoakConfig, source: Settings, root: Path, say: Any) -> dict:
        seen["config"] = config
        return {"passed": True, "criteria": []}

    monkeypatch.setattr(soak_module, "run_soak", fake_run_soak)
    monkeypatch.setattr(soak_report, "write", lambda data, out: [out / "soak.md"])
    result = CliRunner().invoke(app, ["soak", *argv])
    assert result.exit_code == 0, result.output
    for key, value in expected.items():
        assert getattr(seen["config"], key) == value, key


def test_cli_exits_1_when_a_criterion_fails(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hearth.cli import app

    failed = {"passed": False, "criteria": [{"criterion": "errors", "met": False}]}
    monkeypatch.setattr(soak_module, "run_soak", lambda *a: failed)
    monkeypatch.setattr(soak_report, "write", lambda data, out: [])
    result = CliRunner().invoke(app, ["soak", "--duration", "60"])
    assert result.exit_code == 1 and "FAIL: errors" in result.output


def test_cli_refuses_an_unknown_clock(settings: Settings) -> None:
    from hearth.cli import app

    result = CliRunner().invoke(app, ["soak", "--clock", "sundial"])
    assert result.exit_code != 0 and "--clock 'sundial' is not one of data, wall" in result.output


def test_the_report_names_the_errors_and_judges(tmp_path: Path) -> None:
    windows = [_window(1, 10.0, 600.0), _window(2, 12.0, 601.0, **{"503": 2})]
    config = SoakConfig.short(60.0)
    report = {
        "created": "now", "machine": {"cpus": 2, "cpu": "x86_64", "memory_gib": 8,
        "python": "3.11", "system": "Linux", "load_average": [1.0, 1.0, 1.0]},
        "load_average_after": [1.0, 1.0, 1.0], "config": config.__dict__,
        "capacity": {"rps": 100.0, "method": "open loop", "kept_up": True, "probes": [
            {"rate_rps": 100.0, "kept_up": True, "p50_first_ms": 5.0, "p50_last_ms": 6.0,
             "p99_ms": 20.0, "errors": 0},
            {"rate_rps": 125.0, "kept_up": False, "p50_first_ms": 9.0, "p50_last_ms": 900.0,
             "p99_ms": 2000.0, "errors": 0}],
            "closed_loop": {"rps": 125.0, "concurrency": 16, "seconds": 8.0, "p50_ms": 5.0,
                            "p99_ms": 9.0, "errors": 0, "server_cores": 0.9}},
        "rate_rps": 80.0, "serving_processes": 2, "windows": windows,
        "clock": clock_summary("data", DataPace(1_800_000_000.0, 30.0, 1000, 50), 80.0),
        "rss_series": [[0.0, 600.0], [30.0, 600.0], [60.0, 601.0]], "rss_start_mib": 600.0,
        "criteria": criteria(windows, config), "seconds": 80.0,
    }  # fmt: skip
    report["passed"] = all(c["met"] for c in report["criteria"])
    paths = soak_report.write(report, tmp_path)
    text = paths[0].read_text()
    assert "| 2 (503: 2) |" in text and "**FAIL: errors**" in text
    assert "open loop at 125 req/s" in text and "**fell behind**" in text
    assert "Capacity (open loop): **100 req/s**" in text
    assert "dated 30.0 s after the one before, the data's own pace" in text
    assert "from its last transaction (2027-01-15T08:00:00+00:00): 2400x faster" in text
    assert paths[2].stat().st_size > 0
