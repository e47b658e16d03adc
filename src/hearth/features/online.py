"""Online features: one incoming transaction against its customer's stored state.

This is the serving hot path, so it is plain Python over small lists (no pandas, no
DuckDB). It computes exactly `hearth.features.definitions` from the same constants as the
offline SQL in `hearth.features.offline`; `tests/unit/test_features_parity.py` proves that
replaying the clean transactions through `online_features` / `update_state` reproduces the
offline Parquet. `observe_state` is the store's read-modify-write; it counts a transaction
once per transaction_id, so a client's retry never inflates the velocity features.

Timestamps are handled as whole seconds since the Unix epoch (UTC): the raw contract has
second resolution, and "same second" is what makes two transactions a tie.
"""

from __future__ import annotations

import bisect
import calendar
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from hearth.config import Settings
from hearth.features.definitions import (
    AVG_WINDOW,
    EARTH_RADIUS_KM,
    HISTORY_HORIZON,
    MERCHANT_WINDOW,
    SECONDS_SINCE_LAST_CAP,
    WINDOWS,
)
from hearth.schema import (
    CHANNELS,
    EUR_RATES,
    MERCHANT_CATEGORIES,
    parse_timestamp,
)

# Version of the JSON form (`CustomerState.to_dict`), the online store's stored form up to
# version 1; the store now writes `hearth.features.state_codec`'s version 2 and reads both.
STATE_VERSION = 1

# -- the input domain: what serving accepts and the online store writes -------------------
# Ids are keys (Redis keys, log columns): a letter or digit, then letters, digits and
# ``_ . : @ -``; no whitespace, no control characters, at most MAX_ID_LENGTH characters.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$"
MAX_ID_LENGTH = 128
ID_FIELDS = ("transaction_id", "customer_id", "merchant_id", "device_id")
# Defaults of Settings.max_amount and Settings.max_clock_skew_s.
MAX_AMOUNT = 1e9
MAX_CLOCK_SKEW_S = 300.0
_ID = re.compile(ID_PATTERN)


def id_problem(value: object) -> str | None:
    """Why `value` is not an acceptable id, or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value or len(value) > MAX_ID_LENGTH:
        return f"must be 1 to {MAX_ID_LENGTH} characters long, got {len(value)}"
    if not _ID.fullmatch(value):
        return f"must match {ID_PATTERN} (letters, digits, _ . : @ -), got {value[:40]!r}"
    return None


class InvalidTransaction(ValueError):
    """A transaction outside the input domain; `problems` are (field, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))
        self.problems = problems


@dataclass(frozen=True)
class InputDomain:
    """The transactions serving accepts and the online store writes, beyond `Transaction`'s
    own rules: ids by ID_PATTERN, amount at most `max_amount` (in its currency), timestamp
    at most `max_ahead_s` ahead of `clock` and, when `max_behind_s` is set, at most that far
    behind it. A far-future timestamp would become the customer's newest entry and empty
    every later transaction's velocity windows; a huge amount overflows the model's sums.
    """

    max_amount: float = MAX_AMOUNT
    max_ahead_s: float = MAX_CLOCK_SKEW_S
    max_behind_s: float | None = None
    clock: Callable[[], float] = time.time

    @classmethod
    def from_settings(cls, settings: Settings) -> InputDomain:
        """The domain `settings` configure (HEARTH_MAX_AMOUNT, HEARTH_MAX_CLOCK_SKEW_S,
        HEARTH_MAX_TRANSACTION_AGE_S; see there for the default behind the clock)."""
        behind = settings.max_transaction_age_s
        if behind is None and settings.env == "production":
            behind = float(_HORIZON_S)
        return cls(settings.max_amount, settings.max_clock_skew_s, behind)

    def problems(self, txn: Transaction) -> list[tuple[str, str]]:
        found = [(name, p) for name in ID_FIELDS if (p := id_problem(getattr(txn, name)))]
        if not (math.isfinite(txn.amount) and 0 < txn.amount <= self.max_amount):
            found.append(("amount", f"must be > 0 and <= {self.max_amount:g}, got {txn.amount!r}"))
        now, ts = self.clock(), epoch_seconds(txn.timestamp)
        if ts > now + self.max_ahead_s:
            found.append(
                ("timestamp", f"more than {self.max_ahead_s:g} s ahead of the server's clock")
            )
        elif self.max_behind_s is not None and ts < now - self.max_behind_s:
            found.append(
                ("timestamp", f"more than {self.max_behind_s:g} s behind the server's clock")
            )
        return found

    def state_problems(self, state: CustomerState) -> list[str]:
        """Why `state` must not be stored (a value non-finite or out of the domain), or []."""
        found = []
        max_eur = self.max_amount * max(EUR_RATES.values())
        if not all(math.isfinite(a) and 0 < a <= max_eur for a in state.amounts):
            found.append(f"history amounts must be finite, > 0 and <= {max_eur:g} EUR")
        latest = self.clock() + self.max_ahead_s
        times = [*state.times, *state.devices.values()]
        if state.last_timestamp is not None:
            times.append(state.last_timestamp)
        if any(t > latest for t in times):
            found.append(f"a timestamp is more than {self.max_ahead_s:g} s ahead of the clock")
        if state.home is not None and home_location(*state.home) is None:
            found.append(f"home {state.home!r} is not a finite latitude/longitude")
        return found

    def check(self, txn: Transaction) -> Transaction:
        """`txn` when it is inside the domain, else InvalidTransaction naming each problem."""
        found = self.problems(txn)
        if found:
            raise InvalidTransaction(found)
        return txn


