"""Sticky assignment of customers to the champion or the challenger.

A customer's bucket is a stable hash of (rollout salt, customer id) into `buckets` buckets;
the customer sees the challenger iff its bucket lies below ``percent / 100 * buckets``. So
during one rollout a customer always sees the same variant for the same weight, and raising
the weight only adds customers to the challenger (never moves one back). A new rollout gets
a new salt, so it does not pick the same unlucky customers as the previous one.

`route_for` is pure: `hearth.traffic.follower.Follower` applies it to the snapshot of the
shared state that every serving process keeps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hearth.config import CHALLENGER, CHAMPION, Variant
from hearth.traffic.rollout_state import Served

DEFAULT_BUCKETS = 10_000


def bucket(salt: str, customer_id: str, buckets: int = DEFAULT_BUCKETS) -> int:
    """The customer's bucket in ``[0, buckets)``: the same in every process and on every host.

    BLAKE2b rather than `hash()`, which is salted per process. The salt's length is part of
    the hashed text so that ("ab", "c") and ("a", "bc") cannot collide.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be positive, got {buckets}")
    text = f"{len(salt)}:{salt}:{customer_id}".encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    # 64 bits modulo ≤ 10^6 buckets: the bias is below 1e-13, far under any sampling noise.
    return int.from_bytes(digest, "big") % buckets


def in_challenger(bucket_index: int, challenger_percent: float, buckets: int) -> bool:
    """True iff a customer in `bucket_index` sees the challenger at `challenger_percent` %."""
    # bucket < percent/100 * buckets, multiplied out: no division, so no rounding surprises.
    return bucket_index * 100 < challenger_percent * buckets


def assign(
    salt: str, customer_id: str, challenger_percent: float, buckets: int = DEFAULT_BUCKETS
) -> Variant:
    """The variant that serves `customer_id` at `challenger_percent` % challenger traffic."""
    if in_challenger(bucket(salt, customer_id, buckets), challenger_percent, buckets):
        return CHALLENGER
    return CHAMPION


@dataclass(frozen=True)
class Route:
    """Where one request goes.

    `variant` answers the request and `model_version` is the registry version behind it:
    the champion's when no rollout runs (None only before the first champion is adopted).
    `shadow_version`, in shadow mode only, is the challenger that also scores a copy of the
    request, whose answer is logged and never returned. `rollout_id` ties the answer to a
    rollout in the prediction log. `fallback_version` answers instead when the named version
    fails: a gateway sets it to the champion's (`route_for` leaves it to the caller).
    """

    variant: Variant
    model_version: str | None = None
    shadow_version: str | None = None
    rollout_id: str | None = None
    fallback_version: str | None = None


def route_for(served: Served, customer_id: str, buckets: int = DEFAULT_BUCKETS) -> Route:
    """The route of `customer_id` under `served` (pure: no store, no clock)."""
    state = served.running
    if state is None:
        return Route(CHAMPION, served.champion_version)
    if state.mode == "shadow":
        return Route(CHAMPION, state.champion_version, state.challenger_version, state.rollout_id)
    variant = assign(state.salt, customer_id, state.challenger_percent, buckets)
    version = state.challenger_version if variant == CHALLENGER else state.champion_version
    return Route(variant, version, None, state.rollout_id)
