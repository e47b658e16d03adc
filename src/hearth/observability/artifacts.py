"""Prefect artifacts: what a flow decided, where its users look (the Prefect UI's Artifacts).

Each artifact has a stable key, so the Artifacts page shows its history across runs (keys:
lowercase letters, digits and dashes). Artifacts belong to a flow or task run: outside one
(a step called from the CLI or a test) `post_*` do nothing and say so by returning False.
They are a record, not a step: an artifact that cannot be posted is logged as a warning and
never fails the flow that decided.

Prefect is imported inside the functions: the library's core must not pay for it at import.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

# The stable keys (tests and the browser checks look artifacts up by these).
VALIDATION_GATE = "validation-gate"
TRAINING_METRICS = "training-metrics"
TRAINING_MLFLOW_RUN = "training-mlflow-run"
MODEL_REGISTRATION = "model-registration"
ROLLOUT_VERDICT = "rollout-verdict"
ROLLOUT_REPORT = "rollout-report"
DRIFT_PSI = "drift-psi"


def in_prefect_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _post(key: str, create: Callable[[], Any]) -> bool:
    if not in_prefect_run():
        return False
    try:
        create()
    except Exception as exc:  # a record, not a step: never fail the flow over it
        log.warning("Prefect artifact %s not posted: %s", key, exc)
        return False
    return True


def _cell(value: Any) -> Any:
    """A JSON-ready table cell: floats rounded, NaN/inf as empty."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def post_table(key: str, rows: Sequence[Mapping[str, Any]], description: str = "") -> bool:
    """A table artifact (one dict per row); False when not posted."""
    from prefect.artifacts import create_table_artifact

    table = [{k: _cell(v) for k, v in row.items()} for row in rows]
    return _post(key, lambda: create_table_artifact(table, key=key, description=description))


def post_markdown(key: str, markdown: str, description: str = "") -> bool:
    """A Markdown artifact; False when not posted."""
    from prefect.artifacts import create_markdown_artifact

    return _post(key, lambda: create_markdown_artifact(markdown, key=key, description=description))


def post_link(key: str, link: str, text: str, description: str = "") -> bool:
    """A link artifact; False when not posted."""
    from prefect.artifacts import create_link_artifact

    return _post(
        key,
        lambda: create_link_artifact(link, link_text=text, key=key, description=description),
    )


def png_data_uri(path: Path) -> str:
    """`path`'s PNG as a data: URI, for an image inside a Markdown artifact: the Prefect UI
    renders it with no server to fetch it from."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def mlflow_ui_base(tracking_uri: str, host: str, port: int) -> str:
    """Where the MLflow UI of `tracking_uri` is: the tracking server itself when it is one,
    else (a local sqlite store) the `hearth up` MLflow server at `host`:`port`."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    shown = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host
    return f"http://{shown}:{port}"


def mlflow_run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run."""
    return f"{base}/#/experiments/{quote(experiment_id)}/runs/{quote(run_id)}"
