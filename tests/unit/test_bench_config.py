"""`hearth bench`'s options → BenchConfig, without starting a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hearth.bench import bench_report
from hearth.bench import run as bench_run
from hearth.bench.run import BenchConfig
from hearth.config import Settings


def test_nothing_chosen_keeps_the_config() -> None:
    assert BenchConfig().choose() == BenchConfig()
    assert BenchConfig.quick().choose(contenders=[], levels=[]) == BenchConfig.quick()


def test_choices_replace_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    chosen = BenchConfig.quick().choose(
        contenders=["echo", "monolith"],
        levels=[32, 1, 32, 8],
        requests=60,
        baseline=Path("base"),
        rollback=False,
    )
    assert chosen.contenders == ("echo", "monolith")
    assert chosen.levels == (1, 8, 32)  # sorted, each once
    assert chosen.requests == 60
    assert chosen.baseline == tmp_path / "base"  # absolute: the bench runs from elsewhere
    assert chosen.rollback == ()
    # what was not chosen stays the quick run's
    assert (chosen.rounds, chosen.warmup) == (BenchConfig.quick().rounds, 40)


def test_cli_passes_its_options_to_the_bench(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hearth.cli import app

    seen: dict[str, Any] = {}

    def fake_run_bench(config: BenchConfig, source: Settings, root: Path, say: Any) -> dict:
        seen.update(config=config, root=root)
        return {"fake": True}

    def fake_write(data: dict, out: Path) -> list[Path]:
        seen.update(data=data, out=out)
        return [out / "bench.md"]

    monkeypatch.setattr(bench_run, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench_report, "write", fake_write)
    argv = ["bench", "--quick", "--contender", "echo", "--concurrency", "8",
            "--concurrency", "1", "--no-rollback", "--out", "out", "--code", "code"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.contenders == ("echo",) and config.levels == (1, 8)
    assert config.rollback == () and config.requests == BenchConfig.quick().requests
    assert seen["root"] == tmp_path / "code" and seen["out"] == Path("out")
    assert seen["data"] == {"fake": True}
    assert "hearth bench: echo at c=[1, 8]" in result.output
    assert "bench.md" in result.output


def test_the_model_service_contenders_carry_the_internal_token(tmp_path: Path) -> None:
    from hearth.bench.contenders import build_server
    from hearth.serving.auth import INTERNAL_TOKEN_HEADER

    source = Settings(home=tmp_path)
    for name in ("model-batched", "monolith", "microservices"):
        server = build_server(name, source, tmp_path, tmp_path / "work")
        token = server.env["HEARTH_INTERNAL_TOKEN"]  # what the services require…
        if name == "model-batched":  # …and what the load sends to the model service alone
            assert (INTERNAL_TOKEN_HEADER, token) in server.endpoint.headers


def test_a_baseline_checkout_serves_with_its_own_params(tmp_path: Path) -> None:
    """Its params schema may be older than this checkout's: it reads its own params.yaml."""
    from hearth.bench.contenders import build_server

    source = Settings(home=tmp_path)
    base = tmp_path / "base"
    for name in ("monolith", "model-batched"):
        mine = build_server(name, source, tmp_path, tmp_path / "work")
        theirs = build_server(f"{name}@base", source, base, tmp_path / "work")
        assert mine.env["HEARTH_PARAMS_FILE"] == str(source.params_file.resolve())
        assert theirs.env["HEARTH_PARAMS_FILE"] == str(base / "params.yaml")
        assert theirs.env["HEARTH_DATA_DIR"] == mine.env["HEARTH_DATA_DIR"]  # the same data


