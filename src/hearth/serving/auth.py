"""Secrets checked by Hearth's servers: missing → 401, wrong → 403, compared in constant time.

The API key (``X-API-Key``) scores transactions; the admin token (``X-Admin-Token``)
controls rollouts. They are distinct: the API key never opens the admin API. The internal
token (``X-Internal-Token``, or ``Authorization: Bearer`` as BentoML's own clients send it)
is what the features and model services require of the gateway: nobody else on their
network may rewrite a customer's state or call a model.
"""

from __future__ import annotations

import hmac

from hearth.config import API_KEY_HEADER

ADMIN_TOKEN_HEADER = "X-Admin-Token"
INTERNAL_TOKEN_HEADER = "X-Internal-Token"


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_secret(header: str, presented: str | None, expected: str) -> None:
    """Raise `AuthError` (401 or 403) unless `presented` equals `expected` (non-empty)."""
    if not presented:
        raise AuthError(401, f"missing {header} header")
    # An empty expected secret would otherwise match nothing, silently: say why instead.
    if not expected:
        raise AuthError(403, f"{header} is not configured on this server")
    # compare_digest takes as long for a near miss as for a wild guess.
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise AuthError(403, f"invalid {header}")


def check_api_key(presented: str | None, expected: str) -> None:
    """Raise `AuthError` (401 or 403) unless `presented` is the API key."""
    check_secret(API_KEY_HEADER, presented, expected)


def check_admin_token(presented: str | None, expected: str) -> None:
    """Raise `AuthError` (401 or 403) unless `presented` is the admin token."""
    check_secret(ADMIN_TOKEN_HEADER, presented, expected)


def check_internal_token(presented: str | None, expected: str) -> None:
    """Raise `AuthError` (401 or 403) unless `presented` is the internal token."""
    check_secret(INTERNAL_TOKEN_HEADER, presented, expected)


def presented_internal_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The internal token an ASGI request carries: its ``X-Internal-Token`` header, else the
    credentials of an ``Authorization: Bearer`` header (``bentoml.SyncHTTPClient(token=…)``)."""
    bearer = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"x-internal-token":
            return value.decode("latin-1")
        if lowered == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                bearer = credentials.strip()
    return bearer
