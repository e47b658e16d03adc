"""The raw-drop contract: what a daily transactions file must look like.

Shared by the generator (which writes it), the ETL (which enforces it and quarantines what
breaks it), the validation suites and, later, the serving API's request schema.
"""

from __future__ import annotations

from datetime import datetime

# Column order of every raw drop (data/raw/transactions/YYYY-MM-DD.csv).
RAW_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "timestamp",
    "customer_id",
    "merchant_id",
    "merchant_category",
    "amount",
    "currency",
    "channel",
    "device_id",
    "latitude",
    "longitude",
    "is_fraud",
)
LABEL = "is_fraud"
# A transaction as a client sends it for scoring: the raw fields without the label.
TRANSACTION_FIELDS: tuple[str, ...] = tuple(c for c in RAW_COLUMNS if c != LABEL)

# Customer master data (data/raw/customers.csv): the bank knows where its customers live.
CUSTOMER_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "home_latitude",
    "home_longitude",
    "signup_date",
)

CHANNELS: tuple[str, ...] = ("pos", "online", "atm")
MERCHANT_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurant",
    "fuel",
    "transport",
    "retail",
    "electronics",
    "travel",
    "entertainment",
    "health",
    "utilities",
    "gambling",
    "crypto",
)
# Categories where fraudsters like to cash out, especially at night.
RISKY_CATEGORIES: tuple[str, ...] = ("electronics", "gambling", "crypto")

# Accepted currencies and their fixed conversion rate to EUR (amounts are compared in EUR).
EUR_RATES: dict[str, float] = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "CHF": 1.04, "SEK": 0.088}
CURRENCIES: tuple[str, ...] = tuple(EUR_RATES)

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"  # ISO 8601, UTC, second resolution


def parse_timestamp(text: str) -> datetime:
    """`text` in TIMESTAMP_FORMAT as a naive datetime; ValueError when it is not.

    Text of exactly that shape goes to `datetime.fromisoformat` (C, ~30x faster); anything
    else to `strptime`, which decides. Serving parses each transaction's timestamp a few
    times (the schema, the gateway's domain check, the store), and strptime was ~5 % of the
    monolith's CPU under load (py-spy).
    """
    if (
        len(text) == 19
        and text.isascii()
        and text[10] == "T"
        and text[4] == text[7] == "-"
        and text[13] == text[16] == ":"
    ):
        return datetime.fromisoformat(text)
    return datetime.strptime(text, TIMESTAMP_FORMAT)
