"""The soak test's report: Markdown (per-window table, criteria, verdict), JSON and a plot of
p99 and RSS per window."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hearth.observability.figures import png_figure

FILES = ("soak.md", "soak.json", "soak.png")


def verdict_line(report: dict[str, Any]) -> str:
    failed = [c["criterion"] for c in report["criteria"] if not c["met"]]
    return "PASS: every criterion met" if not failed else f"FAIL: {'; '.join(failed)}"


def _errors(window: dict[str, Any]) -> str:
    """`0`, or the count and what they were: `3 (503: 2, timeout: 1)`."""
    bad = {k: v for k, v in window["statuses"].items() if k != "200"}
    detail = ", ".join(f"{k}: {v}" for k, v in bad.items())
    return f"{window['errors']} ({detail})" if bad else "0"


def _capacity(cap: dict[str, Any]) -> list[str]:
    """The capacity's lines: the closed-loop estimate, then each open-loop step."""
    closed = cap.get("closed_loop", cap)  # reports from before the open-loop steps: flat
    lines = [
        f"- Closed loop (c={closed['concurrency']}, {closed['seconds']} s): {closed['rps']:.0f} "
        f"req/s (p50 {closed['p50_ms']} ms, p99 {closed['p99_ms']} ms, {closed['errors']} "
        f"errors, server CPU {closed.get('server_cores', math.nan)} cores): the first estimate."
    ]
    for p in cap.get("probes", []):
        lines.append(
            f"  - open loop at {p['rate_rps']:.0f} req/s: p50 {p['p50_first_ms']} → "
            f"{p['p50_last_ms']} ms (first → last quarter), p99 {p['p99_ms']} ms, "
            f"{p['errors']} errors: {'kept up' if p['kept_up'] else '**fell behind**'}"
        )
    how = cap.get("method", "closed loop")
    held = "" if cap.get("kept_up", True) else " (no open-loop step kept up: the lowest one)"
    lines.append(f"- Capacity ({how}): **{cap['rps']:.0f} req/s**{held}.")
    return lines


def _dated(clock: dict[str, Any]) -> str:
    """How the transactions were dated (soak.TransactionStream)."""
    if clock.get("clock") != "data":
        return (
            "fresh id, its send time as timestamp: each customer transacts every few seconds "
            "and its history grows through the run, a stress rather than real traffic"
        )
    return (
        f"fresh id; dated {clock['gap_s']} s after the one before, the data's own pace "
        f"({clock['data_transactions']} transactions of its population over its span), "
        f"from its last transaction ({clock['starts']}): {clock['speedup']}x faster than "
        "real time, so each customer transacts as often as in the data and its 30-day "
        "history keeps its length"
    )


def markdown(report: dict[str, Any]) -> str:
    m, cap, cfg = report["machine"], report["capacity"], report["config"]
    lines = [
        "# Soak test: the Hearth monolith at a constant rate",
        "",
        f"{report['created']} · {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}, {m['system']} · load average before "
        f"{', '.join(map(str, m['load_average']))}, after "
        f"{', '.join(map(str, report['load_average_after']))}",
        "",
        *_capacity(cap),
        f"- Soak: **{report['rate_rps']:.0f} req/s** open loop "
        f"({report['rate_rps'] / cap['rps']:.0%} of capacity) for {cfg['duration_s']:.0f} s, "
        f"each request a new transaction ({_dated(report.get('clock') or {})}); latency "
        "counts from the scheduled send time.",
        f"- Serving processes measured (RSS of the tree): {report['serving_processes']}; "
        f"RSS when the soak started {report['rss_start_mib']:.0f} MiB.",
        "",
        f"## Per window ({cfg['window_s']:.0f} s)",
        "",
        "| window | requests | req/s | p50 ms | p99 ms | max ms | client lag p99 ms | errors "
        "| RSS MiB | server CPU (cores) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in report["windows"]:
        lines.append(
            f"| {w['window']} | {w['requests']} | {w['rps']:.0f} | {w['p50_ms']} | "
            f"{w['p99_ms']} | {w['max_ms']} | {w['client_lag_p99_ms']} | {_errors(w)} | "
            f"{w['rss_mib']:.0f} | {w['server_cores']} |"
        )
    lines += ["", "## Criteria", "", "| criterion | value | limit | met |", "|---|---:|---|---|"]
    for c in report["criteria"]:
        lines.append(
            f"| {c['criterion']} | {c['value']} | {c['limit']} | {'yes' if c['met'] else 'NO'} |"
        )
    lines += [
        "",
        "## Verdict",
        "",
        f"**{verdict_line(report)}** ({report['seconds']:.0f} s in all).",
        "",
        "Client lag is how late the load generator started requests (it shares the machine); "
        "a large lag inflates the latencies, which count from the scheduled time. Waiting for "
        f"a free connection (at most {report['config']['max_connections']} in flight) is the "
        "server's backlog and counts in the latency, not in the lag. A request unanswered "
        "30 s after its scheduled time is a `timeout` error; the monolith itself answers 503 "
        "when a model call takes longer than HEARTH_MODEL_TIMEOUT_S.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """p99 per window (left) and the serving tree's RSS over time (right)."""
    window_s = report["config"]["window_s"]
    with png_figure(path, save_dpi=110, figsize=(8, 4.5)) as (_, ax):
        ends = [w["window"] * window_s / 60 for w in report["windows"]]
        ax.plot(ends, [w["p99_ms"] for w in report["windows"]], marker="o", color="tab:red",
                label="p99 per window")  # fmt: skip
        ax.set_xlabel("minutes into the soak (p99 at the end of its window)")
        ax.set_ylabel("p99 latency, ms", color="tab:red")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        rss = ax.twinx()
        series = report["rss_series"]
        rss.plot([t / 60 for t, _ in series], [m for _, m in series], color="tab:blue",
                 label="RSS (serving processes)")  # fmt: skip
        rss.set_ylabel("RSS, MiB", color="tab:blue")
        top = max((m for _, m in series if math.isfinite(m)), default=1.0)
        rss.set_ylim(0, top * 1.15)
        ax.set_title(f"Soak at {report['rate_rps']:.0f} req/s: {verdict_line(report)}", fontsize=9)


def write(report: dict[str, Any], out: Path) -> list[Path]:
    """Write the three report files into `out`; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    paths[0].write_text(markdown(report))
    paths[1].write_text(json.dumps(report, indent=2) + "\n")
    plot(report, paths[2])
    return paths
