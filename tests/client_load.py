"""Steady client load on a serving process's /predict, for the outage tests.

`Load` runs a few client threads that post new transactions (each with its own transaction
id) until stopped, and remembers every answer: when it came, its status (0: no answer
within the client's timeout, a hang, or a broken connection), its Retry-After, and for a 200
the transaction id and the variant that answered.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.projects import API_KEY

CLIENT_TIMEOUT_S = 10.0  # a request still unanswered after this is a hang
CLIENTS = 3
CUSTOMERS = 20  # per load: each client cycles through the same customers


@dataclass(frozen=True)
class Answer:
    at: float  # when the answer came (time.monotonic())
    status: int  # 0: no answer within the client's timeout (a hang) or a broken connection
    retry_after: str | None
    error: str
    transaction_id: str = ""
    customer_id: str = ""
    variant: str | None = None  # who answered a 200: "champion" | "challenger"
    sent: float = 0.0  # when the request was sent (time.monotonic())


class Load:
    """`clients` threads posting new transactions to `url`/predict until stopped (`with`)."""

    def __init__(self, url: str, tag: str, clients: int = CLIENTS) -> None:
        self.url, self.tag = url, tag
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 5)

    def customer(self, n: int) -> str:
        return f"{self.tag}-c{n % CUSTOMERS}"

    def _run(self, worker: int) -> None:
        n = 0
        with httpx.Client(timeout=CLIENT_TIMEOUT_S, headers={"X-API-Key": API_KEY}) as client:
            while not self._stop.is_set():
                n += 1
                tid, customer = f"{self.tag}-{worker}-{n}", self.customer(n)
                body = {
                    "transaction_id": tid,
                    "timestamp": "2026-02-01T12:00:00", "customer_id": customer,
                    "merchant_id": "m1", "merchant_category": "grocery", "amount": 12.5,
                    "currency": "EUR", "channel": "pos", "device_id": "d1",
                    "latitude": 48.1, "longitude": 11.6,
                }  # fmt: skip
                sent = time.monotonic()
                try:
                    r = client.post(f"{self.url}/predict", json=body)
                    variant = r.json().get("variant") if r.status_code == 200 else None
                    answer = Answer(time.monotonic(), r.status_code, r.headers.get("Retry-After"),
                                    r.text[:200], tid, customer, variant, sent)  # fmt: skip
                except httpx.HTTPError as exc:
                    answer = Answer(time.monotonic(), 0, None, f"{type(exc).__name__}: {exc}",
                                    tid, customer, sent=sent)  # fmt: skip
                with self._lock:
                    self.answers.append(answer)

    def since(self, at: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= at]

    def wait_for(self, status: int, after: float, timeout_s: float) -> float | None:
        """When the first answer with `status` after `after` came; None if none in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hit = next((a.at for a in self.since(after) if a.status == status), None)
            if hit is not None:
                return hit
            time.sleep(0.05)
        return None


def metric_samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` on the server's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def predictions_by_variant(url: str) -> Counter[str]:
    """`hearth_predictions_total` on the server's /metrics, summed per variant."""
    c: Counter[str] = Counter()
    for labels, value in metric_samples(url, "hearth_predictions_total"):
        c[labels["variant"]] += int(value)
    return c
