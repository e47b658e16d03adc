"""The cross-check: one cell per server contender driven by `wrk`, an external load generator.

Hearth's own load generator (`hearth.bench.load`) is a Python client on the same 2 cores
as the servers; if it were what limits a figure, every contender would look alike. `wrk`
(C, from Debian's packages) drives each server once more at one concurrency, and the
report puts both side by side. Its Lua script (`lua_script`) gives every request to a
Hearth contender a new transaction: a new ``transaction_id``, a random known customer (the
fields of a real transaction from the workload) and a timestamp later than every
transaction the bench sent that server before, at the data's pace for the customers the
script reaches (`Workload.step_for`); the bare model servers get a random body of their
kind. Without `wrk` on the PATH the cross-check is skipped and
the report says so.
"""

from __future__ import annotations

import calendar
import json
import math
import random
import resource
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hearth.bench.bench_figures import Figures, Row, fmt, ratio
from hearth.bench.load import Endpoint
from hearth.bench.markdown import md_table
from hearth.schema import parse_timestamp

# Bodies (or transactions) the script picks from at random: enough to reach most of the
# population's customers, so that each transacts at about the data's pace.
TEMPLATES = 2000
MAX_THREADS = 2  # wrk threads: one per core of the 2-core machine at most
WORKERS_CONCURRENCY = 32  # where one worker and two are compared again (the target)
MARKER = "HEARTH_WRK "
_STAMPED = ("transaction_id", "timestamp")


def available() -> bool:
    return shutil.which("wrk") is not None


def lua_script(
    endpoint: Endpoint,
    templates: Sequence[str],
    stamped: bool,
    start: datetime,
    prefix: str,
    step_s: float = 1.0,
) -> str:
    """A wrk script: POST `endpoint` with its headers; each request's body a random template.

    `stamped`: each template is a transaction's JSON members but its id and timestamp, and
    the script adds a new ``transaction_id`` (`prefix`, the thread, a counter) and a
    timestamp (from `start`, `step_s` apart, interleaved across threads): request *n*
    overall is dated about ``start + n * step_s``."""
    bodies = ",\n".join(f"[==[{t}]==]" for t in templates)
    headers = "\n".join(
        f"  wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
        for k, v in (("Content-Type", "application/json"), *endpoint.headers)
    )
    return _SCRIPT % {
        "bodies": bodies,
        "headers": headers,
        "stamped": "true" if stamped else "false",
        "base": calendar.timegm(start.timetuple()),
        "prefix": json.dumps(prefix),
        "marker": MARKER,
        "stride": MAX_THREADS,
        "step": step_s,
    }


_SCRIPT = """-- written by hearth bench (hearth.bench.wrk): one new request body per request
local templates = {
%(bodies)s
}
local stamped = %(stamped)s
local base = %(base)d
local step = %(step).6f
local prefix = %(prefix)s
counter = 0  -- global: done() reads it through thread:get
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

local function dated(n, thread)
  return base + math.floor((n * %(stride)d + thread) * step)
end

function init(args)
  math.randomseed(7919 + thread_id)
  wrk.method = "POST"
%(headers)s
end

function request()
  counter = counter + 1
  local t = templates[math.random(#templates)]
  if not stamped then
    return wrk.format(nil, nil, nil, t)
  end
  local id = prefix .. thread_id .. "-" .. counter
  local ts = os.date("!%%Y-%%m-%%dT%%H:%%M:%%S", dated(counter, thread_id))
  return wrk.format(nil, nil, nil,
    '{"transaction_id":"' .. id .. '","timestamp":"' .. ts .. '",' .. t .. '}')
end

function done(summary, latency, requests)
  local e = summary.errors
  -- the latest timestamp any thread made: what was sent, or a few later (a request wrk
  -- built as its run ended is never sent), so an upper bound of the dates sent
  local last = base
  for _, thread in ipairs(threads) do
    last = math.max(last, dated(thread:get("counter"), thread:get("thread_id")))
  end
  io.write(string.format(
    '%(marker)s{"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,' ..
    '"last_s":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout, last))
end
"""


def templates(
    transactions: Sequence[dict[str, Any]], bodies: Sequence[bytes], kind: str
) -> list[str]:
    """What the script picks from: a transaction's members but its id and timestamp (the
    Hearth contenders and the echo), else whole bodies of `kind`."""
    picked = chosen(len(bodies))
    if kind != "transaction":
        return [bodies[i].decode() for i in picked]
    out = []
    for i in picked:
        rest = {k: v for k, v in transactions[i].items() if k not in _STAMPED}
        out.append(json.dumps(rest, separators=(",", ":"))[1:-1])
    return out


