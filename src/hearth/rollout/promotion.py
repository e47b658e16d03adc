"""Promotion and rollback in the MLflow registry, crash-safe, tied to the rollout state.

MLflow stays the source of truth for versions: ``champion`` serves, ``challenger`` is the
candidate, ``previous`` is the champion before the last promotion (what a rollback
restores). A promotion or rollback is several writes (aliases in MLflow, the rollout's end
in the `StateStore`), and a crash can stop it half way. So each one first records a
`PromotionIntent` in the state store, then makes its writes (each idempotent), then clears
the intent. `repair` — run at the start of every rollout command — finds a leftover intent
and finishes it, or undoes it when a version it names has disappeared.

Order of writes, chosen so that a crash between them never serves the wrong model:

- promote: ``previous`` ← old champion, ``champion`` ← challenger, drop ``challenger``, then
  end the rollout as promoted (the serving champion changes at the second write);
- rollback during a rollout: end the rollout first (every replica routes to the champion
  within a second), then drop ``challenger``;
- rollback after a promotion: ``champion`` ← ``previous`` first, then drop ``previous``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hearth import registry
from hearth.config import Params, Settings
from hearth.traffic.rollout_state import (
    InvalidRollout,
    Mode,
    NoActiveRollout,
    PromotionIntent,
    RolloutConflict,
    RolloutState,
    Scalar,
    StateStore,
    UnknownVersion,
    new_rollout,
)
from hearth.traffic.stores import open_state_store

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = registry.CHAMPION, registry.CHALLENGER, "previous"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)


@dataclass(frozen=True)
class AliasChange:
    """What a registry command did: the aliases before and after, and why."""

    action: str
    before: dict[str, str]
    after: dict[str, str]
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- registry reads --------------------------------------------------------------------------
def aliases(model_name: str) -> dict[str, str]:
    """alias → version of our three aliases (absent ones left out); {} for an unknown model."""
    try:
        model = MlflowClient().get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {k: str(v) for k, v in model.aliases.items() if k in ALIASES}


def version_exists(model_name: str, version: str) -> bool:
    if not str(version).isdigit():
        return False
    try:
        MlflowClient().get_model_version(model_name, str(version))
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return False
        raise
    return True


def check_version(model_name: str, version: str | int) -> str:
    """`version` as a string if it is registered under `model_name`, else UnknownVersion."""
    if not version_exists(model_name, str(version)):
        raise UnknownVersion(f"{model_name} has no version {version!r}")
    return str(version)


# -- applying an intent ----------------------------------------------------------------------
def _set_aliases(model_name: str, after: dict[str, str | None]) -> None:
    client = MlflowClient()
    for alias, version in after.items():
        if version is None:
            # Deleting an absent alias succeeds in MLflow: safe to repeat in a repair.
            client.delete_registered_model_alias(model_name, alias)
        else:
            client.set_registered_model_alias(model_name, alias, version)


def _end_rollout(store: StateStore, intent: PromotionIntent) -> None:
    if intent.rollout_id is None or intent.rollout_status is None:
        return
    status = intent.rollout_status
    # Already ended (an earlier attempt got this far): nothing is left to do.
    with contextlib.suppress(NoActiveRollout, RolloutConflict):
        store.update(
            lambda s: s.ended(status),
            actor=intent.actor,
            action=intent.action,
            reason=intent.reason,
            numbers=intent.numbers,
            test=intent.test,
            rollout_id=intent.rollout_id,
        )


def _apply(store: StateStore, intent: PromotionIntent) -> None:
    """Make every write of `intent` (each idempotent), then clear it."""
    if intent.action == "rollback":
        _end_rollout(store, intent)  # traffic first: the reason a rollback is urgent
        _set_aliases(intent.model_name, intent.after)
    else:
        _set_aliases(intent.model_name, intent.after)
        _end_rollout(store, intent)
    store.set_intent(None)


def _execute(store: StateStore, intent: PromotionIntent) -> AliasChange:
    before = aliases(intent.model_name)
    store.set_intent(intent)  # from here on, a crash is repaired by finishing this intent
    _apply(store, intent)
    after = aliases(intent.model_name)
    log.info("%s: %s → %s (%s)", intent.action, before, after, intent.reason)
    return AliasChange(intent.action, before, after, intent.reason)


@contextmanager
def _opened(settings: Settings, store: StateStore | None) -> Iterator[StateStore]:
    """`store`, or one opened from `settings` (and closed afterwards)."""
    registry.configure(settings)
    if store is not None:
        yield store
        return
    opened = open_state_store(settings)
    try:
        yield opened
    finally:
        opened.close()


# -- commands --------------------------------------------------------------------------------
def repair(
    settings: Settings, params: Params | None = None, store: StateStore | None = None
) -> AliasChange | None:
    """Finish (or undo) a promotion or rollback that a crash interrupted; None if none was.

    Finishing is preferred: every write is idempotent, and the intent was recorded only after
    its checks passed. It is undone only if a version it would set no longer exists.
    """
    del params  # accepted for a uniform command signature; the intent names the model
    with _opened(settings, store) as st:
        intent = st.intent()
        if intent is None:
            return None
        before = aliases(intent.model_name)
        targets = [v for v in intent.after.values() if v is not None]
        if all(version_exists(intent.model_name, v) for v in targets):
            _apply(st, intent)
            action = f"repair: finished {intent.action}"
        else:
            restore = {
                alias: v if v is not None and version_exists(intent.model_name, v) else None
                for alias, v in intent.before.items()
            }
            _set_aliases(intent.model_name, restore)
            st.set_intent(None)
            action = f"repair: undid {intent.action}"
        after = aliases(intent.model_name)
        log.warning("%s interrupted at %s: %s → %s", intent.action, intent.at, before, after)
        return AliasChange(action, before, after, f"{action} of {intent.at:%Y-%m-%d %H:%M:%S}")


def start_rollout(
    settings: Settings,
    params: Params,
    challenger_version: str | int | None = None,
    mode: Mode | None = None,
    steps: tuple[float, ...] | list[float] | None = None,
    store: StateStore | None = None,
    actor: str = "hearth",
    reason: str = "",
) -> RolloutState:
    """Start a rollout of `challenger_version` (default: the ``challenger`` alias) against
    the current champion. Checks everything before writing: UnknownVersion, InvalidRollout,
    RolloutConflict leave the registry and the state as they were."""
    name = params.registry.model_name
    with _opened(settings, store) as st:
        repair(settings, params, st)
        current = aliases(name)
        if CHAMPION not in current:
            raise UnknownVersion(f"{name} has no {CHAMPION} to compare a challenger with")
        version = challenger_version if challenger_version is not None else current.get(CHALLENGER)
        if version is None:
            raise InvalidRollout(f"name a challenger version: {name} has no {CHALLENGER} alias")
        version = check_version(name, version)
        state = new_rollout(current[CHAMPION], version, params.rollout, mode=mode, steps=steps)
        started = st.start(
            state, actor, reason or f"v{version} against champion v{state.champion_version}"
        )
        if current.get(CHALLENGER) != version:
            MlflowClient().set_registered_model_alias(name, CHALLENGER, version)
        return started


def promote(
    settings: Settings,
    params: Params,
    challenger_version: str | int | None = None,
    store: StateStore | None = None,
    actor: str = "hearth",
    reason: str = "",
    numbers: dict[str, Scalar] | None = None,
    test: str | None = None,
) -> AliasChange:
    """Make `challenger_version` the champion, keeping the old champion as ``previous``.

    Default version: the running rollout's challenger, else the ``challenger`` alias. Drops
    the ``challenger`` alias when it points at the promoted version, and ends a running
    rollout of that version as promoted (with `reason`, `numbers`, `test` in its history).
    """
    name = params.registry.model_name
    with _opened(settings, store) as st:
        repair(settings, params, st)
        current = aliases(name)
        rollout = st.current()
        running = rollout if rollout is not None and rollout.running else None
        version = challenger_version
        if version is None:
            version = running.challenger_version if running else current.get(CHALLENGER)
        if version is None:
            raise NoActiveRollout(f"nothing to promote: no running rollout and no {CHALLENGER}")
        version = check_version(name, version)
        if current.get(CHAMPION) == version:
            raise InvalidRollout(f"v{version} is already the {CHAMPION} of {name}")
        after: dict[str, str | None] = {}
        if CHAMPION in current:
            after[PREVIOUS] = current[CHAMPION]
        after[CHAMPION] = version
        if current.get(CHALLENGER) == version:
            after[CHALLENGER] = None
        ends = running if running and running.challenger_version == version else None
        intent = PromotionIntent(
            action="promote",
            model_name=name,
            before={alias: current.get(alias) for alias in ALIASES},
            after=after,
            rollout_id=ends.rollout_id if ends else None,
            rollout_status="promoted" if ends else None,
            actor=actor,
            reason=reason or f"v{version} promoted over v{current.get(CHAMPION)}",
            test=test,
            numbers=numbers or {},
        )
        return _execute(st, intent)


def rollback(
    settings: Settings,
    params: Params,
    store: StateStore | None = None,
    actor: str = "hearth",
    reason: str = "",
    numbers: dict[str, Scalar] | None = None,
    test: str | None = None,
) -> AliasChange:
    """Undo: during a rollout, end it (all traffic back to the champion) and drop the
    challenger; otherwise restore ``previous`` as the champion (NoActiveRollout if none)."""
    name = params.registry.model_name
    with _opened(settings, store) as st:
        repair(settings, params, st)
        current = aliases(name)
        rollout = st.current()
        before = {alias: current.get(alias) for alias in ALIASES}
        common = {
            "model_name": name,
            "before": before,
            "actor": actor,
            "test": test,
            "numbers": numbers or {},
        }
        if rollout is not None and rollout.running:
            after: dict[str, str | None] = {}
            if current.get(CHALLENGER) == rollout.challenger_version:
                after[CHALLENGER] = None
            intent = PromotionIntent(
                action="rollback",
                after=after,
                rollout_id=rollout.rollout_id,
                rollout_status="rolled_back",
                reason=reason or f"rollout of v{rollout.challenger_version} rolled back",
                **common,
            )
        elif PREVIOUS in current:
            intent = PromotionIntent(
                action="rollback",
                after={CHAMPION: current[PREVIOUS], PREVIOUS: None},
                reason=reason or f"v{current.get(CHAMPION)} rolled back to v{current[PREVIOUS]}",
                **common,
            )
        else:
            raise NoActiveRollout(f"nothing to roll back: no running rollout, no {PREVIOUS}")
        return _execute(st, intent)
