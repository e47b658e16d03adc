"""The HTTP API's request and response bodies, kept apart from the internal types.

Requests are validated strictly (unknown fields, wrong types, a negative or non-finite amount,
an unknown currency or a malformed timestamp are all refused, naming the field), then turned
into the internal `Transaction` that the feature code uses. The wire types between the
gateway and the model service (`ScoreItem`, `Score`) live here too: both topologies speak
them, in memory or over HTTP.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from hearth.features.online import ID_PATTERN, MAX_AMOUNT, MAX_ID_LENGTH, Transaction
from hearth.schema import (
    CHANNELS,
    CURRENCIES,
    MERCHANT_CATEGORIES,
    parse_timestamp,
)

Decision = Literal["approve", "review", "decline"]
# A batch is scored in one model call; beyond this (HEARTH_MAX_BATCH), a client should split
# it: the gateway answers 413 before it validates a single item.
MAX_BATCH = 1000
# Years 1900-2099, months 01-12, days 01-31, hours 00-23 (the day's validity is checked too):
# a document precise enough that a client generating from it (schemathesis) gets accepted.
TIMESTAMP_PATTERN = (
    r"^(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$"
)


# The API page's request examples: valid as they are (the page moves the timestamp to the
# current minute, for a gateway that refuses old ones).
EXAMPLE_TRANSACTION: dict[str, Any] = {
    "transaction_id": "tx-docs-1", "timestamp": "2026-01-15T12:00:00", "customer_id": "c-docs-1",
    "merchant_id": "m-1042", "merchant_category": "grocery", "amount": 42.5, "currency": "EUR",
    "channel": "pos", "device_id": "d-docs-1", "latitude": 48.14, "longitude": 11.58,
}  # fmt: skip


def _id(description: str) -> Any:
    return Field(
        min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, description=description
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}, expected one of {list(allowed)}")
    return value


class TransactionIn(_Strict):
    """A transaction to score: the raw fields of the data contract, without the label."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_TRANSACTION]})

    transaction_id: StrictStr = _id("Unique per customer; a retry with it is counted once.")
    timestamp: StrictStr = Field(
        pattern=TIMESTAMP_PATTERN,
        description="UTC, YYYY-MM-DDTHH:MM:SS; at most HEARTH_MAX_CLOCK_SKEW_S (300 s) ahead "
        "of the server's clock",
    )
    customer_id: StrictStr = _id("The customer whose features this transaction updates.")
    merchant_id: StrictStr = _id("The merchant.")
    merchant_category: StrictStr = Field(json_schema_extra={"enum": list(MERCHANT_CATEGORIES)})
    # The configured bound (HEARTH_MAX_AMOUNT) is checked by the gateway (InputDomain); the
    # document states its default.
    amount: float = Field(
        gt=0,
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={"maximum": MAX_AMOUNT},
        description="In `currency`; > 0 and at most HEARTH_MAX_AMOUNT (default 1e9).",
    )
    currency: StrictStr = Field(json_schema_extra={"enum": list(CURRENCIES)})
    channel: StrictStr = Field(json_schema_extra={"enum": list(CHANNELS)})
    device_id: StrictStr = _id("The device the customer used.")
    latitude: float = Field(ge=-90, le=90, strict=True, allow_inf_nan=False)
    longitude: float = Field(ge=-180, le=180, strict=True, allow_inf_nan=False)

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        try:
            parse_timestamp(value)
        except ValueError:
            raise ValueError(
                f"malformed timestamp {value!r}, expected YYYY-MM-DDTHH:MM:SS"
            ) from None
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        return _one_of(value, CURRENCIES, "currency")

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        return _one_of(value, CHANNELS, "channel")

    @field_validator("merchant_category")
    @classmethod
    def _category(cls, value: str) -> str:
        return _one_of(value, MERCHANT_CATEGORIES, "merchant_category")

    def to_transaction(self) -> Transaction:
        """The internal, typed transaction (the feature code's input)."""
        return Transaction.from_mapping(self.model_dump())


