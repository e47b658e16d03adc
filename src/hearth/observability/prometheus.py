"""Every Prometheus metric Hearth exports, defined once; services only call the recorders.

Created on first use, not at import (prometheus registries are global, and BentoML sets up
its multiprocess directory before a worker records anything). Per-variant series carry
`variant` and `model_version`.

Multiprocess mode: every process of one `hearth serve` (its N workers, and in the
microservices topology the features and model services) writes its series to files in one
directory, ``PROMETHEUS_MULTIPROC_DIR`` (`hearth serve` puts it under HEARTH_HOME and
empties it at start), and /metrics of any of them sums the counters and histograms of all,
so counts stay exact whichever worker answered, and across a worker's restart. Gauges are
per process (a ``pid`` label). A process that died leaves its gauge files behind:
`sweep_dead_processes` (run by every serving worker each second) removes them, so a dead
worker's `hearth_model_ready` and `hearth_worker_ready` vanish instead of staying 1.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SCORE_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Metrics:
    predictions: Any  # Counter: variant, model_version, decision
    rejected: Any  # Counter: status (every refused request)
    requests: Any  # Counter: endpoint, status
    request_latency: Any  # Histogram: endpoint
    prediction_latency: Any  # Histogram: variant, model_version
    scores: Any  # Histogram: variant, model_version
    feature_lookups: Any  # Counter: result (hit | miss)
    batch_size: Any  # Histogram: variant, model_version
    model_latency: Any  # Histogram: variant, model_version
    log_dropped: Any  # Counter: prediction-log entries given up on
    log_write_failures: Any  # Counter: failed prediction-log writes (retried)
    log_pending: Any  # Gauge: prediction-log entries waiting to be written
    model_ready: Any  # Gauge: version, variant (1: this process routes to it)
    worker_ready: Any  # Gauge (per pid): role; 1 once this serving worker answers ready


_CREATING = threading.Lock()


def metrics() -> Metrics:
    """The process's metrics, created once. The first calls can come from several threads at
    once (the event loop, the prediction-log writer, the model pool): without the lock two of
    them could both register the metrics, and the second fails (DuplicateTimeseries)."""
    if _created.cache_info().currsize:
        return _created()
    with _CREATING:
        return _created()


@functools.cache
def _created() -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    per_variant = ["variant", "model_version"]
    return Metrics(
        predictions=Counter("hearth_predictions", "Scored transactions.",
                            [*per_variant, "decision"]),
        rejected=Counter("hearth_rejected_requests", "Refused requests.", ["status"]),
        requests=Counter("hearth_http_requests", "Gateway requests by endpoint and status.",
                         ["endpoint", "status"]),
        request_latency=Histogram("hearth_http_request_duration_seconds",
                                  "Gateway request latency.", ["endpoint"],
                                  buckets=LATENCY_BUCKETS),
        prediction_latency=Histogram("hearth_prediction_duration_seconds",
                                     "Latency of the request each prediction was part of.",
                                     per_variant, buckets=LATENCY_BUCKETS),
        scores=Histogram("hearth_score", "Fraud probabilities answered.", per_variant,
                         buckets=SCORE_BUCKETS),
        feature_lookups=Counter("hearth_feature_store_lookups",
                                "Online-store lookups: hit (known customer) or miss "
                                "(cold start).", ["result"]),
        batch_size=Histogram("hearth_model_batch_size", "Items per model call.", per_variant,
                             buckets=BATCH_BUCKETS),
        model_latency=Histogram("hearth_model_inference_duration_seconds",
                                "Model scoring time per call.", per_variant,
                                buckets=LATENCY_BUCKETS),
        log_dropped=Counter("hearth_prediction_log_dropped",
                            "Prediction-log entries that could not be written and were given "
                            "up on (each is also logged)."),
        log_write_failures=Counter("hearth_prediction_log_write_failures",
                                   "Failed prediction-log writes (the entries stay buffered "
                                   "and are retried)."),
        # Gauges per process (BentoML's multiprocess mode): a pid label on each series.
        log_pending=Gauge("hearth_prediction_log_pending",
                          "Prediction-log entries buffered, not yet written.",
                          multiprocess_mode="livesum"),
        model_ready=Gauge("hearth_model_ready",
                          "1 when this serving process has loaded the version the rollout "
                          "state names for this variant and routes customers to it; 0 while "
                          "it loads, or once the state no longer names it.", ["variant", "version"],
                          multiprocess_mode="liveall"),
        # Labelled, so that only the processes that publish it have the series (an unlabelled
        # gauge starts at 0 in every process that creates the metrics: features, model).
        worker_ready=Gauge("hearth_worker_ready",
                           "1 when this serving worker (one of `hearth serve --workers N`) has "
                           "its store, model and prediction log loaded: what its /readyz "
                           "answers, published each second.", ["role"],
                           multiprocess_mode="liveall"),
    )  # fmt: skip


class _Scored(Protocol):
    variant: str
    model_version: str


def record_request(endpoint: str, status: int, seconds: float) -> None:
    m = metrics()
    m.requests.labels(endpoint, str(status)).inc()
    m.request_latency.labels(endpoint).observe(seconds)


def record_predictions(predictions: Sequence[Any], seconds: float) -> None:
    """Count answered predictions (PredictionOut) per variant, with scores and latency."""
    m = metrics()
    for p in predictions:
        m.predictions.labels(p.variant, p.model_version, p.decision).inc()
        m.scores.labels(p.variant, p.model_version).observe(p.fraud_probability)
        m.prediction_latency.labels(p.variant, p.model_version).observe(seconds)


def record_feature_lookups(cold_starts: Iterable[bool]) -> None:
    m = metrics()
    for cold in cold_starts:
        m.feature_lookups.labels("miss" if cold else "hit").inc()


def record_model_call(scores: Sequence[_Scored], seconds: float) -> None:
    """One model call: its batch size and time, per variant it served."""
    m = metrics()
    groups: dict[tuple[str, str], int] = {}
    for s in scores:
        groups[(s.variant, s.model_version)] = groups.get((s.variant, s.model_version), 0) + 1
    for (variant, version), size in groups.items():
        m.batch_size.labels(variant, version).observe(size)
        m.model_latency.labels(variant, version).observe(seconds)


def record_log_dropped(n: int) -> None:
    metrics().log_dropped.inc(n)


def record_log_write_failure() -> None:
    metrics().log_write_failures.inc()


def set_log_pending(n: int) -> None:
    metrics().log_pending.set(n)


def set_model_ready(ready: dict[tuple[str, str], bool]) -> None:
    """This process's readiness per (variant, version) the state names; a pair no longer
    named drops to 0 (multiprocess gauges cannot remove a series)."""
    gauge = metrics().model_ready
    for variant, version in _model_ready_labels - set(ready):
        gauge.labels(variant, version).set(0)
    for (variant, version), ok in ready.items():
        gauge.labels(variant, version).set(1 if ok else 0)
    _model_ready_labels.update(ready)


_model_ready_labels: set[tuple[str, str]] = set()


def set_worker_ready(role: str, ready: bool) -> None:
    """`hearth_worker_ready{role}` of this process (its pid, in multiprocess mode); `role`:
    monolith or gateway."""
    metrics().worker_ready.labels(role).set(1 if ready else 0)


# -- multiprocess mode ------------------------------------------------------------------
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def multiproc_dir() -> Path | None:
    """This process's multiprocess directory; None outside multiprocess mode."""
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


