"""ETL and training benchmark: rows/s and peak memory by size, and the orchestration tax.

    python benchmarks/bench_pipeline.py                      # 10^5, 10^6, 10^7 rows
    python benchmarks/bench_pipeline.py --sizes 100000 --skip-training

Each size runs in its own subprocess so that its peak RSS (DuckDB's native memory included)
is its own. The training part trains the same configuration on the same 10^5-row features
three ways in one run — the bare loop, with MLflow tracking, and inside a Prefect flow with
MLflow — and prints the ratios against the bare loop. Figures are ratios against baselines
taken in the same run, never absolute promises: this machine is shared and noisy.
Writes reports/bench_pipeline.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DAYS = 30
TX_PER_CUSTOMER_DAY = 1.5


def _data_params(rows: int) -> Any:
    from hearth.params import DataParams

    customers = max(50, round(rows / (DAYS * TX_PER_CUSTOMER_DAY)))
    return DataParams(days=DAYS, customers=customers, tx_per_customer_day=TX_PER_CUSTOMER_DAY)


def measure_size(rows: int, workdir: Path) -> dict[str, Any]:
    """Generate then ETL about `rows` transactions in `workdir`; runs in a child process."""
    from hearth.data.etl import run_etl
    from hearth.data.generate import generate
    from hearth.params import Params

    params = Params(data=_data_params(rows))
    raw, processed, quarantine = workdir / "raw", workdir / "processed", workdir / "quarantine"
    t0 = time.perf_counter()
    gen = generate(raw, params.data)
    t1, c1 = time.perf_counter(), time.process_time()
    report = run_etl(raw, processed, quarantine, params)
    t2, c2 = time.perf_counter(), time.process_time()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rows": gen.transactions,
        "generate_s": round(t1 - t0, 2),
        "generate_rows_per_s": round(gen.transactions / (t1 - t0)),
        "etl_s": round(t2 - t1, 2),
        "etl_rows_per_s": round(report.rows_in / (t2 - t1)),
        # CPU seconds of every thread: on a shared, loaded machine steadier than wall time.
        "etl_cpu_s": round(c2 - c1, 1),
        "rows_clean": report.rows_clean,
        "rows_quarantined": report.rows_quarantined,
        "raw_mib": round(sum(f.stat().st_size for f in raw.rglob("*.csv")) / 2**20, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }


def run_size_in_child(rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hearth-bench-") as tmp:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(rows), "--workdir", tmp],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode != 0:
        raise SystemExit(f"size {rows} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def stack_prefect_server(settings: Any) -> Iterator[str]:
    """`hearth up`'s Prefect server alone (its command, environment and pid-file record),
    so that flows find it as they find `hearth up`'s; its API URL, stopped on the way out."""
    from hearth.launch.launcher import launched
    from hearth.stack.services import Stack, record

    stack = Stack(settings)
    service = stack.prefect_server()
    log = settings.home_abs / "logs" / f"{service.name}.log"
    env = {**stack.env(), **service.env}
    with launched(service.name, service.cmd, env, Path.cwd(), log, service.check,
                  service.timeout_s) as server:  # fmt: skip
        record(settings.home_abs, [], service, server.pid, log)
        yield stack.prefect_api


