"""The reference feature profile: the train split's statistics that the drift guard compares
the valid and test splits with."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from hearth.features import definitions

log = logging.getLogger(__name__)

REFERENCE_FILE = "feature_profile.json"
REFERENCE_SPLIT = "train"
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# The first rows of the data have truncated history windows (n_tx_7d counts only the days
# that exist), so their window features run low. The reference skips them; see build_reference.
WARMUP = max([*definitions.WINDOWS.values(), definitions.MERCHANT_WINDOW])
MIN_REFERENCE_ROWS = 100


def split_path(processed_dir: Path, split: str) -> Path:
    return processed_dir / f"{split}.parquet"


def _warm_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """Train rows whose full history windows lie inside the data, and where they start.

    Falls back to every row (and None) when the warm part is too small to profile.
    """
    timestamps = pd.to_datetime(frame["timestamp"])
    warm_from = timestamps.min() + WARMUP
    warm = frame[timestamps >= warm_from]
    if len(warm) < MIN_REFERENCE_ROWS:
        log.warning(
            "train split has only %d rows after the %s warm-up; profiling all %d rows",
            len(warm),
            WARMUP,
            len(frame),
        )
        return frame, None
    return warm, warm_from.isoformat()


def _feature_stats(column: pd.Series) -> dict[str, float]:
    column = column.astype("float64")
    stats = {"mean": column.mean(), "std": column.std(ddof=0), "min": column.min()}
    stats |= {f"q{round(q * 100):02d}": column.quantile(q) for q in QUANTILES}
    stats["max"] = column.max()
    return {k: float(v) for k, v in stats.items()}


def build_reference(processed_dir: Path, reference_dir: Path) -> Path:
    """Write ``reference_dir/feature_profile.json`` from the train split; return its path.

    Per numeric feature: mean, std, min, max and a few quantiles. The processed suite checks
    that the valid and test splits' feature means stay within a tolerance of these, in std
    units. Only train rows at least `WARMUP` after the first one are profiled: earlier rows
    see a truncated history, and held-out rows never do, so including them would flag drift
    that is only the start of the data.
    """
    source = split_path(processed_dir, REFERENCE_SPLIT)
    frame = pd.read_parquet(source, columns=["timestamp", *definitions.NUMERIC_FEATURES])
    warm, warm_from = _warm_rows(frame)
    profile = {
        "source": str(source),
        "split": REFERENCE_SPLIT,
        "rows": len(warm),
        "split_rows": len(frame),
        "warm_from": warm_from,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": {name: _feature_stats(warm[name]) for name in definitions.NUMERIC_FEATURES},
    }
    reference_dir.mkdir(parents=True, exist_ok=True)
    out = reference_dir / REFERENCE_FILE
    out.write_text(json.dumps(profile, indent=2) + "\n")
    return out


def load_or_build_reference(
    processed_dir: Path, reference_dir: Path
) -> tuple[dict[str, Any], str | None]:
    """The reference profile, and a note when it had to be built first."""
    path = reference_dir / REFERENCE_FILE
    note = None
    if not path.exists():
        build_reference(processed_dir, reference_dir)
        note = f"reference profile {path} was missing; built it from the {REFERENCE_SPLIT} split"
        log.warning(note)
    profile: dict[str, Any] = json.loads(path.read_text())
    missing = set(definitions.NUMERIC_FEATURES) - set(profile.get("features", {}))
    if missing:
        raise ValueError(
            f"{path} has no profile for {sorted(missing)}; rebuild it with build_reference()"
        )
    return profile, note
