"""Promotion and rollback: one write to the rollout state, then the MLflow aliases.

The rollout state store is the authority for what serves (`Served`: the champion and the
running rollout); the MLflow aliases are the registry's record of it: ``champion`` serves,
``challenger`` is the candidate, ``previous`` is the champion before the last promotion (what
`rollback_to_previous` restores).

A promotion or rollback is one compare-and-set write to the state that also records the
alias writes still to be made (a `PromotionIntent`): serving follows at that write, whether
or not MLflow answers. The aliases follow afterwards (each write idempotent), and the intent
is cleared. `repair` — run at the start of every rollout command, by `hearth serve`/`build`/
`up`, by `hearth rollout repair`, and by the admin API after a rollback — finishes a
leftover intent (or undoes it when a version it names has disappeared), adopts the
registry's champion into a state that has none yet, and otherwise makes the aliases follow
the state.

The writes, each a compare-and-set on the rollout id or the champion:

- promote a running rollout: end it as promoted (the state's champion becomes the
  challenger in the same write); then ``previous`` ← old champion, ``champion`` ← new,
  drop ``challenger``;
- promote with no rollout running: set the state's champion; then the aliases as above;
- rollback: end the running rollout as rolled back (every replica routes to the champion
  within a second); then drop ``challenger`` (if it still names the rolled-back version).
  Nothing reads MLflow before the write, so it works with the registry down. With no
  rollout running it changes nothing and says so (a retry is harmless);
- rollback to previous (explicit, naming the champion it expects to replace): the state's
  champion ← ``previous``; then ``champion`` ← ``previous``, drop ``previous``.

A decision that carries the rollout id it judged (the rollout flow's) is refused with
RolloutConflict when that rollout has already ended another way, so a stale automatic
promote never undoes a human rollback, nor a stale rollback a promotion.

Once the aliases are written, the model versions' descriptions gain a line saying when
and why each was promoted, replaced or rolled back (`hearth.rollout.version_notes`; best
effort, never on the path of the state write, so a rollback with MLflow down is as fast as
ever).

The registry is reached through `hearth.rollout.registry_client`: a tracking server over its
REST API (no MLflow in the process: the gateway image has none), an embedded one through
MLflow's client, imported on its first call (`hearth rollback` must start in well under a
second).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

from hearth.config import CHALLENGER, CHAMPION, PREVIOUS, Settings
from hearth.params import Params
from hearth.rollout.registry_client import ALIASES, RegistryClient, using_registry
from hearth.rollout.registry_reads import check_version
from hearth.rollout.version_notes import describe
from hearth.traffic.rollout_state import (
    Decision,
    InvalidRollout,
    Mode,
    NoActiveRollout,
    PromotionIntent,
    RolloutConflict,
    RolloutState,
    Served,
    UnknownVersion,
    new_rollout,
)
from hearth.traffic.state_store import StateStore
from hearth.traffic.stores import using_state_store

log = logging.getLogger(__name__)

AliasSync = Literal["updated", "pending", "unchanged"]
HEARTH = Decision()  # the default decision: by "hearth", no reason given


@dataclass(frozen=True)
class AliasChange:
    """What a registry command did: the aliases before and after, and why. `aliases`:
    ``pending`` when the state changed but the registry did not answer (repaired later)."""

    action: str
    before: dict[str, str]
    after: dict[str, str]
    reason: str = ""
    aliases: AliasSync = "updated"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RolloutEnd:
    """What `rollback` did. `changed` is False when no rollout was running (a repeated
    rollback: nothing changed, `message` says why); `aliases` says whether the registry
    follows yet (``pending``: recorded, made when MLflow answers)."""

    changed: bool
    message: str
    rollout_id: str | None
    status: str | None
    champion: str | None
    aliases: AliasSync

    def to_dict(self) -> dict[str, Any]:
        return {"action": "rollback", **asdict(self)}


# -- applying an intent ----------------------------------------------------------------------
def _set_aliases(
    reg: RegistryClient,
    model_name: str,
    after: dict[str, str | None],
    only_if: dict[str, str] | None = None,
) -> None:
    current = reg.aliases(model_name) if only_if else {}
    for alias, version in after.items():
        if only_if and alias in only_if and current.get(alias) != only_if[alias]:
            continue  # the alias moved on meanwhile: this write is no longer wanted
        if version is None:
            # Deleting an absent alias succeeds in MLflow: safe to repeat in a repair.
            reg.delete_alias(model_name, alias)
        else:
            reg.set_alias(model_name, alias, version)


def _clear(store: StateStore, intent: PromotionIntent) -> None:
    """Clear `intent` unless a newer one was recorded meanwhile (it has our writes too)."""
    with contextlib.suppress(RolloutConflict):
        store.set_intent(None, expected=intent)


def _apply(reg: RegistryClient, store: StateStore, intent: PromotionIntent) -> None:
    """Make the alias writes of `intent` (each idempotent), clear it, then say in the model
    versions' descriptions what happened to them (best effort)."""
    _set_aliases(reg, intent.model_name, intent.after, intent.only_if)
    _clear(store, intent)
    describe(reg, intent)