def chosen(n: int) -> list[int]:
    """Which of `n` bodies `templates` picks (the same ones every time)."""
    return random.Random(0).sample(range(n), min(TEMPLATES, n))


def after(transactions: Sequence[dict[str, Any]]) -> datetime:
    """A start for the script's timestamps: a day after the workload's last transaction."""
    last = max(parse_timestamp(t["timestamp"]) for t in transactions)
    return last + timedelta(days=1)


def after_rows(rows: Sequence[dict[str, Any]]) -> datetime:
    """A start for scripts run after `rows` (from `run`): a day after the latest timestamp
    any of them sent."""
    return datetime.fromtimestamp(max(r["last_s"] for r in rows), UTC).replace(
        tzinfo=None
    ) + timedelta(days=1)


def run(
    endpoint: Endpoint, script: str, concurrency: int, seconds: float, work: Path
) -> dict[str, Any]:
    """Drive `endpoint` with wrk for `seconds` at `concurrency` connections (one thread
    per core at most); its figures in the shape of `Cell.summary` (ms, req/s, errors)."""
    threads = max(1, min(concurrency, MAX_THREADS))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", dir=work, delete=False) as f:
        f.write(script)
    url = f"http://{endpoint.host}:{endpoint.port}{endpoint.path}"
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
           "--timeout", "30s", "-s", f.name, url]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    lines = [x for x in out.stdout.splitlines() if x.startswith(MARKER)]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}"[-2000:])
    raw = json.loads(lines[-1].removeprefix(MARKER))
    errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    seconds_driven = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["status"]
    return {
        "concurrency": concurrency,
        "requests": raw["requests"],
        "errors": errors,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "rps": ok / seconds_driven if seconds_driven else math.nan,
        "seconds": round(seconds_driven, 2),
        "last_s": raw["last_s"],
        "wrk_cpu_s": round(wrk_cpu_s, 3),
    }


def rounds_run(
    c: int, seconds: float, names: Sequence[str], rounds: Sequence[dict[str, dict[str, Any]]]
) -> dict[str, Any]:
    """A run of several rounds, each of `names` once per round (rows by name): each name's
    rounds pooled (`pooled`), and round by round the second name's req/s ÷ the first's."""
    one, two = names
    return {
        "concurrency": c,
        "seconds": seconds,
        "rounds": len(rounds),
        "rows": [pooled([r[name] for r in rounds]) for name in names],
        "ratios": [round(ratio(r[two]["rps"], r[one]["rps"]), 3) for r in rounds],
    }