def measure_training(workdir: Path, epochs: int, rounds: int = 3) -> dict[str, Any]:
    """The same training three ways on the same features; ratios against the bare loop."""
    from hearth.config import HearthContext, Settings
    from hearth.data.etl import run_etl
    from hearth.data.generate import generate
    from hearth.launch.launcher import free_port
    from hearth.model.experiment import TrainConfig
    from hearth.model.train import load_splits, train_model
    from hearth.params import Params
    from hearth.stack.prefect_api import flows_in_this_process

    settings = Settings(home=workdir / ".hearth", data_dir=workdir / "data",
                        reports_dir=workdir / "reports", prefect_port=free_port())  # fmt: skip
    settings.apply()
    params = Params(data=_data_params(100_000))
    generate(settings.raw_dir, params.data)
    run_etl(settings.raw_dir, settings.processed_dir, settings.quarantine_dir, params)
    ctx = HearthContext(settings, params)
    config = TrainConfig(epochs=epochs, patience=epochs)  # no early stop: equal work each way
    splits = load_splits(settings.processed_dir)

    from prefect import flow

    from hearth import steps
    from hearth.lineage import Lineage

    lineage = Lineage(data_version="bench", git_commit="bench", validation="bench",
                      experiment_file="bench")  # fmt: skip

    @flow(name="bench-train")
    def bench_flow() -> None:
        steps.train_run(ctx, "bench-prefect", config, "bench", lineage)

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    # As with `hearth up`: Prefect's server runs, and the flows run as Hearth's entry points
    # run them (on that server). The first flow of the process is reported apart. Then the
    # three ways run interleaved, round after round, and each keeps its median, so one-off
    # costs (MLflow creating its database) and this shared machine's drifting load hit
    # every way alike instead of biasing one.
    with stack_prefect_server(settings) as api, flows_in_this_process(settings) as used:
        assert used == api, f"the flows report to {used}, not to the stack's server {api}"
        with_prefect_first = timed(bench_flow)
        ways: dict[str, list[float]] = {"bare": [], "mlflow": [], "prefect": []}
        for _ in range(rounds):
            ways["bare"].append(timed(lambda: train_model(splits, config, params.thresholds)))
            ways["mlflow"].append(
                timed(lambda: steps.train_run(ctx, "bench-mlflow", config, "bench", lineage))
            )
            ways["prefect"].append(timed(bench_flow))
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # the runs' last log lines, before their server stops
    bare, with_mlflow, with_prefect = (statistics.median(ways[k]) for k in ways)
    return {
        "train_rows": len(splits.train),
        "epochs": epochs,
        "rounds": rounds,
        "bare_s": round(bare, 2),
        "mlflow_s": round(with_mlflow, 2),
        "prefect_mlflow_first_s": round(with_prefect_first, 2),
        "prefect_mlflow_s": round(with_prefect, 2),
        "ratio_mlflow": round(with_mlflow / bare, 3),
        "ratio_prefect_mlflow_first": round(with_prefect_first / bare, 3),
        "ratio_prefect_mlflow": round(with_prefect / bare, 3),
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Hearth pipeline benchmark",
        "",
        f"Machine: {result['machine']}",
        "",
        "## Generation and ETL",
        "",
        "| rows | generate rows/s | ETL rows/s | ETL s | ETL CPU s | quarantined | raw MiB "
        "| peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["sizes"]:
        lines.append(
            f"| {r['rows']:,} | {r['generate_rows_per_s']:,} | {r['etl_rows_per_s']:,} "
            f"| {r['etl_s']} | {r.get('etl_cpu_s', '')} | {r['rows_quarantined']:,} "
            f"| {r['raw_mib']} | {r['peak_rss_mib']} |"
        )
    t = result.get("training")
    if t:
        lines += [
            "",
            f"## Training overhead ({t['train_rows']:,} training rows, {t['epochs']} epochs, "
            f"median of {t.get('rounds', 1)} interleaved rounds)",
            "",
            "| how | seconds | × bare loop |",
            "|---|---:|---:|",
            f"| bare training loop | {t['bare_s']} | 1.000 |",
            f"| + MLflow tracking and model logging | {t['mlflow_s']} | {t['ratio_mlflow']} |",
            f"| + Prefect flow (`hearth up`'s server), the process's first | "
            f"{t['prefect_mlflow_first_s']} | {t['ratio_prefect_mlflow_first']} |",
            f"| + Prefect flow (`hearth up`'s server) | {t['prefect_mlflow_s']} "
            f"| {t['ratio_prefect_mlflow']} |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure_size(args.child, args.workdir)))
        return

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    result: dict[str, Any] = {"machine": machine, "sizes": []}
    for rows in args.sizes:
        print(f"[bench] {rows:,} rows: generate + ETL …", flush=True)
        r = run_size_in_child(rows)
        print(f"[bench]   {json.dumps(r)}", flush=True)
        result["sizes"].append(r)
    if not args.skip_training:
        print("[bench] training: bare vs MLflow vs Prefect+MLflow …", flush=True)
        with tempfile.TemporaryDirectory(prefix="hearth-bench-train-") as tmp:
            result["training"] = measure_training(Path(tmp), args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_pipeline.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    (args.out / "bench_pipeline.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
