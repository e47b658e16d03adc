"""Model quality on labelled data: metrics, decision thresholds and the PR-curve plot.

Fraud is rare (about 1 %), so accuracy and ROC-AUC flatter every model; the headline
metric is PR-AUC (average precision), whose chance level is the fraud rate itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from hearth.observability.figures import png_figure
from hearth.params import ThresholdParams

# scikit-learn's metrics load where they are used: serving imports `Thresholds` from here,
# and sklearn (with scipy) would add ~0.7 s and ~75 MiB to every model process.

# Probabilities are clipped before the log loss so that a saturated score costs a finite,
# comparable amount instead of infinity.
_EPS = 1e-7


def _as_arrays(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but scores has {s.size}")
    if y.size == 0:
        raise ValueError("cannot evaluate on an empty set")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y, s


def recall_at_precision(y_true: ArrayLike, scores: ArrayLike, precision: float) -> float:
    """Highest recall among thresholds whose precision is at least `precision` (0 if none)."""
    from sklearn.metrics import precision_recall_curve

    y, s = _as_arrays(y_true, scores)
    if y.sum() == 0:
        return math.nan
    prec, rec, _ = precision_recall_curve(y, s)
    ok = prec >= precision
    return float(rec[ok].max()) if ok.any() else 0.0


def evaluate(y_true: ArrayLike, scores: ArrayLike, report_precision: float) -> dict[str, float]:
    """pr_auc, roc_auc, recall_at_precision, log_loss, fraud_rate and n of `scores`.

    Metrics that need both classes are NaN when one is missing, rather than an exception,
    so that a tiny split cannot crash a training run; the registration gate refuses NaN.
    """
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    y, s = _as_arrays(y_true, scores)
    both_classes = 0 < y.sum() < y.size
    return {
        "pr_auc": float(average_precision_score(y, s)) if y.sum() else math.nan,
        "roc_auc": float(roc_auc_score(y, s)) if both_classes else math.nan,
        "recall_at_precision": recall_at_precision(y, s, report_precision),
        "log_loss": float(log_loss(y, np.clip(s, _EPS, 1 - _EPS), labels=[0, 1])),
        "fraud_rate": float(y.mean()),
        "n": float(y.size),
    }


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds on the fraud probability: ``score >= decline`` → decline,
    ``score >= review`` → manual review, otherwise approve. Always ``review <= decline``.

    The other fields record what the thresholds achieved on the data they were picked on,
    and whether the targets were met (see `pick_thresholds` for the fallbacks).
    """

    review: float
    decline: float
    review_recall: float = math.nan
    review_precision: float = math.nan
    decline_precision: float = math.nan
    decline_recall: float = math.nan
    decline_target_met: bool = True

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float | bool]) -> Thresholds:
        return cls(**data)  # type: ignore[arg-type]


class _Cut(NamedTuple):
    """Flagging the scores >= `threshold`, and the precision and recall that achieves."""

    threshold: float
    precision: float
    recall: float


def pick_thresholds(y_true: ArrayLike, scores: ArrayLike, params: ThresholdParams) -> Thresholds:
    """Pick review/decline thresholds on validation data.

    - decline: the lowest threshold whose precision is ≥ ``params.decline_precision`` (the
      one that catches the most fraud while still being right that often).
      Fallback when no threshold reaches it: ``decline = 1.0``, i.e. never decline
      automatically (only a fully saturated score would); everything suspicious goes to
      review instead, and ``decline_target_met`` is False.
    - review: the highest threshold that keeps recall ≥ ``params.review_recall``. It always
      exists (the lowest score has recall 1). If it lies above decline, it is lowered to
      decline: the review band is then empty and the decline rule already keeps the recall.
    """
    from sklearn.metrics import precision_recall_curve

    y, s = _as_arrays(y_true, scores)
    if y.sum() == 0:
        raise ValueError("no fraud among the labels: cannot pick decision thresholds")
    prec, rec, thr = precision_recall_curve(y, s)
    # precision_recall_curve appends a final (precision=1, recall=0) point without a
    # threshold; drop it so that prec[i], rec[i] belong to "score >= thr[i]".
    prec, rec = prec[:-1], rec[:-1]

    def cut(i: int) -> _Cut:
        return _Cut(float(thr[i]), float(prec[i]), float(rec[i]))

    decline_ok = np.flatnonzero(prec >= params.decline_precision)
    met = bool(decline_ok.size)
    # Thresholds ascend: the first hit is the lowest threshold.
    decline = cut(int(decline_ok[0])) if met else _Cut(1.0, math.nan, 0.0)
    review = cut(int(np.flatnonzero(rec >= params.review_recall)[-1]))
    if review.threshold > decline.threshold:
        review = decline
    return Thresholds(
        review=review.threshold,
        decline=decline.threshold,
        review_recall=review.recall,
        review_precision=review.precision,
        decline_precision=decline.precision,
        decline_recall=decline.recall,
        decline_target_met=met,
    )


def pr_curve_png(
    y_true: ArrayLike,
    scores: ArrayLike,
    path: Path,
    title: str,
    thresholds: Thresholds | None = None,
) -> Path:
    """Plot the precision-recall curve with the chance line (fraud rate) and thresholds."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s = _as_arrays(y_true, scores)
    prec, rec, thr = precision_recall_curve(y, s)
    with png_figure(path, figsize=(6, 4.5), dpi=100) as (_, ax):
        ap = average_precision_score(y, s) if y.sum() else math.nan
        ax.step(rec, prec, where="post", label=f"model (AP = {ap:.3f})")
        ax.axhline(y.mean(), color="grey", linestyle="--", label=f"chance = {y.mean():.3%}")
        for name, value, colour in _threshold_marks(thresholds):
            p, r = _point_at(prec, rec, thr, value)
            ax.plot(r, p, "o", color=colour, label=f"{name} ≥ {value:.3f}")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.05), title=title)
        # Lower left stays clear: a useful model keeps precision high until high recall.
        ax.legend(loc="lower left", fontsize="small")
    return path


def _threshold_marks(thresholds: Thresholds | None) -> list[tuple[str, float, str]]:
    if thresholds is None:
        return []
    return [("review", thresholds.review, "tab:orange"), ("decline", thresholds.decline, "red")]


def _point_at(
    prec: np.ndarray, rec: np.ndarray, thr: np.ndarray, value: float
) -> tuple[float, float]:
    """Precision and recall of the rule ``score >= value`` on the curve."""
    i = int(np.searchsorted(thr, value, side="left"))
    return float(prec[i]), float(rec[i])
