"""The fraud network: embeddings for categorical features, an MLP over everything, one logit.

The numeric preprocessing (log1p of heavy-tailed features, standardisation with training
statistics) lives inside the module as buffers, so the state_dict alone carries everything
the numbers need, and serving cannot drift from training by re-implementing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from hearth.model.feature_spec import FeatureSpec


class FraudNet(nn.Module):
    """MLP over standardised numerics and categorical embeddings; returns one logit per row.

    Inputs: ``numeric`` float32 (batch, n_numeric) in raw units, in ``spec.numeric`` order;
    ``categorical`` int64 (batch, n_categorical) codes from `FeatureSpec.encode`, where 0 is
    the index of an unknown value.
    """

    mean: torch.Tensor
    std: torch.Tensor
    log1p_mask: torch.Tensor

    def __init__(
        self,
        spec: FeatureSpec,
        hidden_sizes: Sequence[int] = (64, 32),
        dropout: float = 0.1,
        embedding_dim: int = 4,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.means, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(spec.stds, dtype=torch.float32))
        mask = [name in spec.log1p for name in spec.numeric]
        self.register_buffer("log1p_mask", torch.tensor(mask, dtype=torch.bool))
        # +1: index 0 is reserved for values outside the training vocabulary.
        self.embeddings = nn.ModuleList(
            nn.Embedding(len(vocab) + 1, embedding_dim) for vocab in spec.categorical.values()
        )
        width = len(spec.numeric) + embedding_dim * len(spec.categorical)
        layers: list[nn.Module] = []
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def standardise(self, numeric: torch.Tensor) -> torch.Tensor:
        """log1p where the spec says so (negatives clamped to 0), then (x - mean) / std."""
        logged = torch.log1p(numeric.clamp(min=0.0))
        x = torch.where(self.log1p_mask, logged, numeric)
        return (x - self.mean) / self.std

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [self.standardise(numeric)]
        parts += [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)
