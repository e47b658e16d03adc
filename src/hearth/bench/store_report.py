"""`hearth bench`'s figures for the online store in Redis: what a fleet's shared store costs.

The `monolith-redis` contender is the monolith with `HEARTH_STORE_BACKEND=redis` on a
redis-server of its own; its CPU and memory include that server's. Compared here with the
monolith on its embedded SQLite store at every concurrency of the run.
"""

from __future__ import annotations

from hearth.bench.bench_figures import Figures, Row, fmt, ratio
from hearth.bench.markdown import md_table

REDIS = "monolith-redis"


def store_rows(f: Figures) -> list[Row]:
    """The monolith on Redis against the monolith on SQLite, per concurrency."""
    return [
        {
            "concurrency": c,
            "rps_sqlite": f.get("monolith", c, "rps"),
            "rps_redis": f.get(REDIS, c, "rps"),
            "rps_ratio": ratio(f.get(REDIS, c, "rps"), f.get("monolith", c, "rps")),
            "p50_sqlite": f.get("monolith", c, "p50_ms"),
            "p50_redis": f.get(REDIS, c, "p50_ms"),
            "cpu_sqlite": f.get("monolith", c, "cpu_s_per_1000"),
            "cpu_redis": f.get(REDIS, c, "cpu_s_per_1000"),
            "errors": f.errors(REDIS, c),
        }
        for c in f.levels
        if (REDIS, c) in f.rows and ("monolith", c) in f.rows
    ]


def store_section(f: Figures) -> list[str]:
    rows = store_rows(f)
    if not rows:
        return []
    return [
        "## The online store in Redis",
        "",
        "The monolith with its online store in Redis (`HEARTH_STORE_BACKEND=redis`), as "
        "machines that share one run it, against the embedded SQLite store. Its CPU per "
        "request includes the redis-server's.",
        "",
        *md_table(
            [
                "c",
                "req/s SQLite",
                "req/s Redis",
                "Redis ÷ SQLite",
                "p50 ms SQLite → Redis",
                "CPU-s per 1,000 SQLite → Redis",
                "errors",
            ],
            "rrrrrrr",
            (
                [
                    r["concurrency"],
                    fmt(r["rps_sqlite"], 0),
                    fmt(r["rps_redis"], 0),
                    fmt(r["rps_ratio"], 2, "×"),
                    f"{fmt(r['p50_sqlite'])} → {fmt(r['p50_redis'])}",
                    f"{fmt(r['cpu_sqlite'])} → {fmt(r['cpu_redis'])}",
                    r["errors"],
                ]
                for r in rows
            ),
        ),
        "",
    ]