def _alive(pid: int) -> bool:
    import psutil  # lazy: only where a directory is swept

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def sweep_dead_processes(directory: Path | None = None) -> list[int]:
    """Remove the live-gauge files of processes that no longer run (a worker killed or
    crashed, which never got to clean up): their gauges would otherwise stay in /metrics,
    e.g. `hearth_model_ready` 1 for a process that serves nothing. Counters and histograms
    stay: what a dead worker counted did happen. The pids swept (none outside multiprocess
    mode)."""
    from prometheus_client import multiprocess  # lazy: see the module docstring

    directory = directory or multiproc_dir()
    if directory is None:
        return []
    pids = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if m := _LIVE_FILE.match(name):
                pids.add(int(m.group(1)))
    dead = sorted(pid for pid in pids if not _alive(pid))
    for pid in dead:
        with contextlib.suppress(OSError):  # another worker may sweep it at the same time
            multiprocess.mark_process_dead(pid, str(directory))
    return dead


def live_gauges(
    names: Iterable[str], directory: Path | None = None
) -> dict[int, dict[str, list[tuple[dict[str, str], float]]]]:
    """pid → gauge name → [(labels, value)] of the per-process gauges `names` that the live
    processes of this server published (their files in the multiprocess directory); empty
    outside multiprocess mode."""
    from prometheus_client.multiprocess import MultiProcessCollector  # lazy: module docstring

    directory = directory or multiproc_dir()
    if directory is None:
        return {}
    wanted = set(names)
    files = glob.glob(os.path.join(directory, "gauge_liveall_*.db"))
    out: dict[int, dict[str, list[tuple[dict[str, str], float]]]] = {}
    try:
        families = MultiProcessCollector.merge(files, accumulate=False)
    except (OSError, ValueError):  # a file removed (swept) while read: next time
        return {}
    for family in families:
        if family.name not in wanted:
            continue
        for sample in family.samples:
            labels = dict(sample.labels)
            pid = labels.pop("pid", None)
            if pid is None or not pid.isdigit() or not _alive(int(pid)):
                continue
            out.setdefault(int(pid), {}).setdefault(family.name, []).append((labels, sample.value))
    return out