def pooled(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One contender's wrk rows (rounds of one run) as one: counts and seconds summed, req/s
    and CPU per request over them all, the percentiles the rounds' medians, the max the max."""
    seconds = sum(r["seconds"] for r in rows)
    requests = sum(r["requests"] for r in rows)
    errors: dict[str, int] = {}
    for r in rows:
        for k, v in (r["errors"] or {}).items():
            errors[k] = errors.get(k, 0) + v
    return rows[0] | {
        "requests": requests,
        "errors": errors,
        **{k: statistics.median(r[k] for r in rows) for k in ("p50_ms", "p90_ms", "p99_ms")},
        "max_ms": max(r["max_ms"] for r in rows),
        "rps": sum(r["rps"] * r["seconds"] for r in rows) / seconds if seconds else math.nan,
        "seconds": round(seconds, 2),
        "last_s": max(r["last_s"] for r in rows),
        "wrk_cpu_s": round(sum(r["wrk_cpu_s"] for r in rows), 3),
        "cpu_s_per_1000": sum(r["cpu_s_per_1000"] * r["requests"] for r in rows) / max(1, requests),
        "others_cores": round(
            sum(r["others_cores"] * r["seconds"] for r in rows) / seconds if seconds else 0.0, 3
        ),
    }


def judged_ratio(run_: dict[str, Any], a: Row, b: Row) -> float:
    """`b`'s req/s ÷ `a`'s in `run_`: the median of its rounds' ratios where it ran rounds
    (one slow spell of a shared machine moves one round, not the verdict), else the one."""
    ratios = run_.get("ratios") or []
    return statistics.median(ratios) if ratios else ratio(b["rps"], a["rps"])


# -- the report ----------------------------------------------------------------------------
def section(f: Figures) -> list[str]:
    """The Markdown section: each cross-checked contender, Hearth's figures / wrk's."""
    check = f.report.get("cross_check") or {}
    lines = ["## Cross-check with an external load generator (wrk)", ""]
    if not check.get("rows"):
        reason = check.get("skipped", "not run")
        return [*lines, f"(not measured: {reason})", ""]
    c, seconds = check["concurrency"], check["seconds"]
    lines += [
        f"Every server contender once more at c={c} for {seconds:g} s, driven by `wrk` "
        "(Debian's package; Lua script: a new transaction id, a random known customer and an "
        "increasing timestamp per request to Hearth), beside the same contender's cell from "
        "Hearth's own load generator above. Each figure: Hearth's / wrk's.",
        "",
    ]

    head = ["contender", "requests", "p50 ms", "p99 ms", "max ms", "req/s", "CPU s / 1000 req",
            "errors"]  # fmt: skip
    rows = []
    for row in check["rows"]:
        name = row["contender"]
        own = f.rows.get((name, c), {})

        def pair(key: str, digits: int = 2, mine: Row = own, theirs: Row = row) -> str:
            return f"{fmt(float(mine.get(key, math.nan)), digits)} / {fmt(theirs[key], digits)}"

        rows.append([
            f.labels.get(name, name), f"{own.get('requests', 0):,} / {row['requests']:,}",
            pair("p50_ms"), pair("p99_ms"), pair("max_ms", 1), pair("rps", 0),
            pair("cpu_s_per_1000"), f"{f.errors(name, c)} / {sum(row['errors'].values())}",
        ])  # fmt: skip
    return [*lines, *md_table(head, "lrrrrrrr", rows), ""]


def pair(cross: dict[str, Any], one: str, two: str) -> list[tuple[dict[str, Any], Row, Row]]:
    """(the run, `one`'s row, `two`'s row) for each wrk run that drove both: the cross-check
    and the workers' own run at WORKERS_CONCURRENCY."""
    out = []
    for run_ in (cross, cross.get("workers") or {}):
        by = {r["contender"]: r for r in run_.get("rows", [])}
        if one in by and two in by:
            out.append((run_, by[one], by[two]))
    return out


def _others(a: Row, b: Row) -> str:
    """What the rest of the machine used meanwhile: a ratio of two servers only compares
    like with like when the cores left to them were alike."""
    if "others_cores" not in a or "others_cores" not in b:
        return ""
    return (
        f" Meanwhile the rest of the machine (neither the server nor wrk) kept "
        f"{fmt(a['others_cores'])} → {fmt(b['others_cores'])} cores busy."
    )


def scaling(cross: dict[str, Any], one: str, two: str) -> list[str]:
    """`two` against `one` (e.g. the monolith with two workers and with one) under wrk, a C
    load generator that leaves the servers more of the two cores than the bench's own Python
    client does; [] unless both ran under it."""
    return [
        line
        for run_, a, b in pair(cross, one, two)
        for line in (
            f"Under wrk at c={run_['concurrency']} ({_how_long(run_)}): "
            f"{fmt(a['rps'], 0)} → {fmt(b['rps'], 0)} req/s{_pooled(run_)}, "
            f"**{fmt(judged_ratio(run_, a, b), 2, '×')}**{_rounds(run_)}, CPU-s per 1,000 "
            f"{fmt(a['cpu_s_per_1000'])} → {fmt(b['cpu_s_per_1000'])}.{_others(a, b)}",
            "",
        )
    ]


def _how_long(run_: dict[str, Any]) -> str:
    n = run_.get("rounds", 1)
    each = f"{run_['seconds']:g} s each"
    return f"{n} rounds of {each}, alternating which goes first" if n > 1 else each


def _pooled(run_: dict[str, Any]) -> str:
    return " over all rounds" if run_.get("rounds", 1) > 1 else ""


def _rounds(run_: dict[str, Any]) -> str:
    """The rounds' ratios, where there were several: the bold figure is their median."""
    ratios = run_.get("ratios") or []
    if len(ratios) < 2:
        return ""
    listed = ", ".join(f"{r:.2f}" for r in ratios)
    return f" (the median of the rounds' ×{listed}; ×{min(ratios):.2f}–{max(ratios):.2f})"
