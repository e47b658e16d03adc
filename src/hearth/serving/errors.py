"""Failures the serving graph turns into HTTP answers (never into a 500)."""

from __future__ import annotations


class Unavailable(RuntimeError):
    """A dependency cannot answer now; the client should retry (503 + Retry-After)."""

    retry_after_s: int = 1


class ModelUnavailable(Unavailable):
    """No model is loaded for the routed variant, or the model service does not answer."""


class FeaturesUnavailable(Unavailable):
    """The feature store is not loaded, or the features service does not answer."""


class NotReady(Unavailable):
    """The service is still loading its model or store."""

    retry_after_s = 2
