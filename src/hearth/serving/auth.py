"""API-key check for the gateway: missing → 401, wrong → 403, compared in constant time."""

from __future__ import annotations

import hmac

API_KEY_HEADER = "X-API-Key"


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_api_key(presented: str | None, expected: str) -> None:
    """Raise `AuthError` (401 or 403) unless `presented` equals `expected`."""
    if not presented:
        raise AuthError(401, f"missing {API_KEY_HEADER} header")
    # compare_digest takes as long for a near miss as for a wild guess.
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise AuthError(403, f"invalid {API_KEY_HEADER}")