def _follow(reg: RegistryClient, store: StateStore, intent: PromotionIntent | None) -> AliasSync:
    """Make the aliases of a change just written follow it, if the registry answers now."""
    if intent is None:
        return "unchanged"
    try:
        _apply(reg, store, intent)
    except Exception as exc:  # the state is written: the registry is repaired later
        log.warning("%s: aliases not updated (%s); recorded for repair", intent.action, exc)
        return "pending"
    return "updated"


@contextmanager
def _opened(
    settings: Settings, store: StateStore | None
) -> Iterator[tuple[StateStore, RegistryClient]]:
    """`store`, or one opened from `settings` (and closed afterwards), and the registry."""
    with using_state_store(settings, store) as st, using_registry(settings) as reg:
        yield st, reg


# -- commands --------------------------------------------------------------------------------
def repair(
    settings: Settings, params: Params | None = None, store: StateStore | None = None
) -> AliasChange | None:
    """Bring the state and the registry's aliases into agreement; None if they already were.

    A pending intent (the alias writes of a promotion or rollback the state already made) is
    finished, or undone if a version it would set no longer exists. With no intent pending
    (and `params` given): a state without a champion adopts the registry's ``champion``
    alias; aliases that disagree with the state are set from it (the state wins; logged as
    a warning).
    """
    with _opened(settings, store) as (st, reg):
        return _repair(st, reg, params)


def _repair(st: StateStore, reg: RegistryClient, params: Params | None) -> AliasChange | None:
    intent = st.intent()
    if intent is not None:
        return _finish(st, reg, intent)
    if params is None:
        return None
    return _align(st, reg, params.registry.model_name)


def reconciled(settings: Settings, params: Params, store: StateStore | None = None) -> Served:
    """What serves, once `repair` has run: for `hearth serve`/`build`/`up`, the bench and the
    demo before they serve (the first call adopts the registry's champion)."""
    with _opened(settings, store) as (st, reg):
        _repair(st, reg, params)
        return st.served()


def _finish(st: StateStore, reg: RegistryClient, intent: PromotionIntent) -> AliasChange:
    before = reg.aliases(intent.model_name)
    targets = [v for v in [*intent.after.values(), intent.champion] if v is not None]
    if all(reg.version_exists(intent.model_name, v) for v in targets):
        _apply(reg, st, intent)
        action = f"repair: finished {intent.action}"
    else:
        restore = {
            alias: v if v is not None and reg.version_exists(intent.model_name, v) else None
            for alias, v in intent.before.items()
        }
        _undo_champion(st, reg, intent, restore.get(CHAMPION))
        _set_aliases(reg, intent.model_name, restore)
        _clear(st, intent)
        action = f"repair: undid {intent.action}"
    after = reg.aliases(intent.model_name)
    log.warning("%s of %s repaired: %s → %s", intent.action, intent.at, before, after)
    return AliasChange(action, before, after, f"{action} of {intent.at:%Y-%m-%d %H:%M:%S}")


def _undo_champion(
    st: StateStore, reg: RegistryClient, intent: PromotionIntent, restore: str | None
) -> None:
    """The state already names a version that has vanished: serve `restore` again."""
    served = st.served()
    champion = served.champion_version
    if restore is None or served.running is not None or champion is None or champion == restore:
        return
    if not reg.version_exists(intent.model_name, champion):
        st.set_champion(restore, intent.actor, "repair", f"undid {intent.action}: v{champion} "
                        "no longer exists", expected=champion)  # fmt: skip


