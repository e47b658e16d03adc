"""Admin calls, traffic and a rollback under load against one `hearth serve` on loopback.

Shared by the rollout tests on real servers (test_rollout_serving and the tests that stop
MLflow under load): each request a new transaction of a known customer's last purchase.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pandas as pd

from hearth.launch.hearth_server import ServerProcess
from tests.integration.test_serving import Customers, fraud_like, normal
from tests.projects import API_KEY as KEY

ADMIN = "integration-admin-token"


def admin(
    server: ServerProcess,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = ADMIN,
    **headers: str,
) -> httpx.Response:
    sent = {"X-Admin-Token": token} if token is not None else {}
    content = None if body is None else (body if isinstance(body, bytes) else json.dumps(body))
    return httpx.request(method, f"{server.url}{path}", content=content,
                         headers=sent | headers, timeout=60)  # fmt: skip


class Traffic:
    """Requests built from one known customer's last purchase, for any customer id."""

    def __init__(self, customers: Customers, tag: str, last: pd.Series | None = None) -> None:
        self.last = customers.take() if last is None else last
        self.t0, self.tag = customers.after, tag
        self.n = 0
        self._lock = threading.Lock()

    def body(self, customer_id: str, fraud: bool = False) -> dict[str, Any]:
        with self._lock:
            self.n += 1
            n = self.n
        at = self.t0 + timedelta(seconds=n)
        make = fraud_like if fraud else normal
        return make(self.last, at, f"{self.tag}-{n}") | {"customer_id": customer_id}


def predict(client: httpx.Client | None, server: ServerProcess, body: dict) -> httpx.Response:
    send = client.post if client is not None else httpx.post
    return send(f"{server.url}/predict", content=json.dumps(body), headers={"X-API-Key": KEY},
                timeout=30)  # fmt: skip


# -- rollback under load ---------------------------------------------------------------------------
@dataclass
class Sent:
    at: float
    status: int
    variant: str | None


def _load(server: ServerProcess, traffic: Traffic, ids: list[str], stop: threading.Event,
          out: list[Sent]) -> Callable[[int], None]:  # fmt: skip
    def client_loop(k: int) -> None:
        with httpx.Client() as client:
            i = k
            while not stop.is_set():
                try:
                    r = predict(client, server, traffic.body(ids[i % len(ids)]))
                    variant = r.json().get("variant") if r.status_code == 200 else None
                    out.append(Sent(time.monotonic(), r.status_code, variant))
                except httpx.HTTPError as exc:  # a refused connection is a failed request too
                    out.append(Sent(time.monotonic(), 0, repr(exc)))
                i += 4

    return client_loop


@dataclass
class UnderLoad:
    """What 4 clients saw around one POST /admin/rollback."""

    sent: list[Sent]
    called: float
    answered: float
    response: httpx.Response

    def check(self, label: str) -> None:
        """Nothing failed, and no challenger answered a second after the call."""
        failed = [s for s in self.sent if s.status != 200]
        last_challenger = max(s.at for s in self.sent if s.variant == "challenger")
        effect_s = last_challenger - self.called
        print(
            f"\n[{label}] {len(self.sent)} requests (4 clients), {len(failed)} failed; "
            f"rollback call took {self.answered - self.called:.3f} s; last challenger "
            f"response {effect_s:.3f} s after the call"
        )
        assert self.response.status_code == 200, self.response.text
        assert failed == []
        before = [s for s in self.sent if s.at < self.called]
        assert any(s.variant == "challenger" for s in before)  # switched under load
        assert effect_s < 1.0
        assert all(s.variant == "champion" for s in self.sent if s.at > self.called + 1.0)


def rollback_under_load(
    server: ServerProcess, traffic: Traffic, reason: str, lead_s: float = 5.0,
    before_call: Callable[[], None] | None = None,
) -> UnderLoad:  # fmt: skip
    """4 clients for `lead_s` (then `before_call`), POST /admin/rollback, 4 s more load."""
    ids = [f"{traffic.tag}-{i}" for i in range(200)]
    sent: list[Sent] = []
    stop = threading.Event()
    loop = _load(server, traffic, ids, stop, sent)
    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(loop, k) for k in range(4)]
        try:
            time.sleep(lead_s)
            if before_call is not None:
                before_call()
            called = time.monotonic()
            r = admin(server, "POST", "/admin/rollback", {"reason": reason})
            answered = time.monotonic()
            time.sleep(4)
        finally:
            stop.set()
            for c in clients:
                c.result()
    return UnderLoad(sent, called, answered, r)