def window_seconds(window: timedelta) -> int:
    """A window length in whole seconds (timestamps have second resolution)."""
    seconds = window.total_seconds()
    if seconds != int(seconds) or seconds <= 0:
        raise ValueError(f"feature windows must be a positive whole number of seconds: {window}")
    return int(seconds)


_WINDOWS_S: tuple[tuple[str, int], ...] = tuple(
    (name, window_seconds(length)) for name, length in WINDOWS.items()
)
_AVG_S = window_seconds(AVG_WINDOW)
_MERCHANT_S = window_seconds(MERCHANT_WINDOW)
_HORIZON_S = window_seconds(HISTORY_HORIZON)
_CAP = float(SECONDS_SINCE_LAST_CAP)
_CHANNELS = frozenset(CHANNELS)
_CATEGORIES = frozenset(MERCHANT_CATEGORIES)


def epoch_seconds(ts: datetime) -> int:
    """Whole seconds since the epoch; a naive datetime is taken as UTC (the raw contract)."""
    # utctimetuple() converts aware datetimes and leaves naive ones as they are.
    return calendar.timegm(ts.utctimetuple())


def home_location(latitude: object, longitude: object) -> tuple[float, float] | None:
    """A usable home (finite, in range) or None: the rule the ETL applies to customers.csv."""
    try:
        lat, lon = float(latitude), float(longitude)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    if abs(lat) > 90 or abs(lon) > 180:
        return None
    return (lat, lon)


@dataclass(frozen=True, slots=True)
class Transaction:
    """One transaction to score: the raw fields (schema.TRANSACTION_FIELDS), typed.

    Construction enforces the same rules as the ETL's quarantine, so serving never computes
    features for a transaction that offline would have rejected.
    """

    transaction_id: str
    timestamp: datetime
    customer_id: str
    merchant_id: str
    merchant_category: str
    amount: float
    currency: str
    channel: str
    device_id: str
    latitude: float
    longitude: float

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise InvalidTransaction(problems)

    def _problems(self) -> Iterator[tuple[str, str]]:
        for name in ID_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                yield name, "must be a non-empty string"
        if not isinstance(self.timestamp, datetime):
            yield "timestamp", "must be a datetime"
        if not (math.isfinite(self.amount) and self.amount > 0):
            yield "amount", f"must be a finite positive number, got {self.amount!r}"
        if self.currency not in EUR_RATES:
            yield "currency", f"unknown {self.currency!r}, expected one of {sorted(EUR_RATES)}"
        if self.channel not in _CHANNELS:
            yield "channel", f"unknown {self.channel!r}, expected one of {list(CHANNELS)}"
        if self.merchant_category not in _CATEGORIES:
            yield "merchant_category", f"unknown {self.merchant_category!r}"
        for name, bound in (("latitude", 90), ("longitude", 180)):
            value = getattr(self, name)
            if not (math.isfinite(value) and abs(value) <= bound):
                yield name, f"must be a finite number within ±{bound}, got {value!r}"

    @property
    def amount_eur(self) -> float:
        return self.amount * EUR_RATES[self.currency]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Transaction:
        """From a dict of raw fields; a string timestamp must follow schema.TIMESTAMP_FORMAT."""
        ts = data["timestamp"]
        if isinstance(ts, str):
            ts = parse_timestamp(ts)
        elif isinstance(ts, pd.Timestamp):
            ts = ts.to_pydatetime()
        return cls(
            transaction_id=str(data["transaction_id"]),
            timestamp=ts,
            customer_id=str(data["customer_id"]),
            merchant_id=str(data["merchant_id"]),
            merchant_category=str(data["merchant_category"]),
            amount=float(data["amount"]),
            currency=str(data["currency"]),
            channel=str(data["channel"]),
            device_id=str(data["device_id"]),
            latitude=float(data["latitude"]),
            longitude=float(data["longitude"]),
        )


