"""The model versions' descriptions: a line each time a version is promoted, replaced as
champion or rolled back (when, by whom, why, which test), so the MLflow UI says it.

Written by `hearth.rollout.promotion` once the aliases follow a change: best effort and off
the path of the state write, so a rollback with MLflow down is as fast as ever. Through the
promotion's `RegistryClient` (MLflow's REST API or its client).
"""

from __future__ import annotations

import logging

from hearth.config import CHALLENGER, CHAMPION, PREVIOUS
from hearth.rollout.registry_client import RegistryClient
from hearth.traffic.rollout_state import PromotionIntent

log = logging.getLogger(__name__)


def descriptions(intent: PromotionIntent) -> dict[str, str]:
    """version → the line its model version's description gains: when, what, by whom, why."""
    when = f"{intent.at:%Y-%m-%d %H:%M:%S} UTC"
    rollout = f" in rollout {intent.rollout_id}" if intent.rollout_id else ""
    why = f" by {intent.actor}: {intent.reason}" + (
        f" (test: {intent.test})" if intent.test else ""
    )
    lines: dict[str, str] = {}
    if intent.action == "promote":
        new, old = intent.after.get(CHAMPION) or intent.champion, intent.after.get(PREVIOUS)
        over = f" over v{old}" if old else ""
        if new is not None:
            lines[new] = f"{when}: promoted to {CHAMPION}{over}{rollout}{why}"
        if old is not None and new is not None:
            lines[old] = f"{when}: replaced as {CHAMPION} by v{new}{rollout}{why}"
    elif intent.rollout_id is not None:  # a rollout ended as rolled back
        version = intent.only_if.get(CHALLENGER)
        if version is not None:
            lines[version] = f"{when}: rolled back{rollout}{why}"
    elif intent.champion is not None and intent.expected_champion is not None:
        restored, demoted = intent.champion, intent.expected_champion
        lines[demoted] = f"{when}: rolled back as {CHAMPION}, v{restored} restored{why}"
        lines[restored] = f"{when}: {CHAMPION} again, in place of v{demoted}{why}"
    return lines


def describe(registry: RegistryClient, intent: PromotionIntent) -> None:
    """Append `descriptions(intent)` to the model versions' descriptions (once each).

    After the aliases, off the path that changes what serves: a description that cannot be
    written is logged and skipped, never retried nor allowed to fail the change."""
    try:
        for version, line in descriptions(intent).items():
            current = registry.description(intent.model_name, version)
            if line in current:
                continue  # a repeated repair: already said
            text = f"{current.rstrip()}\n\n{line}" if current.strip() else line
            registry.set_description(intent.model_name, version, text)
    except Exception as exc:
        log.warning("%s: model version descriptions not written (%s)", intent.action, exc)
