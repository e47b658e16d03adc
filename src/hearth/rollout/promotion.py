"""Promotion and rollback: the rollout state first, then the MLflow aliases, crash-safe.

The rollout state store is the authority for what serves (`Served`: the champion and the
running rollout); the MLflow aliases are the registry's record of it: ``champion`` serves,
``challenger`` is the candidate, ``previous`` is the champion before the last promotion (what
a rollback restores). A promotion or rollback is several writes (the state, then aliases),
and a crash can stop it half way. So each one first records a `PromotionIntent` in the state
store, then makes its writes (each idempotent), then clears the intent. `repair` — run at
the start of every rollout command, and by `hearth serve`/`build`/`up` — finishes a leftover
intent (or undoes it when a version it names has disappeared), adopts the registry's
champion into a state that has none yet, and otherwise makes the aliases follow the state.

Order of writes — the state first, so serving follows at the first write:

- promote a running rollout: end it as promoted (the state's champion becomes the
  challenger in the same write), then ``previous`` ← old champion, ``champion`` ← new,
  drop ``challenger``;
- promote with no rollout running: set the state's champion (compare-and-set), then the
  aliases as above;
- rollback during a rollout: end it as rolled back (every replica routes to the champion
  within a second), then drop ``challenger``;
- rollback after a promotion: the state's champion ← ``previous`` (compare-and-set), then
  ``champion`` ← ``previous``, drop ``previous``.
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
from hearth.config import CHALLENGER, CHAMPION, PREVIOUS, Params, Settings
from hearth.traffic.rollout_state import (
    InvalidRollout,
    Mode,
    NoActiveRollout,
    PromotionIntent,
    RolloutConflict,
    RolloutState,
    Scalar,
    Served,
    UnknownVersion,
    new_rollout,
)
from hearth.traffic.state_store import (
    StateStore,
)
from hearth.traffic.stores import using_state_store

log = logging.getLogger(__name__)

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


def _set_champion(store: StateStore, intent: PromotionIntent) -> None:
    champion = intent.champion
    if champion is None or store.served().champion_version == champion:
        return  # nothing to set, or an earlier attempt set it
    store.set_champion(
        champion, intent.actor, intent.action, intent.reason, expected=intent.expected_champion
    )


def _apply(store: StateStore, intent: PromotionIntent) -> None:
    """Make every write of `intent` (each idempotent): the state, the aliases; then clear it."""
    _end_rollout(store, intent)
    _set_champion(store, intent)
    _set_aliases(intent.model_name, intent.after)
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
    with using_state_store(settings, store) as st:
        yield st


# -- commands --------------------------------------------------------------------------------
def repair(
    settings: Settings, params: Params | None = None, store: StateStore | None = None
) -> AliasChange | None:
    """Bring the state and the registry's aliases into agreement; None if they already were.

    A promotion or rollback that a crash interrupted is finished (preferred: every write is
    idempotent, and the intent was recorded only after its checks passed), or undone if a
    version it would set no longer exists. With no intent pending (and `params` given): a
    state without a champion adopts the registry's ``champion`` alias; aliases that disagree
    with the state are set from it (the state wins; logged as a warning).
    """
    with _opened(settings, store) as st:
        intent = st.intent()
        if intent is not None:
            return _finish(st, intent)
        if params is None:
            return None
        return _align(st, params.registry.model_name)


def reconciled(settings: Settings, params: Params, store: StateStore | None = None) -> Served:
    """What serves, once `repair` has run: for `hearth serve`/`build`/`up`, the bench and the
    demo before they serve (the first call adopts the registry's champion)."""
    with _opened(settings, store) as st:
        repair(settings, params, st)
        return st.served()


def _finish(st: StateStore, intent: PromotionIntent) -> AliasChange:
    before = aliases(intent.model_name)
    targets = [v for v in [*intent.after.values(), intent.champion] if v is not None]
    if all(version_exists(intent.model_name, v) for v in targets):
        _apply(st, intent)
        action = f"repair: finished {intent.action}"
    else:
        restore = {
            alias: v if v is not None and version_exists(intent.model_name, v) else None
            for alias, v in intent.before.items()
        }
        _undo_champion(st, intent, restore.get(CHAMPION))
        _set_aliases(intent.model_name, restore)
        st.set_intent(None)
        action = f"repair: undid {intent.action}"
    after = aliases(intent.model_name)
    log.warning("%s interrupted at %s: %s → %s", intent.action, intent.at, before, after)
    return AliasChange(action, before, after, f"{action} of {intent.at:%Y-%m-%d %H:%M:%S}")


def _undo_champion(st: StateStore, intent: PromotionIntent, restore: str | None) -> None:
    """The state already names a version that has vanished: serve `restore` again."""
    served = st.served()
    champion = served.champion_version
    if restore is None or served.running is not None or champion is None or champion == restore:
        return
    if not version_exists(intent.model_name, champion):
        st.set_champion(restore, intent.actor, "repair", f"undid {intent.action}: v{champion} "
                        "no longer exists", expected=champion)  # fmt: skip


def _align(st: StateStore, name: str) -> AliasChange | None:
    current = aliases(name)
    served = st.served()
    if served.champion_version is None:
        if CHAMPION not in current:
            return None  # nothing registered as champion yet: nothing serves
        reason = f"adopted the registry's {CHAMPION} v{current[CHAMPION]}"
        with contextlib.suppress(RolloutConflict):  # another process adopted it first
            st.set_champion(current[CHAMPION], "hearth", "adopt", reason, expected=None)
        log.info("%s into the rollout state", reason)
        return AliasChange("adopt", current, current, reason)
    champion = served.champion
    if current.get(CHAMPION) == champion:
        return None
    # Only the champion: ``challenger`` may name a newer candidate registered meanwhile.
    fix: dict[str, str | None] = {CHAMPION: champion}
    if current.get(CHALLENGER) == champion:
        fix[CHALLENGER] = None  # the state's champion is no longer a candidate
    log.warning("registry aliases %s disagree with the rollout state: setting %s", current, fix)
    _set_aliases(name, fix)
    after = aliases(name)
    return AliasChange("reconcile", current, after, "the aliases follow the rollout state")


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
        champion = st.served().champion_version
        if champion is None:
            raise UnknownVersion(f"{name} has no {CHAMPION} to compare a challenger with")
        version = challenger_version if challenger_version is not None else current.get(CHALLENGER)
        if version is None:
            raise InvalidRollout(f"name a challenger version: {name} has no {CHALLENGER} alias")
        version = check_version(name, version)
        state = new_rollout(champion, version, params.rollout, mode=mode, steps=steps)
        started = st.start(
            state, actor, reason or f"v{version} against champion v{state.champion_version}"
        )
        if current.get(CHALLENGER) != version:
            MlflowClient().set_registered_model_alias(name, CHALLENGER, version)
        return started


def promote(
    settings: Settings,
    params: Params,
    actor: str = "hearth",
    reason: str = "",
    numbers: dict[str, Scalar] | None = None,
    test: str | None = None,
    challenger_version: str | int | None = None,
    store: StateStore | None = None,
) -> AliasChange:
    """Make `challenger_version` the champion, keeping the old champion as ``previous``;
    serving follows at once.

    Default version: the running rollout's challenger, else the ``challenger`` alias. Drops
    the ``challenger`` alias when it points at the promoted version, and ends a running
    rollout of that version as promoted (with `reason`, `numbers`, `test` in its history).
    RolloutConflict when another version's rollout is running (end it first).
    """
    name = params.registry.model_name
    with _opened(settings, store) as st:
        repair(settings, params, st)
        current = aliases(name)
        served = st.served()
        running, champion = served.running, served.champion_version
        version = challenger_version
        if version is None:
            version = running.challenger_version if running else current.get(CHALLENGER)
        if version is None:
            raise NoActiveRollout(f"nothing to promote: no running rollout and no {CHALLENGER}")
        version = check_version(name, version)
        if champion == version:
            raise InvalidRollout(f"v{version} is already the {CHAMPION} of {name}")
        if running is not None and running.challenger_version != version:
            raise RolloutConflict(
                f"rollout {running.rollout_id} of v{running.challenger_version} is running: "
                f"promote or roll it back before promoting v{version}"
            )
        after: dict[str, str | None] = {}
        if champion is not None:
            after[PREVIOUS] = champion
        after[CHAMPION] = version
        if current.get(CHALLENGER) == version:
            after[CHALLENGER] = None
        intent = PromotionIntent(
            action="promote",
            model_name=name,
            before={alias: current.get(alias) for alias in ALIASES},
            after=after,
            rollout_id=running.rollout_id if running else None,
            rollout_status="promoted" if running else None,
            champion=None if running else version,
            expected_champion=None if running else champion,
            actor=actor,
            reason=reason or f"v{version} promoted over v{champion}",
            test=test,
            numbers=numbers or {},
        )
        return _execute(st, intent)


def rollback(
    settings: Settings,
    params: Params,
    actor: str = "hearth",
    reason: str = "",
    numbers: dict[str, Scalar] | None = None,
    test: str | None = None,
    store: StateStore | None = None,
) -> AliasChange:
    """Undo: during a rollout, end it (every gateway routes to the champion within a second)
    and drop the challenger; otherwise restore ``previous`` as the champion (NoActiveRollout
    if none)."""
    name = params.registry.model_name
    with _opened(settings, store) as st:
        repair(settings, params, st)
        current = aliases(name)
        served = st.served()
        rollout = served.running
        before = {alias: current.get(alias) for alias in ALIASES}
        common = {
            "model_name": name,
            "before": before,
            "actor": actor,
            "test": test,
            "numbers": numbers or {},
        }
        if rollout is not None:
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
            # After a promotion: the state's champion goes back to ``previous``.
            intent = PromotionIntent(
                action="rollback",
                after={CHAMPION: current[PREVIOUS], PREVIOUS: None},
                champion=current[PREVIOUS],
                expected_champion=served.champion_version,
                reason=reason or f"v{served.champion_version} rolled back to v{current[PREVIOUS]}",
                **common,
            )
        else:
            raise NoActiveRollout(f"nothing to roll back: no running rollout, no {PREVIOUS}")
        return _execute(st, intent)