def test_the_report_compares_two_workers_with_one_and_checks_the_counts(tmp_path: Path) -> None:
    def row(name: str, rps: float) -> dict:
        return {"contender": name, "concurrency": 32, "requests": 300, "ok": 300, "errors": {},
                "p50_ms": 1000 / rps, "p90_ms": 2000 / rps, "p99_ms": 3000 / rps, "rps": rps,
                "cpu_s_per_1000": 4.0, "retry_after": []}  # fmt: skip

    report = {
        "created": "2026-12-02T05:00:00+00:00", "seconds": 60.0, "notes": [], "rollback": {},
        "machine": {"cpu": "x86_64", "cpus": 2, "memory_gib": 8.0, "python": "3.11",
                    "system": "Linux", "load_average": [1.0, 1.0, 1.0]},
        "config": {"requests": 300, "rounds": 3, "warmup": 100},
        "contenders": [{"name": n, "label": n, "group": "hearth", "body": "transaction",
                        "note": ""} for n in ("monolith", "monolith-w2")],
        "results": [row("monolith", 100.0), row("monolith-w2", 170.0)],
        "memory_mib": {"monolith": 300.0, "monolith-w2": 600.0},
        "metrics_counted": {
            "monolith-w2": {"answered": 300, "counted": {"champion": 300}, "exact": True},
        },
        "limits": {"lines": []},
    }  # fmt: skip
    bench_report.write(report, tmp_path)
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["workers"][0]["rps_ratio"] == pytest.approx(1.7)
    judged = {t["target"]: t["met"] for t in written["targets"]}
    assert judged["`--workers 2` ≥ 1.6× one worker's req/s at c=32"] is True
    assert judged["monolith-w2: /metrics counts every answer once"] is True
    assert "| 32 | 100 | 170 | ×1.70 |" in (tmp_path / "bench.md").read_text()
    assert "Under wrk" not in (tmp_path / "bench.md").read_text()  # wrk did not run
    wrk_row = {"concurrency": 32, "requests": 9000, "errors": {}, "p50_ms": 30.0,
               "p90_ms": 40.0, "p99_ms": 90.0, "max_ms": 120.0, "seconds": 20.0}  # fmt: skip
    report["cross_check"] = {"tool": "wrk", "concurrency": 32, "seconds": 20.0, "rows": [
        wrk_row | {"contender": "monolith", "rps": 480.0, "cpu_s_per_1000": 2.4},
        wrk_row | {"contender": "monolith-w2", "rps": 648.0, "cpu_s_per_1000": 2.3}]}  # fmt: skip
    bench_report.write(report, tmp_path)
    assert (
        "Under wrk at c=32 (20 s each): 480 → 648 req/s, **×1.35**, CPU-s per 1,000 2.40 → 2.30."
        in (tmp_path / "bench.md").read_text()
    )
    for row, others in zip(report["cross_check"]["rows"], (0.1, 0.3), strict=True):
        row["others_cores"] = others  # what the rest of the machine kept busy meanwhile
    bench_report.write(report, tmp_path)
    assert (
        "2.40 → 2.30. Meanwhile the rest of the machine (neither the server nor wrk) kept "
        "0.10 → 0.30 cores busy." in (tmp_path / "bench.md").read_text()
    )


def test_long_cells_end_at_their_requests_or_their_seconds() -> None:
    full = BenchConfig()
    assert full.cell(1) == (10_000, 40.0 / full.rounds)  # 10 000 requests, or 40 s
    assert full.cell(32) == (20_000, 20.0 / full.rounds)  # sustained
    assert full.cell(8) == (full.requests, full.max_cell_s)
    assert full.choose(requests=60).cell(1) == (60, 40.0 / full.rounds)
    # rounds never fall short of the cell: 10 000 in 3 rounds is 3 × 3 334
    assert full.rounds == 3 and full.per_round(1) * full.rounds == 10_002
    assert full.per_round(8) * full.rounds == full.requests
    assert BenchConfig.quick().long_cells == ()  # the suite's run stays short
    assert full.choose(wrk_s=0).wrk_s == 0
    assert (full.wrk_concurrency, full.choose(wrk_concurrency=32).wrk_concurrency) == (1, 32)