def _align(st: StateStore, reg: RegistryClient, name: str) -> AliasChange | None:
    current = reg.aliases(name)
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
    _set_aliases(reg, name, fix)
    after = reg.aliases(name)
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
    with _opened(settings, store) as (st, reg):
        _repair(st, reg, params)
        current = reg.aliases(name)
        champion = st.served().champion_version
        if champion is None:
            raise UnknownVersion(f"{name} has no {CHAMPION} to compare a challenger with")
        version = challenger_version if challenger_version is not None else current.get(CHALLENGER)
        if version is None:
            raise InvalidRollout(f"name a challenger version: {name} has no {CHALLENGER} alias")
        version = check_version(reg, name, version)
        state = new_rollout(champion, version, params.rollout, mode=mode, steps=steps)
        started = st.start(
            state, actor, reason or f"v{version} against champion v{state.champion_version}"
        )
        if current.get(CHALLENGER) != version:
            _set_aliases(reg, name, {CHALLENGER: version})
        return started


def promote(
    settings: Settings,
    params: Params,
    decision: Decision = HEARTH,
    challenger_version: str | int | None = None,
    rollout_id: str | None = None,
    store: StateStore | None = None,
) -> AliasChange:
    """Make `challenger_version` the champion, keeping the old champion as ``previous``;
    serving follows at once.

    Default version: the running rollout's challenger, else the ``challenger`` alias. Drops
    the ``challenger`` alias when it points at the promoted version, and ends a running
    rollout of that version as promoted (with the `decision` in its history).
    RolloutConflict when another version's rollout is running (end it first), or when
    `rollout_id` (the rollout this decision judged) is not the running one: it ended
    meanwhile, and a stale promotion must not override that.
    """
    name = params.registry.model_name
    with _opened(settings, store) as (st, reg):
        _repair(st, reg, params)
        current = reg.aliases(name)
        served = st.served()
        running, champion = served.running, served.champion_version
        _check_judged(served, rollout_id, "promoted")
        version = challenger_version
        if version is None:
            version = running.challenger_version if running else current.get(CHALLENGER)
        if version is None:
            raise NoActiveRollout(f"nothing to promote: no running rollout and no {CHALLENGER}")
        version = check_version(reg, name, version)
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
        decision = decision.because(f"v{version} promoted over v{champion}")
        intent = PromotionIntent(
            action="promote",
            model_name=name,
            before={alias: current.get(alias) for alias in ALIASES},
            after=after,
            rollout_id=running.rollout_id if running else None,
            rollout_status="promoted" if running else None,
            champion=None if running else version,
            expected_champion=None if running else champion,
            **decision.fields(),
        )
        if running is not None:
            st.update(
                lambda s: s.ended("promoted"), action="promote",
                rollout_id=running.rollout_id, intent=intent, **decision.fields(),
            )  # fmt: skip
        else:
            st.set_champion(
                version, decision.actor, "promote", decision.reason, expected=champion,
                intent=intent,
            )  # fmt: skip
        synced = _follow(reg, st, intent)
        log.info("promote: %s → %s (%s)", current, intent.after, decision.reason)
        return AliasChange("promote", current, _after(reg, name, current, intent, synced),
                           decision.reason, synced)  # fmt: skip


def _after(
    reg: RegistryClient,
    name: str,
    before: dict[str, str],
    intent: PromotionIntent,
    synced: AliasSync,
) -> dict[str, str]:
    if synced == "updated":
        return reg.aliases(name)
    planned = {k: v for k, v in (before | intent.after).items() if v is not None}
    return dict(planned)


def _check_judged(served: Served, rollout_id: str | None, ending: str) -> None:
    """RolloutConflict when a decision on rollout `rollout_id` comes after it has ended."""
    if rollout_id is None:
        return
    running, latest = served.running, served.rollout
    if running is not None and running.rollout_id == rollout_id:
        return
    if latest is not None and latest.rollout_id == rollout_id:
        raise RolloutConflict(
            f"rollout {rollout_id} already ended as {latest.status}: not {ending} (a newer "
            "decision stands)"
        )
    raise RolloutConflict(f"rollout {rollout_id} is not the running one: not {ending}")


