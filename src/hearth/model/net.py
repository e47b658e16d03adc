"""The fraud network: embeddings for categorical features, an MLP over everything, one logit.

The numeric preprocessing (log1p of heavy-tailed features, standardisation with training
statistics) lives inside the module as buffers, so the state_dict alone carries everything
the numbers need, and serving cannot drift from training by re-implementing it.
"""

from __future__ import annotations

import math
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
        generator: torch.Generator | None = None,
    ) -> None:
        """With `generator`, the initial weights draw from it alone (see `reset_parameters`)."""
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
            layers += [nn.Linear(width, size), nn.ReLU(), SeededDropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        if generator is not None:
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default initialisation, drawn from `generator` instead of the global RNG."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Embedding):
                    nn.init.normal_(module.weight, generator=generator)
                elif isinstance(module, nn.Linear):
                    # a=sqrt(5): what nn.Linear.reset_parameters uses.
                    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                    if module.bias is not None:
                        bound = 1 / math.sqrt(module.in_features)
                        nn.init.uniform_(module.bias, -bound, bound, generator=generator)

    def seed_dropout(self, generator: torch.Generator | None) -> None:
        """Draw every dropout mask from `generator` (on the device the net trains on);
        None: from torch's global RNG again."""
        for module in self.modules():
            if isinstance(module, SeededDropout):
                module.generator = generator

    def standardise(self, numeric: torch.Tensor) -> torch.Tensor:
        """log1p where the spec says so (negatives clamped to 0), then (x - mean) / std."""
        logged = torch.log1p(numeric.clamp(min=0.0))
        x = torch.where(self.log1p_mask, logged, numeric)
        return (x - self.mean) / self.std

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [self.standardise(numeric)]
        parts += [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)


class SeededDropout(nn.Module):
    """`nn.Dropout` whose masks come from a generator of its own, when it has one.

    The global RNG is shared by every training in the process: two sweep variants training
    at once in threads of one Dask worker would otherwise draw each other's masks.
    Parameter-free like `nn.Dropout`, so state_dicts are the same either way.
    """

    def __init__(self, p: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = p
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.generator is None:
            return nn.functional.dropout(x, self.p, training=True)
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
