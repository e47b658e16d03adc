"""The rollout report, from a synthetic history written the way the rollout flow writes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from hearth.config import Settings
from hearth.params import RolloutParams
from hearth.rollout import rollout_report
from hearth.rollout.flow_steps import _history_fields
from hearth.rollout.verdict import analyse
from hearth.traffic.rollout_state import HistoryEvent, RolloutState, new_rollout
from hearth.traffic.state_sqlite import SQLiteStateStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# -- a synthetic rollout history ------------------------------------------------------------
def _rows(n: int, variant: str, scores: tuple[float, float]) -> list[dict[str, Any]]:
    """`n` answered requests, 1 in 10 fraud, scored `scores` (fraud, legit)."""
    return [
        {
            "variant": variant,
            "ok": True,
            "latency_ms": 5.0 + i % 7,
            "score": scores[0] if i % 10 == 0 else scores[1] + (i % 5) / 100,
            "is_fraud": int(i % 10 == 0),
        }
        for i in range(n)
    ]


def _rollout(store: SQLiteStateStore) -> RolloutState:
    """A canary that advances 50 → 100 %, then is promoted, written the way the flow does."""
    params = RolloutParams(
        steps=(50.0, 100.0), min_samples=20, min_labelled=20, min_positives=2,
        bootstrap_resamples=50,
    )  # fmt: skip
    state = store.start(new_rollout("1", "2", params, steps=(50.0, 100.0)), "test")
    rows = _rows(200, "champion", (0.9, 0.1)) + _rows(200, "challenger", (0.95, 0.1))
    for round_no in (1, 2):
        verdict = analyse(rows, params, 0.5, mode="canary", last_step=state.last_step)
        fields = _history_fields(verdict, state, round_no)
        if verdict.decision == "advance":
            state = store.update(lambda s: s.next_step(), "rollout-flow", "advance", **fields)
        else:
            assert verdict.decision == "promote", verdict.reason
            state = store.update(lambda s: s.ended("promoted"), "rollout-flow", "promote", **fields)
    return state


@pytest.fixture
def history(tmp_path: Path) -> tuple[RolloutState, list[HistoryEvent]]:
    store = SQLiteStateStore(tmp_path / "rollout.sqlite")
    try:
        state = _rollout(store)
        return state, store.history(state.rollout_id)
    finally:
        store.close()


def test_rounds_are_rebuilt_from_the_history_alone(
    history: tuple[RolloutState, list[HistoryEvent]],
) -> None:
    state, events = history
    built = rollout_report.build(state, events)
    assert [r.decision for r in built.rounds] == ["advance", "promote"]
    # Each round carries the traffic share it was judged at, not the one it led to.
    assert [r.percent for r in built.rounds] == [50.0, 100.0]
    assert built.final is not None and built.final.number("challenger_pr_auc") > 0.9
    assert len(built.events) == 3  # start, advance, promote


def test_markdown_has_traffic_metrics_verdict_and_reason(
    history: tuple[RolloutState, list[HistoryEvent]],
) -> None:
    state, events = history
    md = rollout_report.markdown(rollout_report.build(state, events))
    assert f"# Rollout {state.rollout_id}" in md
    assert "outcome: **promoted**" in md
    assert "final verdict: **promote** — challenger non-inferior" in md
    for column in ("challenger %", "error rate", "p99 ms", "PR-AUC", "recall@thr", "PSI"):
        assert column in md
    table = [line for line in md.splitlines() if line.startswith("| 1 |")]
    assert table and "| 50 | advance |" in table[0]
    assert "challenger_percent: 50.0 → 100.0" in md  # the history lists the weight change


def test_write_produces_markdown_and_png(
    tmp_path: Path, history: tuple[RolloutState, list[HistoryEvent]]
) -> None:
    state, events = history
    out = rollout_report.report_dir(Settings(home=tmp_path / "home"), state.rollout_id)
    written = rollout_report.write(rollout_report.build(state, events), out)
    assert written.markdown == out / "report.md" and written.markdown.read_text()
    assert written.png is not None
    with Image.open(written.png) as png:
        assert png.format == "PNG" and png.size[0] >= 600
    assert str(out).endswith(f"reports/rollouts/{state.rollout_id}")


def test_a_rollout_without_analysis_still_reports(tmp_path: Path) -> None:
    state = new_rollout("1", "2", RolloutParams())
    start = HistoryEvent(rollout_id=state.rollout_id, actor="ops", action="start", at=T0)
    written = rollout_report.write(rollout_report.build(state, [start]), tmp_path)
    assert "No analysis was recorded" in (written.markdown or tmp_path).read_text()


def test_non_numbers_and_missing_metrics_show_as_dashes() -> None:
    state = new_rollout("1", "2", RolloutParams())
    event = HistoryEvent(
        rollout_id=state.rollout_id,
        actor="rollout-flow",
        action="hold",
        at=T0 + timedelta(seconds=5),
        reason="too few requests",
        numbers={"analysis_round": 1, "decision": "hold", "champion_n": 3, "psi": None},
    )
    md = rollout_report.markdown(rollout_report.build(state, [event]))
    row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert "| 3 / – |" in row and "hold" in row
