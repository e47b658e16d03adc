"""Prefect flows: thin adapters over `hearth.steps` (retries, parallelism, run history)."""
