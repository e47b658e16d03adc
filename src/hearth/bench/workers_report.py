"""`hearth bench`'s figures for `hearth serve --workers 2`: one worker against two.

The table compares the monolith served by one worker and by two (the `monolith-w2`
contender) at every concurrency of the run, from the bench's own load generator. The issue's
target (two workers ≥ 1.6× one at c=32) is judged under wrk where it drove both at c=32: the
bench's own client is Python on the same two cores and takes a share the servers then lack,
more the faster they answer. wrk drives the two in alternating rounds, and the verdict is the
median of the rounds' ratios: on a shared machine one slow spell moves one round.
"""

from __future__ import annotations

from hearth.bench import wrk
from hearth.bench.bench_figures import Figures, Row, fmt, ratio
from hearth.bench.markdown import md_table

WORKERS = "monolith-w2"  # the monolith served by two workers (`hearth serve --workers 2`)


def workers_scaling(f: Figures) -> list[Row]:
    """The monolith with two workers ÷ with one: throughput and p50, per concurrency."""
    return [
        {
            "concurrency": c,
            "rps_1": f.get("monolith", c, "rps"),
            "rps_2": f.get(WORKERS, c, "rps"),
            "rps_ratio": ratio(f.get(WORKERS, c, "rps"), f.get("monolith", c, "rps")),
            "p50_ratio": ratio(f.get(WORKERS, c, "p50_ms"), f.get("monolith", c, "p50_ms")),
            "cpu_1": f.get("monolith", c, "cpu_s_per_1000"),
            "cpu_2": f.get(WORKERS, c, "cpu_s_per_1000"),
            "errors": f.errors(WORKERS, c),
        }
        for c in f.levels
        if (WORKERS, c) in f.rows and ("monolith", c) in f.rows
    ]


def workers_target(f: Figures, w: Row) -> tuple[str, bool]:
    """What the workers' target reads, and whether it is met: judged under wrk at c=32 where
    it ran (an external generator in C; the bench's own Python client takes a share of the
    same 2 cores, more the faster the servers answer), else on the bench's own figure."""
    own = f"×{w['rps_ratio']:.2f} with the bench's own client, {w['errors']} errors"
    under = [
        (wrk.judged_ratio(run_, a, b), int(sum((b["errors"] or {}).values())), run_)
        for run_, a, b in wrk.pair(f.report.get("cross_check") or {}, "monolith", WORKERS)
        if run_["concurrency"] == 32
    ]
    if not under:
        return own, w["rps_ratio"] >= 1.6 and w["errors"] == 0
    r, n, run_ = under[0]
    met = r >= 1.6 and n == 0 and w["errors"] == 0
    rounds = run_.get("ratios") or []
    of = (
        f" (median of {len(rounds)} rounds, ×{min(rounds):.2f}–{max(rounds):.2f})"
        if len(rounds) > 1
        else ""
    )
    return f"×{r:.2f} under wrk{of}, {n} errors (judged); {own}", met


def workers_section(f: Figures) -> list[str]:
    rows = workers_scaling(f)
    if not rows:
        return []
    lines = [
        "## All cores: the monolith with `hearth serve --workers 2`",
        "",
        "Two monolith processes accept on one port and share the online store, the rollout "
        "state and the prediction log; /metrics sums both (Prometheus multiprocess mode).",
        "",
        *md_table(
            [
                "c",
                "req/s 1 worker",
                "req/s 2 workers",
                "req/s 2 ÷ 1",
                "p50 2 ÷ 1",
                "CPU-s per 1,000 (1 → 2)",
                "errors",
            ],
            "rrrrrrr",
            (
                [
                    r["concurrency"],
                    fmt(r["rps_1"], 0),
                    fmt(r["rps_2"], 0),
                    fmt(r["rps_ratio"], 2, "×"),
                    fmt(r["p50_ratio"], 2, "×"),
                    f"{fmt(r['cpu_1'])} → {fmt(r['cpu_2'])}",
                    r["errors"],
                ]
                for r in rows
            ),
        ),
        "",
        "When other work crowds the cores (load average at the end: "
        f"{', '.join(str(x) for x in f.report['machine']['load_average'])}), two processes also "
        "get a larger share of them than one, which flatters the ratio; the CPU per request "
        "says what the second worker costs. On an idle machine the load generator shares the "
        "same cores.",
        "",
        *wrk.scaling(f.report.get("cross_check") or {}, "monolith", WORKERS),
    ]
    return lines