def transaction_payload(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` as the body ``/predict`` accepts; a ValidationError (a ValueError) when the API
    would refuse it. Load generators check their rows with it (see `load_transactions`)."""
    return TransactionIn.model_validate(raw).model_dump()


class BatchIn(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "transactions": [
                        {**EXAMPLE_TRANSACTION, "transaction_id": "tx-docs-2"},
                        {**EXAMPLE_TRANSACTION, "transaction_id": "tx-docs-3", "amount": 980.0},
                    ]
                }
            ]
        }
    )
    # The count is checked (413) before validation, against HEARTH_MAX_BATCH.
    transactions: list[TransactionIn] = Field(
        min_length=1, json_schema_extra={"maxItems": MAX_BATCH}
    )


class FeedbackIn(_Strict):
    """A delayed label: was this transaction fraud after all?"""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"transaction_id": "tx-docs-1", "is_fraud": False}]}
    )

    transaction_id: StrictStr = _id("A transaction scored earlier.")
    is_fraud: StrictBool


class PredictionOut(BaseModel):
    """A scored transaction with everything needed to trace it back."""

    transaction_id: str
    fraud_probability: float
    decision: Decision
    variant: str
    model_version: str
    data_version: str
    request_id: str
    cold_start: bool = Field(description="The customer was unknown to the feature store.")


class BatchOut(BaseModel):
    predictions: list[PredictionOut]


class FeedbackOut(BaseModel):
    transaction_id: str
    is_fraud: StrictBool
    matched_prediction: bool = Field(description="A logged prediction has this transaction id.")


class Problem(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    error: str
    problems: list[Problem] = Field(default_factory=list)
    request_id: str | None = None


# -- between the gateway and the model service --------------------------------------------
ScoreStatus = Literal["ok", "error", "unavailable"]


class ScoreItem(BaseModel):
    """One feature row to score with the model serving `variant`.

    `model_version`, when set, names the registry version that must score it (the rollout
    router's choice); when None the pool's own model for `variant` scores it.
    """

    variant: str
    features: dict[str, float | str]
    model_version: str | None = None
    # The sending request's W3C traceparent (tracing on only): a batch mixes requests, so
    # the model service can only parent its spans per item.
    trace: str | None = None


class Score(BaseModel):
    """What the model service answers for one `ScoreItem`.

    Failures are per item, not per call, because the model service merges requests from
    many clients into one batch: a faulty challenger must not fail the champion's items.
    ``status="error"``: the model failed on this item; ``"unavailable"``: the version is not
    loaded (yet); both leave `probability` and `decision` None.
    """

    variant: str
    model_version: str
    data_version: str
    probability: float | None = None
    decision: Decision | None = None
    status: ScoreStatus = "ok"
    error: str | None = None
    # How long the model call that scored this item took (its batch: a drill's injected
    # delay and the forward pass), timed where the model runs. The rollout compares the
    # variants on this, not on what the gateway waited: the monolith's challenger lane is a
    # worker thread whose hand-off and queueing would otherwise count against the
    # challenger alone. None from a model service that does not time its calls.
    model_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.probability is not None and self.decision is not None


class FeatureRow(BaseModel):
    """What the features service answers for one transaction."""

    features: dict[str, float | str]
    cold_start: bool


# -- admin API ------------------------------------------------------------------------------
class RolloutStartIn(_Strict):
    """Start a rollout of `challenger_version` against the current champion."""

    challenger_version: StrictStr | int = Field(description="A registered model version.")
    mode: Literal["canary", "ab", "shadow"] | None = Field(
        None, description="Default: params.yaml rollout.mode."
    )
    steps: list[float] | None = Field(
        None, description="Canary steps in percent, e.g. [5, 25, 50, 100] (default: params)."
    )
    reason: str = ""


class RolloutWeightIn(_Strict):
    """Set the challenger's share of live traffic, in percent (0-100)."""

    challenger_percent: float = Field(allow_inf_nan=False)
    reason: str = ""


class RolloutActionIn(_Strict):
    """Promote or roll back; the reason goes into the rollout's history."""

    reason: str = ""