def rollback(
    settings: Settings,
    params: Params,
    decision: Decision = HEARTH,
    rollout_id: str | None = None,
    store: StateStore | None = None,
    sync_aliases: bool = False,
) -> RolloutEnd:
    """End the running rollout as rolled back: one write to the state, and every gateway
    routes all traffic to the champion within a second. MLflow is not read before it.

    The ``challenger`` alias is dropped (if it still names the rolled-back version) when
    `sync_aliases` and the registry answers; otherwise that write is left recorded for
    `repair`. With no rollout running this changes nothing and says so (`changed` False),
    so a repeated rollback never demotes a champion: undoing a promotion is
    `rollback_to_previous`. With `rollout_id` (the rollout the decision judged): a no-op if
    it already ended as rolled back, RolloutConflict if it ended another way (promoted).
    StateUnavailable when the write could not be made (nothing took effect).
    """
    name = params.registry.model_name
    with using_state_store(settings, store) as st:
        served = st.served()
        running = served.running
        if rollout_id is not None and not (running and running.rollout_id == rollout_id):
            latest = served.rollout
            if latest is None or latest.rollout_id != rollout_id or latest.status == "promoted":
                _check_judged(served, rollout_id, "rolled back")
            running = None  # it already ended as rolled back or aborted: nothing to do
        if running is None:
            return _nothing_to_end(served)
        decision = decision.because(f"rollout of v{running.challenger_version} rolled back")
        intent = PromotionIntent(
            action="rollback",
            model_name=name,
            before={},
            after={CHALLENGER: None},
            only_if={CHALLENGER: running.challenger_version},
            rollout_id=running.rollout_id,
            rollout_status="rolled_back",
            **decision.fields(),
        )
        try:
            ended = st.update(
                lambda s: s.ended("rolled_back"), action="rollback",
                rollout_id=running.rollout_id, intent=intent, **decision.fields(),
            )  # fmt: skip
        except (NoActiveRollout, RolloutConflict):
            # Ended by someone else between the read and the write: the same as a repeat.
            if rollout_id is None:
                return _nothing_to_end(st.served())
            raise
        log.info("rollout %s rolled back: %s", ended.rollout_id, decision.reason)
        synced: AliasSync = "pending"
        if sync_aliases:
            with using_registry(settings) as reg:
                synced = _follow(reg, st, st.intent())
        return RolloutEnd(
            changed=True,
            message=f"rollout {ended.rollout_id} rolled back: all traffic to champion "
            f"v{ended.champion_version}",
            rollout_id=ended.rollout_id,
            status=ended.status,
            champion=ended.champion_version,
            aliases=synced,
        )


def _nothing_to_end(served: Served) -> RolloutEnd:
    latest: RolloutState | None = served.rollout
    if latest is None:
        message = "no rollout has run yet; nothing changed"
    else:
        message = f"rollout {latest.rollout_id} already ended as {latest.status}; nothing changed"
    return RolloutEnd(
        changed=False,
        message=message,
        rollout_id=latest.rollout_id if latest else None,
        status=latest.status if latest else None,
        champion=served.champion_version,
        aliases="unchanged",
    )


def rollback_to_previous(
    settings: Settings,
    params: Params,
    expect_champion: str | int,
    decision: Decision = HEARTH,
    store: StateStore | None = None,
) -> AliasChange:
    """Undo the last promotion: the ``previous`` version becomes the champion again, in
    place of `expect_champion` (compare-and-set: RolloutConflict when that is no longer the
    champion, so a retry or a stale request never demotes a newer champion). Also refused
    while a rollout runs (`rollback` ends it) and when there is no ``previous``."""
    name = params.registry.model_name
    expected = str(expect_champion)
    with _opened(settings, store) as (st, reg):
        _repair(st, reg, params)
        current = reg.aliases(name)
        served = st.served()
        if served.running is not None:
            raise RolloutConflict(
                f"rollout {served.running.rollout_id} is running: end it with `hearth "
                "rollback` (POST /admin/rollback) first"
            )
        champion = served.champion_version
        if champion != expected:
            raise RolloutConflict(
                f"v{expected} is not the champion (v{champion} is): nothing reverted"
            )
        previous = current.get(PREVIOUS)
        if previous is None or previous == champion:
            raise RolloutConflict(f"nothing to revert to: {name} has no {PREVIOUS} version")
        decision = decision.because(f"v{champion} rolled back to v{previous}")
        intent = PromotionIntent(
            action="rollback",
            model_name=name,
            before={alias: current.get(alias) for alias in ALIASES},
            after={CHAMPION: previous, PREVIOUS: None},
            champion=previous,
            expected_champion=champion,
            **decision.fields(),
        )
        st.set_champion(
            previous, decision.actor, "rollback", decision.reason, expected=champion,
            intent=intent,
        )  # fmt: skip
        synced = _follow(reg, st, intent)
        log.info("rollback to previous: v%s → v%s (%s)", champion, previous, decision.reason)
        return AliasChange("rollback", current, _after(reg, name, current, intent, synced),
                           decision.reason, synced)  # fmt: skip
