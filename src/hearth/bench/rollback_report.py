"""The bench report's "Rollback under load" section: what `hearth rollback` does to live
traffic in each topology (`hearth.bench.rollback` measures it)."""

from __future__ import annotations

from typing import Any

from hearth.bench.markdown import md_row, md_table, seconds

Row = dict[str, Any]


def rollback_rows(report: dict[str, Any]) -> list[Row]:
    """The rollback section's rows (one per topology measured or failed); [] when skipped."""
    return list((report.get("rollback") or {}).get("results", []))


def rollback_brief(row: Row) -> str:
    if row.get("error"):
        return "not measured (see the rollback section)"
    return (
        f"{row['failed']} failed of {row['requests']}; last challenger response "
        f"{row['last_challenger_after_start_s']:.2f} s after `hearth rollback` started, "
        f"{seconds(row['last_challenger_after_state_write_s'], '+')} s after its state write"
    )


def rollback_section(report: dict[str, Any]) -> list[str]:
    section = report.get("rollback") or {}
    lines = ["## Rollback under load", ""]
    if section.get("what"):
        lines += [section["what"], ""]
    if section.get("skipped"):
        return [*lines, f"(not measured: {section['skipped']})", ""]
    rows = rollback_rows(report)
    if not rows:
        return [*lines, "(not recorded)", ""]
    lines += md_table(
        ["topology", "c", "requests", "failed", "challenger responses", "`hearth rollback` s",
         "its state write after its start s", "last challenger after its start s",
         "… after its state write s", "… after its exit s", "challenger after exit"],
        "lrrrrrrrrrr",
    )  # fmt: skip
    for r in rows:
        if r.get("error"):
            error = str(r["error"]).splitlines()[0].replace("|", "\\|")
            lines.append(f"| {r['topology']} | not measured: {error} ||||||||||")
            continue
        errors = ", ".join(f"{s}: {n}" for s, n in r["errors"].items())
        lines.append(
            md_row(
                [r["topology"], r["concurrency"], r["requests"],
                 f"{r['failed']}{f' ({errors})' if errors else ''}", r["challenger_responses"],
                 f"{r['rollback_cli_s']:.2f}", seconds(r["state_write_after_start_s"]),
                 f"{r['last_challenger_after_start_s']:.2f}",
                 seconds(r["last_challenger_after_state_write_s"], "+"),
                 f"{r['last_challenger_after_exit_s']:+.2f}", r["challenger_after_exit"]]
            )
        )  # fmt: skip
    return [
        *lines,
        "",
        "Times run from the command's start, its write of the rollout state (the time of "
        "the rollout history's rollback event) or its exit to the last response naming the "
        "challenger, as the load generator received it. Most of the command's time is Python "
        "starting and importing; the switch is the state write, which every gateway picks up "
        "within a second. The command writes nothing after it (the challenger alias is "
        "dropped at the next repair), so the last challenger response can come before the "
        "exit (a negative figure). Failed: non-200 answers and connection errors over the "
        "whole window, ramp-up included.",
        "",
    ]
