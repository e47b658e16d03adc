"""Training configurations: `experiments/*.yaml`, validated into frozen models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from hearth.params import ConfigError


class TrainConfig(BaseModel):
    """Hyperparameters of one training run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 42
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(512, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    hidden_sizes: tuple[int, ...] = (64, 32)
    dropout: float = Field(0.1, ge=0, lt=1)
    embedding_dim: int = Field(4, ge=1)
    patience: int = Field(4, ge=1, description="Epochs without a better validation PR-AUC.")
    pos_weight: float | Literal["auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    shuffle_labels: bool = Field(
        False, description="Train on permuted labels: a deliberately broken model for drills."
    )


class Experiment(BaseModel):
    """One experiment file: a base configuration and, for a sweep, variants of it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    train: TrainConfig = TrainConfig()
    sweep: tuple[dict[str, Any], ...] = ()

    def configurations(self) -> list[tuple[str, TrainConfig]]:
        """(run name, config) for each run: the base alone, or one per sweep variant."""
        if not self.sweep:
            return [(self.name, self.train)]
        runs = []
        for i, override in enumerate(self.sweep):
            config = TrainConfig.model_validate({**self.train.model_dump(), **override})
            label = ",".join(f"{k}={v}" for k, v in override.items()) or "base"
            runs.append((f"{self.name}[{i}:{label}]", config))
        return runs


def load_experiment(path: Path) -> Experiment:
    """Read and validate one experiment YAML."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"experiment file {path} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    try:
        experiment = Experiment.model_validate(raw or {})
        experiment.configurations()  # validates sweep overrides too
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return experiment