def test_the_wrk_script_sends_a_new_transaction_per_request() -> None:
    from datetime import datetime

    from hearth.bench import wrk
    from hearth.bench.load import Endpoint

    txns = [
        {"transaction_id": f"t{i}", "timestamp": f"2026-01-0{i + 1}T00:00:00",
         "customer_id": f"c{i}", "amount": 1.5}
        for i in range(3)
    ]  # fmt: skip
    bodies = [json.dumps(t).encode() for t in txns]
    picks = wrk.templates(txns, bodies, "transaction")
    assert sorted(picks) == [f'"customer_id":"c{i}","amount":1.5' for i in range(3)]
    assert wrk.after(txns) == datetime(2026, 1, 4)
    endpoint = Endpoint("127.0.0.1", 1, "/predict", (("X-API-Key", "k"),))
    script = wrk.lua_script(endpoint, picks, True, datetime(2026, 1, 4), "wrk-")
    assert 'wrk.headers["X-API-Key"] = "k"' in script
    assert "local base = 1767484800" in script  # 2026-01-04T00:00:00Z
    assert "local step = 1.000000" in script  # one second apart unless told
    paced = wrk.lua_script(endpoint, picks, True, datetime(2026, 1, 4), "wrk-", step_s=58.25)
    assert "local step = 58.250000" in paced
    assert '"transaction_id":"\' .. id' in script and "%Y-%m-%dT%H:%M:%S" in script
    # A model server's bodies are sent as they are.
    assert sorted(wrk.templates(txns, bodies, "features")) == sorted(b.decode() for b in bodies)


def test_the_report_puts_wrk_beside_hearths_own_load(tmp_path: Path) -> None:
    def row(name: str, c: int, p50: float) -> dict:
        return {"contender": name, "concurrency": c, "requests": 10_000, "ok": 10_000,
                "errors": {}, "p50_ms": p50, "p90_ms": 2 * p50, "p99_ms": 9 * p50,
                "max_ms": 50 * p50, "rps": 1000 / p50, "cpu_s_per_1000": 0.8,
                "retry_after": [], "seconds": 20.0}  # fmt: skip

    report = {
        "created": "2026-12-02T05:00:00+00:00", "seconds": 60.0, "notes": [], "rollback": {},
        "machine": {"cpu": "x86_64", "cpus": 2, "memory_gib": 8.0, "python": "3.11",
                    "system": "Linux", "load_average": [1.0, 1.0, 1.0]},
        "config": {"requests": 300, "rounds": 3, "warmup": 100,
                   "long_cells": [[1, 10_000, 20.0]]},
        "contenders": [{"name": n, "label": n, "group": "hearth", "body": "transaction",
                        "note": ""} for n in ("echo", "monolith")],
        "results": [row("echo", 1, 0.2), row("monolith", 1, 0.9), row("monolith", 32, 30.0)],
        "memory_mib": {"echo": 30.0, "monolith": 600.0},
        "limits": {"lines": []},
        "cross_check": {"tool": "wrk", "concurrency": 1, "seconds": 10.0, "rows": [
            {"contender": "monolith", "concurrency": 1, "requests": 9000, "errors": {},
             "p50_ms": 1.0, "p90_ms": 1.5, "p99_ms": 2.5, "max_ms": 40.0, "rps": 900.0,
             "seconds": 10.0, "cpu_s_per_1000": 0.9}]},
    }  # fmt: skip
    bench_report.write(report, tmp_path)
    text = (tmp_path / "bench.md").read_text()
    assert "## Cross-check with an external load generator (wrk)" in text
    assert "| monolith | 10,000 / 9,000 | 0.90 / 1.00 | 8.10 / 2.50 | 45.0 / 40.0 |" in text
    assert "c=1: 10,000 requests or 20 s" in text
    judged = {t["target"]: t["met"] for t in json.loads((tmp_path / "bench.json").read_text())[
        "targets"]}  # fmt: skip
    assert judged["monolith p50 at c=1 ≤ 5× the Starlette echo's"] is True  # ×4.5
    assert judged["monolith CPU per request at c=32 ≤ 1.0 ms"] is True
    assert judged["monolith: p99 ≤ 3× p50 at c=1 (≥ 10 000 requests)"] is False  # ×9
    # a cell cut short by its seconds is shown, not judged
    report["results"][1] = {**report["results"][1], "requests": 8_529, "ok": 8_529}
    bench_report.write(report, tmp_path)
    targets = json.loads((tmp_path / "bench.json").read_text())["targets"]
    short = next(t for t in targets if t["target"].startswith("monolith: p99"))
    assert short["met"] is None and "over only 8,529 requests" in short["measured"]
    report.pop("cross_check")
    bench_report.write(report, tmp_path)
    assert "(not measured: not run)" in (tmp_path / "bench.md").read_text()


