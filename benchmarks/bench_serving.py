"""What each serving topology costs: p50/p99 latency and throughput of POST /predict.

Starts each topology as a real server (`hearth serve`, loopback only) on its own fresh
HEARTH_HOME, warms it up, then drives POST /predict with an async httpx client at each
concurrency for a fixed number of requests. The model and the data come from the current
project (run `hearth run` first). Writes reports/bench_serving.{json,md} with the ratio
microservices / monolith measured in the same run.

    python benchmarks/bench_serving.py [--requests 400] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from hearth.config import NO_TELEMETRY_ENV, Settings
from hearth.data.schema import TIMESTAMP_FORMAT, TRANSACTION_FIELDS
from hearth.serving.launch import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGIES = ("monolith", "microservices")
KEY = "bench-key"


def transactions(processed: Path, n: int) -> list[dict[str, Any]]:
    """`n` real transactions replayed in order, one second apart, after the data's end."""
    df = pd.read_parquet(processed / "transactions.parquet")
    sample = df.sample(n=n, replace=n > len(df), random_state=0).reset_index(drop=True)
    start = df["timestamp"].max() + timedelta(days=1)
    out = []
    for i, row in enumerate(sample.to_dict("records")):
        txn = {k: row[k] for k in TRANSACTION_FIELDS}
        txn["transaction_id"] = f"bench-{i}"
        txn["timestamp"] = (start + timedelta(seconds=i)).strftime(TIMESTAMP_FORMAT)
        out.append(txn)
    return out


def server_env(source: Settings, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "BENTOML_"))}
    env.update(NO_TELEMETRY_ENV)
    env.update(
        HEARTH_HOME=str(home),
        HEARTH_DATA_DIR=str(source.data_dir.resolve()),
        HEARTH_PARAMS_FILE=str(source.params_file.resolve()),
        HEARTH_MLFLOW_TRACKING_URI=source.mlflow_uri,
        HEARTH_API_KEY=KEY,
    )
    return env


async def drive(url: str, txns: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """POST every transaction with at most `concurrency` in flight; latency stats."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    queue = iter(txns)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            for txn in queue:  # a shared iterator: each transaction is sent once
                t0 = time.perf_counter()
                r = await client.post("/predict", json=txn, headers={"X-API-Key": KEY})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "rps": len(latencies) / elapsed,
    }


def bench_topology(
    topology: str, source: Settings, requests: int, concurrencies: list[int], warmup: int
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{topology}-") as tmp:
        home = Path(tmp)
        server = ServerProcess.start(topology, server_env(source, home), ROOT, home / "log")
        try:
            server.wait_ready()
            txns = transactions(source.processed_dir, warmup + requests * len(concurrencies))
            asyncio.run(drive(server.url, txns[:warmup], 4))
            results, offset = [], warmup
            for c in concurrencies:
                result = asyncio.run(drive(server.url, txns[offset : offset + requests], c))
                offset += requests
                results.append({"topology": topology, **result})
                print(
                    f"{topology:<13} c={c:<3} p50 {result['p50_ms']:7.2f} ms  "
                    f"p99 {result['p99_ms']:7.2f} ms  {result['rps']:8.1f} req/s  "
                    f"errors {result['errors'] or 0}",
                    flush=True,
                )
            return results
        finally:
            server.stop()


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["topology"], r["concurrency"]): r for r in rows}
    out = []
    for (topology, c), micro in by.items():
        mono = by.get(("monolith", c))
        if topology != "microservices" or mono is None:
            continue
        out.append(
            {
                "concurrency": c,
                "p50": micro["p50_ms"] / mono["p50_ms"],
                "p99": micro["p99_ms"] / mono["p99_ms"],
                "rps": micro["rps"] / mono["rps"],
            }
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Serving topologies: POST /predict on loopback",
        "",
        f"{report['machine']} · {report['requests']} requests per row after "
        f"{report['warmup']} warm-up requests",
        "",
        "| topology | concurrency | p50 ms | p99 ms | req/s | errors |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['topology']} | {r['concurrency']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['rps']:.1f} | {r['errors'] or '-'} |"
        )
    lines += ["", "| microservices / monolith | p50 | p99 | req/s |", "|---:|---:|---:|---:|"]
    for r in report["ratios"]:
        lines.append(
            f"| c={r['concurrency']} | ×{r['p50']:.2f} | ×{r['p99']:.2f} | ×{r['rps']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="Requests per concurrency.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--topology", nargs="+", default=list(TOPOLOGIES), choices=TOPOLOGIES)
    args = parser.parse_args()

    source = Settings()
    rows: list[dict[str, Any]] = []
    for topology in args.topology:
        rows += bench_topology(topology, source, args.requests, args.concurrency, args.warmup)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "requests": args.requests,
        "warmup": args.warmup,
        "results": rows,
        "ratios": ratios(rows),
    }
    out = source.reports_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_serving.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench_serving.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
