"""The online store's stored form: version 2 bytes (`hearth.features.state_codec`), and the
version 1 JSON a store written by an earlier Hearth still holds."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable

import pytest

from hearth.features import state_codec
from hearth.features.online import CustomerState
from hearth.features.store import StoreError, decode_state, encode_state
from tests.unit.test_online_idempotency import legacy_state


def small() -> CustomerState:
    return CustomerState(
        home=(1.5, -2.0),
        times=[1, 2],
        amounts=[1.5, 2.25],
        merchants=["M1", "M2"],
        ids=["a", "b"],
        devices={"D": 1},
        last_timestamp=2,
        cold_start_id="a",
    )


def long_history(n: int = 500) -> CustomerState:
    rng = random.Random(7)
    times = sorted(rng.randrange(1_700_000_000, 1_702_000_000) for _ in range(n))
    return CustomerState(
        home=(48.8566, 2.3522),
        times=times,
        amounts=[rng.uniform(0.01, 5000.0) for _ in range(n)],
        merchants=[f"M{rng.randrange(90)}" for _ in range(n)],
        ids=[f"T-{i}:x@y" for i in range(n)],
        devices={"D1": times[0], "D2": times[-1]},
        last_timestamp=times[-1],
    )


ROUND_TRIPS: dict[str, Callable[[], CustomerState]] = {
    "empty": CustomerState,
    "legacy ids": lambda: CustomerState(
        times=[1, 2, 3], amounts=[1.0, 2.0, 3.0], merchants=["a"] * 3
    ),
    "one legacy entry": lambda: CustomerState(times=[5], amounts=[0.5], merchants=["M"]),
    "all fields": small,
    "home None, devices": lambda: CustomerState(devices={"D1": 10, "D2": 20}, last_timestamp=20),
    "cold start, no history": lambda: CustomerState(home=(0.0, 0.0), cold_start_id="T1"),
    "utf-8 merchants": lambda: CustomerState(
        times=[1, 1], amounts=[1.0, 2.0], merchants=["é", "字"]
    ),
    "500 entries": long_history,
}


@pytest.mark.parametrize("make", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_version_2_round_trips_into_plain_lists(make: Callable[[], CustomerState]) -> None:
    raw = encode_state(make())
    assert isinstance(raw, bytes) and raw.startswith(state_codec.MAGIC)
    state = decode_state(raw, "C1")
    assert state == make()
    # The online code inserts into these lists and bisects them: plain lists of plain values.
    for column, kind in ((state.times, int), (state.amounts, float), (state.merchants, str)):
        assert type(column) is list and all(type(v) is kind for v in column)
    assert type(state.ids) is list and all(type(v) is str for v in state.ids)


def test_the_encoding_is_little_endian_whatever_the_machine() -> None:
    """Pinned bytes: a Redis shared by machines of either byte order reads the same state."""
    meta = (
        b'{"version":2,"home":[1.5,-2.0],"devices":{"D":1},"last_timestamp":2,"cold_start_id":"a"}'
    )
    expected = (
        b"HST2"
        + bytes.fromhex("02000000 58000000 05000000 03000000")  # n, meta, merchants, ids
        + meta
        + bytes.fromhex("0100000000000000 0200000000000000")  # int64 1, 2
        + bytes.fromhex("000000000000f83f 0000000000000240")  # float64 1.5, 2.25
        + b"M1\x1fM2"
        + b"a\x1fb"
    )
    assert len(meta) == 0x58
    assert encode_state(small()) == expected


@pytest.mark.parametrize("as_bytes", [False, True], ids=["text", "bytes"])
def test_version_1_json_still_decodes_and_is_written_back_as_version_2(as_bytes: bool) -> None:
    for state in (small(), long_history(50), CustomerState()):
        text = json.dumps(state.to_dict(), separators=(",", ":"))
        decoded = decode_state(text.encode() if as_bytes else text, "C1")
        assert decoded == state
        assert encode_state(decoded) == encode_state(state)
    legacy = decode_state(json.dumps(legacy_state()), "C1")  # before ids were kept
    assert legacy.ids == ["", ""] and decode_state(encode_state(legacy), "C1") == legacy


def _with(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert raw.count(old) == 1 and len(old) == len(new)
    return raw.replace(old, new)


def _built(meta: bytes) -> bytes:
    return struct.pack("<4sIIII", b"HST2", 0, len(meta), 0, 0) + meta


GOOD = encode_state(small())
CORRUPT: dict[str, bytes | str] = {
    "empty": b"",
    "magic only": b"HST2",
    "header cut": GOOD[:10],
    "one byte short": GOOD[:-1],
    "one byte long": GOOD + b"\x00",
    "foreign magic": b"HST3" + GOOD[4:],
    "foreign bytes": b"\x00\x01\x02\x03" + GOOD[4:],
    "n too large": GOOD[:4] + struct.pack("<I", 3) + GOOD[8:],
    "foreign meta version": _with(GOOD, b'"version":2', b'"version":3'),
    "meta not an object": _built(b"[2]"),
    "meta without home": _built(b'{"version":2}'),
    "meta not json": _built(b"{nope}"),
    "a separator short": _with(GOOD, b"M1\x1fM2", b"M1xM2"),
    "not utf-8": _with(GOOD, b"M1\x1f", b"\xff\xfe\x1f"),
    "version 1 json, wrong version": b'{"version":9}',
    "version 1 json, not an object": "[1]",
}


@pytest.mark.parametrize("raw", CORRUPT.values(), ids=CORRUPT.keys())
def test_an_unreadable_state_is_a_store_error_naming_the_customer(raw: bytes | str) -> None:
    with pytest.raises(StoreError, match="customer 'C9'"):
        decode_state(raw, "C9")


@pytest.mark.parametrize("field", ["merchants", "ids"])
def test_a_value_holding_the_separator_is_refused(field: str) -> None:
    state = small()
    getattr(state, field)[1] = "M\x1f2"
    with pytest.raises(ValueError, match="separator"):
        encode_state(state)


def test_a_history_that_is_not_int64_and_float_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be stored"):
        encode_state(CustomerState(times=[2**63], amounts=[1.0], merchants=["M"]))


def test_finite_amounts_whose_sum_overflows_are_stored() -> None:
    """encode_state sums the amounts first; a sum past the largest float is no refusal."""
    state = CustomerState(times=[1, 2], amounts=[1e308, 1e308], merchants=["M", "M"])
    assert decode_state(encode_state(state), "C1") == state