@dataclass(slots=True)
class CustomerState:
    """What the online store keeps per customer; JSON-serialisable via to_dict/from_dict.

    - ``home``: (latitude, longitude) from the customer master data, or None if unknown;
    - history, as four parallel lists sorted by time (so windows are found by bisection):
      ``times`` (epoch seconds), ``amounts`` (EUR), ``merchants`` and ``ids`` (the
      transaction_id, so a retried transaction is recognised and never counted twice; ""
      for entries stored before ids were kept), pruned to definitions.HISTORY_HORIZON
      before the newest transaction;
    - ``devices``: device_id → epoch seconds when the customer first used it (kept forever:
      "new device" means never seen before);
    - ``last_timestamp``: epoch seconds of the newest transaction applied, or None;
    - ``cold_start_id``: the transaction whose observe found no stored state, so a retry of
      it answers cold_start=True again (None for states built by materialisation).

    A state built without ``ids`` (by hand, or from older code) gets "" for every entry.
    """

    home: tuple[float, float] | None = None
    times: list[int] = field(default_factory=list)
    amounts: list[float] = field(default_factory=list)
    merchants: list[str] = field(default_factory=list)
    devices: dict[str, int] = field(default_factory=dict)
    last_timestamp: int | None = None
    ids: list[str] = field(default_factory=list)
    cold_start_id: str | None = None
    # `ids` as a set, built on the first lookup and kept in step by `apply_entry` (the only code
    # that changes a state's ids): a lookup is O(1) instead of a scan of the history.
    _id_set: set[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.ids and self.times:
            self.ids = [""] * len(self.times)
        if not len(self.times) == len(self.amounts) == len(self.merchants) == len(self.ids):
            raise ValueError(
                "history lists differ in length: "
                f"{len(self.times)} times, {len(self.amounts)} amounts, "
                f"{len(self.merchants)} merchants, {len(self.ids)} ids"
            )

    @property
    def history(self) -> list[tuple[int, float, str]]:
        """(epoch seconds, amount_eur, merchant_id) of the kept transactions, oldest first."""
        return list(zip(self.times, self.amounts, self.merchants, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (version 1, as the online store wrote it before `state_codec`'s
        version 2); ids and cold_start_id are extra keys, written only when known.

        Extra keys rather than a fourth item per history entry keep the format readable by
        code that predates them (it ignores unknown keys), so mixed versions can share a
        store during an upgrade; hence STATE_VERSION stays 1.
        """
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "home": list(self.home) if self.home is not None else None,
            # map/zip, not a comprehension: this runs on every observe, per history entry.
            "history": list(map(list, zip(self.times, self.amounts, self.merchants, strict=True))),
            "devices": dict(self.devices),
            "last_timestamp": self.last_timestamp,
        }
        if any(self.ids):
            data["ids"] = list(self.ids)
        if self.cold_start_id is not None:
            data["cold_start_id"] = self.cold_start_id
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerState:
        version = data.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"customer state version {version!r}, expected {STATE_VERSION}")
        home = data.get("home")
        last = data.get("last_timestamp")
        history = data.get("history", [])
        ids = data.get("ids")
        if ids is not None and len(ids) != len(history):
            raise ValueError(f"{len(ids)} ids for {len(history)} history entries")
        cold_start_id = data.get("cold_start_id")
        # Columns by transposition (strict: every entry has exactly three items), converted
        # by map: C loops, where one Python loop per column cost ~1.5 µs per entry and call.
        times, amounts, merchants = zip(*history, strict=True) if history else ((), (), ())
        return cls(
            home=(float(home[0]), float(home[1])) if home is not None else None,
            times=list(map(int, times)),
            amounts=list(map(float, amounts)),
            merchants=list(map(str, merchants)),
            devices={str(d): int(t) for d, t in data.get("devices", {}).items()},
            last_timestamp=int(last) if last is not None else None,
            ids=list(map(str, ids)) if ids is not None else [],
            cold_start_id=str(cold_start_id) if cold_start_id is not None else None,
        )

    def knows(self, transaction_id: str) -> bool:
        """Whether `transaction_id` is in the kept history (O(1): a set, built once)."""
        if self._id_set is None:
            self._id_set = set(self.ids)
        return transaction_id in self._id_set

    def index_of(self, transaction_id: str) -> int | None:
        """Position of `transaction_id` in the kept history, or None if it is not there."""
        return self.ids.index(transaction_id) if self.knows(transaction_id) else None

    def without(self, at: int) -> CustomerState:
        """A copy without history entry `at` (devices shared: callers only read them)."""
        return CustomerState(
            home=self.home,
            times=self.times[:at] + self.times[at + 1 :],
            amounts=self.amounts[:at] + self.amounts[at + 1 :],
            merchants=self.merchants[:at] + self.merchants[at + 1 :],
            devices=self.devices,
            last_timestamp=self.last_timestamp,
            ids=self.ids[:at] + self.ids[at + 1 :],
            cold_start_id=self.cold_start_id,
        )


def haversine_km(lat: float, lon: float, home_lat: float, home_lon: float) -> float:
    """Great-circle distance in km; term by term the same expression as the offline SQL."""
    a = (
        math.sin(math.radians(lat - home_lat) / 2) ** 2
        + math.cos(math.radians(home_lat))
        * math.cos(math.radians(lat))
        * math.sin(math.radians(lon - home_lon) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def online_features(txn: Transaction, state: CustomerState | None) -> dict[str, float | str]:
    """definitions.FEATURES for `txn`, from the state *before* it (None: unknown customer)."""
    if state is None:
        state = CustomerState()
    ts = epoch_seconds(txn.timestamp)
    amount_eur = txn.amount_eur
    times, amounts = state.times, state.amounts
    # Entries before `end` are strictly earlier: same-second ties (and later ones) are unseen.
    end = bisect.bisect_left(times, ts)
    features: dict[str, float | str] = {"log_amount": math.log(1 + amount_eur)}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for name, length in _WINDOWS_S:
        # Windows include t_prior == ts - length, hence bisect_left.
        start = bisect.bisect_left(times, ts - length, 0, end)
        counts[f"n_tx_{name}"] = float(end - start)
        sums[f"amount_sum_{name}"] = sum(amounts[start:end])
    avg_start = bisect.bisect_left(times, ts - _AVG_S, 0, end)
    n_avg = end - avg_start
    avg = sum(amounts[avg_start:end]) / n_avg if n_avg else 0.0
    features["amount_ratio"] = amount_eur / avg if n_avg else 1.0
    features.update(counts)
    features.update(sums)
    merchant_start = bisect.bisect_left(times, ts - _MERCHANT_S, 0, end)
    first_seen = state.devices.get(txn.device_id)
    features.update(
        {
            "avg_amount_30d": avg,
            "n_merchants_7d": float(len(set(state.merchants[merchant_start:end]))),
            # History reaches back HISTORY_HORIZON >= the cap, so an older "last" caps anyway.
            "seconds_since_last": min(_CAP, float(ts - times[end - 1])) if end else _CAP,
            "is_new_device": 0.0 if first_seen is not None and first_seen < ts else 1.0,
            "distance_from_home_km": (
                haversine_km(txn.latitude, txn.longitude, *state.home) if state.home else 0.0
            ),
            "is_cold_start": 0.0 if n_avg else 1.0,
            "channel": txn.channel,
            "merchant_category": txn.merchant_category,
            "hour": str((ts // 3600) % 24),
        }
    )
    return features


def apply_entry(
    state: CustomerState, ts: int, amount_eur: float, merchant: str, device: str, tid: str
) -> None:
    """Add one transaction to `state` in place, keeping history sorted and pruned.

    Does nothing when `tid` is already in the kept history: a retry is counted once.
    """
    if tid and state.knows(tid):
        return
    # bisect_right keeps arrival order among ties; appending is the common, in-order case.
    at = bisect.bisect_right(state.times, ts)
    state.times.insert(at, ts)
    state.amounts.insert(at, amount_eur)
    state.merchants.insert(at, merchant)
    state.ids.insert(at, tid)
    if state._id_set is not None:
        state._id_set.add(tid)
    if state.last_timestamp is None or ts > state.last_timestamp:
        state.last_timestamp = ts
    # Windows include t_prior == now - w, so keep exactly the entries a future window can see.
    # This is also why a retry older than the kept history needs no id to be harmless: it is
    # inserted before the cut and removed again here (its device was recorded the first time).
    keep_from = bisect.bisect_left(state.times, state.last_timestamp - _HORIZON_S)
    if keep_from:
        del state.times[:keep_from], state.amounts[:keep_from], state.merchants[:keep_from]
        del state.ids[:keep_from]
        state._id_set = None  # rebuilt on the next lookup (an id may be kept twice: "")
    seen = state.devices.get(device)
    if seen is None or ts < seen:
        state.devices[device] = ts


def update_state(state: CustomerState, txn: Transaction) -> CustomerState:
    """Apply `txn` to `state` (in place, for speed) and return it; a kept id is not re-applied."""
    apply_entry(
        state,
        epoch_seconds(txn.timestamp),
        txn.amount_eur,
        txn.merchant_id,
        txn.device_id,
        txn.transaction_id,
    )
    return state


def answer(txn: Transaction, state: CustomerState | None) -> tuple[dict[str, float | str], bool]:
    """What observing `txn` against `state` answers: (features, cold_start), without updating.

    A first sighting gets `online_features` and cold_start = "no stored state". A retry
    (its id is in the kept history) gets the features of its payload from the state without
    its own entry, and the cold_start its first observe got. For an unchanged payload that is
    exactly the first answer unless, in between, (a) a transaction *earlier* than it arrived
    late (it is counted now, as offline counts it), or (b) newer transactions pushed the
    30-day horizon past the oldest entries its windows saw. A retry older than the kept
    history (HISTORY_HORIZON behind the newest transaction) is not recognised: it is answered
    as a new transaction from what is left, though applying it changes nothing (see apply_entry).
    """
    if state is None:
        return online_features(txn, None), True
    at = state.index_of(txn.transaction_id)
    if at is None:
        return online_features(txn, state), False
    return online_features(txn, state.without(at)), state.cold_start_id == txn.transaction_id


@dataclass(frozen=True, slots=True)
class Observation:
    """One observe: the answer, and the state to store (None: a retry, nothing to write)."""

    features: dict[str, float | str]
    cold_start: bool
    after: CustomerState | None


def observe_state(state: CustomerState | None, txn: Transaction) -> Observation:
    """Answer `txn` from the state before it, then apply it: the store's read-modify-write.

    Idempotent per transaction_id within the kept history: a retry changes nothing and gets
    its first answer again (see `answer` for the exceptions), so a client retrying after a
    503 or a timeout never inflates the customer's velocity features.
    """
    if state is not None and state.index_of(txn.transaction_id) is not None:
        return Observation(*answer(txn, state), after=None)
    features = online_features(txn, state)
    if state is None:
        return Observation(
            features, True, update_state(CustomerState(cold_start_id=txn.transaction_id), txn)
        )
    return Observation(features, False, update_state(state, txn))
