"""The online store's stored form of a `CustomerState`: version 2, binary and portable.

Layout, every number little-endian whatever the machine (a Redis may be shared by machines
of either byte order), written and read with `struct`, never in native order::

    header     "<4sIIII": MAGIC b"HST2", n (history entries), then the byte lengths of
               meta, merchants and ids
    meta       compact JSON: {"version": 2, "home", "devices", "last_timestamp",
               "cold_start_id"} (a few small values: JSON keeps them readable)
    times      n int64, epoch seconds
    amounts    n float64, EUR
    merchants  UTF-8, the n merchant ids joined by SEP
    ids        UTF-8, the n transaction ids joined by SEP ("" for entries stored before
               ids were kept, so n such entries are n - 1 separators)

SEP is "\\x1f" (unit separator): ids match `online.ID_PATTERN`, which has no control
character, and `pack` refuses (ValueError) a merchant or id that contains it. The length of
every part is in the header and must add up to the whole, so a truncated or padded value is
refused; there is no checksum, so a flipped byte inside a number goes unnoticed, as it did
in JSON.

Version 1 is the compact JSON of `CustomerState.to_dict` (`online.STATE_VERSION`); `unpack`
still reads it, so a store written before version 2 keeps working and each state becomes
version 2 on its next write. Code older than version 2 cannot read version 2: going back to
it needs the store materialised again.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from hearth.features.online import CustomerState

STORED_VERSION = 2
MAGIC = b"HST2"
SEP = "\x1f"
_HEADER = struct.Struct("<4sIIII")


def _joined(values: list[str], what: str) -> bytes:
    text = SEP.join(values)
    # One count instead of a scan per value: n values joined hold exactly n - 1 separators.
    if values and text.count(SEP) != len(values) - 1:
        raise ValueError(f"a {what} contains the separator \\x1f: it cannot be stored")
    return text.encode()


def _split(data: bytes, n: int, what: str) -> list[str]:
    if n == 0:
        if data:
            raise ValueError(f"{len(data)} bytes of {what} for no history entries")
        return []
    values = data.decode().split(SEP)
    if len(values) != n:
        raise ValueError(f"{len(values)} {what} for {n} history entries")
    return values


def pack(state: CustomerState, start: int = 0) -> bytes:
    """Version 2 bytes of `state`, its history from entry `start` on (the state is untouched).

    ValueError for what cannot be stored: a separator in a merchant or id, a time that is
    not an int64, an amount that is not a number.
    """
    times, amounts = state.times[start:], state.amounts[start:]
    n = len(times)
    meta = orjson.dumps(
        {
            "version": STORED_VERSION,
            "home": state.home,
            "devices": state.devices,
            "last_timestamp": state.last_timestamp,
            "cold_start_id": state.cold_start_id,
        }
    )
    merchants = _joined(state.merchants[start:], "merchant_id")
    ids = _joined(state.ids[start:], "transaction_id")
    try:
        columns = struct.pack(f"<{n}q{n}d", *times, *amounts)
        header = _HEADER.pack(MAGIC, n, len(meta), len(merchants), len(ids))
    except struct.error as exc:
        raise ValueError(f"history cannot be stored: {exc}") from exc
    return b"".join((header, meta, columns, merchants, ids))


def unpack(raw: str | bytes) -> CustomerState:
    """The state in `raw`: version 2 bytes, or version 1 JSON (text, or bytes opening "{").

    ValueError (or TypeError, KeyError: the caller names the customer) for anything else: a
    foreign magic or version, a truncated or inconsistent value.
    """
    if isinstance(raw, str) or raw[:1] == b"{":
        return CustomerState.from_dict(orjson.loads(raw))
    if raw[:4] != MAGIC:
        raise ValueError(f"neither version 1 JSON nor version 2 ({MAGIC!r}): starts {raw[:4]!r}")
    try:
        _, n, meta_len, merchants_len, ids_len = _HEADER.unpack_from(raw)
        at = _HEADER.size + meta_len
        end = at + 16 * n + merchants_len + ids_len
        if end != len(raw):
            raise ValueError(f"{len(raw)} bytes where the header accounts for {end}")
        columns = struct.unpack_from(f"<{n}q{n}d", raw, at)
    except struct.error as exc:
        raise ValueError(f"truncated: {exc}") from exc
    at += 16 * n
    meta: Any = orjson.loads(raw[_HEADER.size : _HEADER.size + meta_len])
    if not isinstance(meta, dict) or meta.get("version") != STORED_VERSION:
        raise ValueError(f"meta is not a version {STORED_VERSION} object")
    home, last, cold = meta["home"], meta["last_timestamp"], meta["cold_start_id"]
    return CustomerState(
        home=(float(home[0]), float(home[1])) if home is not None else None,
        times=list(columns[:n]),
        amounts=list(columns[n:]),
        merchants=_split(raw[at : at + merchants_len], n, "merchants"),
        devices={str(d): int(t) for d, t in meta["devices"].items()},
        last_timestamp=int(last) if last is not None else None,
        ids=_split(raw[at + merchants_len :], n, "ids"),
        cold_start_id=str(cold) if cold is not None else None,
    )
