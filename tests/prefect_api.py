"""Reading back what flows posted to the (test) Prefect API: artifacts by key."""

from __future__ import annotations

import asyncio
import json
from typing import Any


def artifacts(key: str) -> list[Any]:
    """Every artifact posted under `key`, newest first (prefect's `Artifact` objects)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
            )

    return asyncio.run(read())


def table(artifact: Any) -> list[dict[str, Any]]:
    """A table artifact's rows."""
    data = artifact.data
    rows: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
    return rows


def items(artifact: Any) -> dict[str, Any]:
    """An item/value table artifact (a rollout verdict) as a dict."""
    return {row["item"]: row["value"] for row in table(artifact)}


def flow_runs(flow_name: str) -> list[Any]:
    """Every run of the flow named `flow_name` that the (test) Prefect API knows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name]))
            )

    return asyncio.run(read())