def test_the_redis_contender_is_the_monolith_on_a_redis_server_of_its_own(
    tmp_path: Path,
) -> None:
    from hearth.bench.contenders import RedisBackedServer, build_server, spec_of
    from hearth.launch.topologies import serve_command

    source = Settings(home=tmp_path)
    server = build_server("monolith-redis", source, tmp_path, tmp_path / "work")
    assert isinstance(server, RedisBackedServer)
    assert server.command() == serve_command("monolith", server.port, workers=1)
    assert "HEARTH_STORE_BACKEND" not in server.env  # set by start(), once its Redis runs
    base = build_server("monolith-redis@base", source, tmp_path / "base", tmp_path / "work")
    assert isinstance(base, RedisBackedServer) and spec_of(base.spec.name).group == "store"


def test_a_contender_whose_server_is_not_installed_is_left_out_with_a_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bench_run.shutil, "which", lambda binary: None)
    names, notes = bench_run._runnable(["echo", "monolith", "monolith-redis"])
    assert names == ["echo", "monolith"]
    assert notes == [
        "monolith-redis was left out: redis-server is not installed (`make system-deps`, "
        "or apt-get install redis-server)."
    ]
    monkeypatch.setattr(bench_run.shutil, "which", lambda binary: f"/usr/bin/{binary}")
    assert bench_run._runnable(["monolith-redis"]) == (["monolith-redis"], [])


def test_the_report_compares_the_redis_store_with_sqlite(tmp_path: Path) -> None:
    def row(name: str, c: int, rps: float, cpu: float) -> dict:
        return {"contender": name, "concurrency": c, "requests": 300, "ok": 300, "errors": {},
                "p50_ms": 1000 / rps, "p90_ms": 2000 / rps, "p99_ms": 3000 / rps, "rps": rps,
                "cpu_s_per_1000": cpu, "retry_after": []}  # fmt: skip

    report = {
        "created": "2026-12-03T07:00:00+00:00", "seconds": 60.0, "rollback": {},
        "notes": ["microservices was left out: redis-server is not installed."],
        "machine": {"cpu": "x86_64", "cpus": 2, "memory_gib": 8.0, "python": "3.11",
                    "system": "Linux", "load_average": [1.0, 1.0, 1.0]},
        "config": {"requests": 300, "rounds": 3, "warmup": 100},
        "contenders": [{"name": n, "label": n, "group": g, "body": "transaction", "note": ""}
                       for n, g in (("monolith", "hearth"), ("monolith-redis", "store"))],
        "results": [row("monolith", 1, 700.0, 1.4), row("monolith-redis", 1, 560.0, 1.75),
                    row("monolith", 32, 2000.0, 0.5), row("monolith-redis", 32, 1600.0, 0.7)],
        "memory_mib": {"monolith": 600.0, "monolith-redis": 650.0},
        "metrics_counted": {}, "limits": {"lines": []},
    }  # fmt: skip
    bench_report.write(report, tmp_path)
    text = (tmp_path / "bench.md").read_text()
    assert "## The online store in Redis" in text
    assert "| 1 | 700 | 560 | ×0.80 | 1.43 → 1.79 | 1.40 → 1.75 | 0 |" in text
    assert "| 32 | 2,000 | 1,600 | ×0.80 | 0.50 → 0.62 | 0.50 → 0.70 | 0 |" in text
    assert "- microservices was left out: redis-server is not installed." in text


def test_machine_busy_seconds_count_this_processs_work() -> None:
    # A lower bound only: everyone else's work on this shared machine counts as well.
    import time

    from hearth.bench.latency_stats import machine_busy_s

    before, started = machine_busy_s(), time.process_time()
    while time.process_time() - started < 0.3:  # 0.3 s of this process's CPU
        pass
    assert machine_busy_s() - before >= 0.25
