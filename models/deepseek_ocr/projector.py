"""Linear projector from fused CLIP + SAM features to the decoder width ("projector").

Dimension legend: B batch, T tokens, D hidden, H heads, E experts, K top_k.

One Linear(input_dim -> n_embed) with bias and no activation, stored as `layers` because the
checkpoint names it projector.layers.
"""

from __future__ import annotations

import torch
from torch import nn

from models.deepseek_ocr.config import ProjectorConfig


class Projector(nn.Module):
    """Map [..., input_dim] features to [..., n_embed] vision tokens."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.layers = nn.Linear(config.input_dim, config.n_embed)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
