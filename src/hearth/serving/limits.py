"""What the features and model services take in: the gateway's input domain, on every route.

Once they run as separate containers, anyone on their network who holds the internal token
reaches them without the gateway: they enforce the same limits themselves, on the hop
(`hearth.serving.internal`) and on their BentoML APIs (`bentos/`). A refusal is a
`Refused` with the status the gateway would give: 413 for a body or a batch over the limit,
400 for what is not JSON, 422 naming each field out of the domain.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from hearth.config import Settings
from hearth.features.online import MAX_ID_LENGTH, InputDomain, InvalidTransaction, Transaction
from hearth.serving.schemas import MAX_BATCH, ScoreItem, TransactionIn

# An internal body carries at most a batch of the gateway's (HEARTH_MAX_PAYLOAD_BYTES),
# re-encoded: a feature row is ~3x its transaction. 16x leaves room and still bounds memory.
BODY_FACTOR = 16
# Beyond the limit a body is read and dropped up to this size, so its sender gets the 413.
DRAIN_BYTES = 32 * 1024 * 1024
MAX_FEATURES = 256  # features in one ScoreItem (the model has ~20)

_TRANSACTIONS = TypeAdapter(list[TransactionIn])


class Refused(ValueError):
    """A request refused for its content: `status` (400, 413, 422) and what is wrong."""

    def __init__(self, status: int, error: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(error)
        self.status, self.error, self.problems = status, error, list(problems)

    def message(self) -> str:
        """One line: the error, then each field and its problem."""
        return "; ".join([self.error, *(f"{f}: {m}" for f, m in self.problems)])

    def to_json(self) -> bytes:
        """The gateway's error body: ``{"error": …, "problems": [{"field", "message"}]}``."""
        problems = [{"field": f, "message": m} for f, m in self.problems]
        return pydantic_core.to_json({"error": self.error, "problems": problems})


@dataclass(frozen=True)
class InternalLimits:
    """Body size, batch size and the input domain of a service's requests."""

    max_body_bytes: int = BODY_FACTOR * 65_536
    max_items: int = MAX_BATCH
    domain: InputDomain = field(default_factory=InputDomain)

    @classmethod
    def from_settings(cls, settings: Settings) -> InternalLimits:
        return cls(
            BODY_FACTOR * settings.max_payload_bytes,
            settings.max_batch,
            InputDomain.from_settings(settings),
        )


@cache
def default_limits() -> InternalLimits:
    """This process's limits, from its environment (HEARTH_*), read once."""
    return InternalLimits.from_settings(Settings())


# -- bodies ---------------------------------------------------------------------------------
async def read_capped(next_chunk: Callable[[], Awaitable[bytes | None]], limit: int) -> bytes:
    """A body from `next_chunk` (None once it ends); Refused(413) when it is over `limit`,
    after reading and dropping the rest (up to DRAIN_BYTES) so the sender sees the answer."""
    body, seen = bytearray(), 0
    while (chunk := await next_chunk()) is not None:
        seen += len(chunk)
        if seen <= limit:
            body += chunk
        elif seen > DRAIN_BYTES:
            break
    if seen > limit:
        raise Refused(413, f"request body over {limit} bytes")
    return bytes(body)


def _count(items: object, limits: InternalLimits, what: str) -> list[Any]:
    if not isinstance(items, list):
        raise Refused(400, f"invalid body: expected a JSON array of {what}")
    if len(items) > limits.max_items:
        raise Refused(413, f"{len(items)} {what}, over {limits.max_items} (HEARTH_MAX_BATCH)")
    return items


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]


# -- the features service ---------------------------------------------------------------------
def transactions(raw: object, limits: InternalLimits) -> list[Transaction]:
    """Transactions from a parsed JSON body (a list of the gateway's request bodies), checked
    as the gateway checks them: schema, then the input domain."""
    items = _count(raw, limits, "transactions")
    try:
        parsed = _TRANSACTIONS.validate_python(items)
    except ValidationError as exc:
        raise Refused(422, "invalid transactions", _problems(exc)) from None
    txns = []
    for i, txn in enumerate(parsed):
        try:
            txns.append(limits.domain.check(txn.to_transaction()))
        except InvalidTransaction as exc:
            problems = [(f"{i}.{f}", m) for f, m in exc.problems]
            raise Refused(422, "invalid transactions", problems) from None
    return txns


def transactions_json(body: bytes, limits: InternalLimits) -> list[Transaction]:
    """`transactions` of a raw JSON body (400 when it is not JSON, or nested too deep)."""
    try:
        raw = pydantic_core.from_json(body)
    except ValueError as exc:
        raise Refused(400, f"invalid JSON: {exc}") from None
    return transactions(raw, limits)


# -- the model service --------------------------------------------------------------------------
def score_items(items: list[ScoreItem], limits: InternalLimits) -> list[ScoreItem]:
    """`items` when they are few enough and every feature value is finite and bounded."""
    _count(items, limits, "items")
    problems = []
    for i, item in enumerate(items):
        if len(item.features) > MAX_FEATURES:
            problems.append((f"{i}.features", f"more than {MAX_FEATURES} features"))
        for name, value in item.features.items():
            if isinstance(value, float) and not math.isfinite(value):
                problems.append((f"{i}.features.{name}", f"must be finite, got {value!r}"))
            elif isinstance(value, str) and len(value) > MAX_ID_LENGTH:
                problems.append((f"{i}.features.{name}", f"over {MAX_ID_LENGTH} characters"))
        for name in ("variant", "model_version", "trace"):
            value = getattr(item, name)
            if value is not None and len(value) > MAX_ID_LENGTH:
                problems.append((f"{i}.{name}", f"over {MAX_ID_LENGTH} characters"))
    if problems:
        raise Refused(422, "invalid items", problems[:20])
    return items
