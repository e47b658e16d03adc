"""Training: class-weighted BCE, AdamW, early stopping on validation PR-AUC.

Everything runs on in-memory tensors (the processed splits fit in memory by design), which
on CPU is several times faster than a DataLoader over a Dataset, and is deterministic for a
given seed wherever it runs: the initial weights, the dropout masks and the batch order each
draw from a ``torch.Generator`` of the run's own, never from torch's global RNG, so sweep
variants training at once in threads of one process (a Dask worker) leave each other alone.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score
from torch import nn

from hearth.features.definitions import FEATURES, SPLITS
from hearth.model.evaluate import Thresholds, evaluate, pick_thresholds
from hearth.model.experiment import TrainConfig
from hearth.model.feature_spec import FeatureSpec
from hearth.model.scorer import FraudScorer
from hearth.params import ThresholdParams
from hearth.schema import LABEL

log = logging.getLogger(__name__)

# One intra-op thread: a batch through a 64-wide MLP is too little work to amortise thread
# synchronisation. Measured on 2 shared cores: 0.06 s/epoch on one thread against 0.5–6 s
# on two, which spin against whatever else runs (ETL, serving, other trainings).
_TRAIN_THREADS = 1


@dataclass(frozen=True)
class Splits:
    """The processed train/valid/test frames."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"n_train": len(self.train), "n_valid": len(self.valid), "n_test": len(self.test)}


@dataclass
class TrainResult:
    """A trained scorer and everything measured while making it."""

    scorer: FraudScorer
    history: list[dict[str, float]]
    best_epoch: int
    device: str
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float]
    thresholds: Thresholds
    seconds: float
    config: TrainConfig = field(default_factory=TrainConfig)
    data_sizes: dict[str, int] = field(default_factory=dict)
    pos_weight: float = 1.0


def load_splits(processed_dir: Path) -> Splits:
    """Read ``{train,valid,test}.parquet`` from `processed_dir`."""
    frames = {}
    for split in SPLITS:
        path = Path(processed_dir) / f"{split}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `hearth etl` to build the features")
        frame = pd.read_parquet(path)
        missing = [c for c in (*FEATURES, LABEL) if c not in frame.columns]
        if missing:
            raise ValueError(f"{path} lacks columns {missing}: re-run `hearth etl`")
        if frame.empty:
            raise ValueError(f"{path} has no rows: check the split sizes in params.yaml")
        frames[split] = frame
    return Splits(**frames)


def resolve_device(requested: str) -> torch.device:
    """cuda when asked for (or "auto" and one is present), else cpu."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no CUDA device is available")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


class _DeterministicTorch:
    """Deterministic kernels on one thread while any training runs; torch's previous global
    settings come back when the last one ends. Counted, because sweep variants may train at
    once in threads of one process, and the first to finish must not switch the others'
    settings back under them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved: tuple[bool, bool, int] = (False, False, 1)

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._active == 0:
                # cuBLAS needs this before its first handle to be deterministic; harmless on CPU.
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                self._saved = (
                    torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled(),
                    torch.get_num_threads(),
                )
                # warn_only: an op without a deterministic kernel warns instead of failing.
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.set_num_threads(_TRAIN_THREADS)
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    was_deterministic, was_warn_only, threads = self._saved
                    torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
                    torch.set_num_threads(threads)


# Randomness is not seeded here: every draw takes a generator of the run's (`_Generators`).
_deterministic = _DeterministicTorch()


@dataclass(frozen=True)
class _Generators:
    """The run's own random streams, one per use, all derived from its seed."""

    init: torch.Generator  # initial weights, drawn on the CPU before the net moves
    dropout: torch.Generator  # dropout masks, on the training device
    batches: torch.Generator  # the batch order of each epoch

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> _Generators:
        init, dropout = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
        return cls(
            init=torch.Generator().manual_seed(init),
            dropout=torch.Generator(device=device).manual_seed(dropout),
            batches=torch.Generator().manual_seed(seed),
        )


@dataclass
class _Tensors:
    numeric: torch.Tensor
    categorical: torch.Tensor
    labels: np.ndarray

    @classmethod
    def of(cls, df: pd.DataFrame, spec: FeatureSpec, device: torch.device) -> _Tensors:
        numeric, categorical = spec.encode(df)
        return cls(
            torch.from_numpy(numeric).to(device),
            torch.from_numpy(categorical).to(device),
            df[LABEL].to_numpy(dtype=np.int64),
        )


def _labels(train: pd.DataFrame, config: TrainConfig) -> np.ndarray:
    y = train[LABEL].to_numpy(dtype=np.float32)
    if config.shuffle_labels:
        # Deliberately broken: the labels no longer belong to their features.
        y = np.random.default_rng(config.seed).permutation(y)
    return y


def _pos_weight(y: np.ndarray, config: TrainConfig) -> float:
    if config.pos_weight != "auto":
        return float(config.pos_weight)
    positives = float(y.sum())
    if positives == 0:
        raise ValueError("the training split holds no fraud: cannot weight the classes")
    return (len(y) - positives) / positives


def _scores(net: nn.Module, data: _Tensors, batch: int = 65_536) -> np.ndarray:
    net.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(data.labels), batch):
            num = data.numeric[start : start + batch]
            cat = data.categorical[start : start + batch]
            parts.append(torch.sigmoid(net(num, cat).double()).cpu().numpy())
    return np.concatenate(parts)


def _train_epoch(
    net: nn.Module,
    data: _Tensors,
    y: torch.Tensor,
    loss_fn: nn.Module,
    optimiser: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    net.train()
    order = torch.randperm(len(y), generator=generator).to(y.device)
    total = 0.0
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(net(data.numeric[idx], data.categorical[idx]), y[idx])
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * len(idx)
    return total / len(y)


def train_model(
    splits: Splits,
    config: TrainConfig,
    thresholds: ThresholdParams,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a `FraudScorer`; early-stop on validation PR-AUC and keep the best epoch.

    `on_epoch` receives each epoch's history entry as it completes (for progress and live
    metric logging). Thresholds are picked on validation; test is only ever scored.

    The same config on the same splits gives the same model and metrics in any process or
    thread, alone or next to other trainings (on one device type: CPU and CUDA kernels
    differ).
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    log.info("training on %s", device)
    generators = _Generators.seeded(config.seed, device)
    with _deterministic():
        spec = FeatureSpec.fit(splits.train)
        scorer = FraudScorer.build(spec, config, generators.init).to(device)
        net = scorer.net
        net.seed_dropout(generators.dropout)
        train_data = _Tensors.of(splits.train, spec, device)
        valid_data = _Tensors.of(splits.valid, spec, device)
        y_np = _labels(splits.train, config)
        pos_weight = _pos_weight(y_np, config)
        y = torch.from_numpy(y_np).to(device)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
        optimiser = torch.optim.AdamW(
            net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )

        history: list[dict[str, Any]] = []
        best_auc, best_epoch, best_state = -1.0, 0, copy.deepcopy(net.state_dict())
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            train_loss = _train_epoch(
                net, train_data, y, loss_fn, optimiser, config.batch_size, generators.batches
            )
            valid_scores = _scores(net, valid_data)
            valid_auc = _pr_auc(valid_data.labels, valid_scores)
            entry = {
                "epoch": epoch,
                "train_loss": train_loss,
                "valid_pr_auc": valid_auc,
                "epoch_seconds": time.perf_counter() - t0,
            }
            history.append(entry)
            log.info(
                "epoch %d/%d  train_loss %.4f  valid_pr_auc %.4f",
                epoch,
                config.epochs,
                train_loss,
                valid_auc,
            )
            if on_epoch is not None:
                on_epoch(dict(entry))
            if valid_auc > best_auc:
                best_auc, best_epoch = valid_auc, epoch
                best_state = copy.deepcopy(net.state_dict())
            elif epoch - best_epoch >= config.patience:
                log.info("early stop: no better valid_pr_auc since epoch %d", best_epoch)
                break
        net.load_state_dict(best_state)
        net.seed_dropout(None)  # the generator belongs to this run, not to the scorer
        net.eval()

        valid_scores = _scores(net, valid_data)
        test_scores = scorer.predict_proba(splits.test)
    picked = pick_thresholds(valid_data.labels, valid_scores, thresholds)
    scorer.thresholds = picked
    return TrainResult(
        scorer=scorer,
        history=history,
        best_epoch=best_epoch,
        device=str(device),
        valid_metrics=evaluate(valid_data.labels, valid_scores, thresholds.report_precision),
        test_metrics=evaluate(splits.test[LABEL], test_scores, thresholds.report_precision),
        thresholds=picked,
        seconds=time.perf_counter() - started,
        config=config,
        data_sizes=splits.sizes(),
        pos_weight=pos_weight,
    )


def _pr_auc(y: np.ndarray, scores: np.ndarray) -> float:
    # A validation split without fraud cannot rank epochs; 0 keeps the first epoch.
    return float(average_precision_score(y, scores)) if y.sum() else 0.0
