"""CLIP-L/14 transformer fed with SAM features ("vision_model" in the checkpoint).

Dimension legend: B batch, T tokens, D hidden, H heads, E experts, K top_k; h x w SAM feature
grid, c head dim, g pretrained position grid side (image_size / patch_size).

Architecture:
- The SAM features [B, C, h, w] replace CLIP's patch embedding: flattened row-major to
  [B, h*w, C] (C equals the CLIP width) with the learned class embedding prepended.
- Position embeddings: the class row as stored, and the g x g patch rows resized in fp32 (bicubic,
  antialias) to h x w when the grid differs.
- pre_layrnorm (the checkpoint's spelling), then pre-norm blocks: fused qkv_proj whose output
  splits as [q | k | v], bidirectional attention with no mask, quick-GELU MLP.
- No post-LayerNorm and no projection head.

The checkpoint's patch convolution (embeddings.patch_embedding) is kept so that loading is
strict by name, but forward never calls it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.deepseek_ocr.config import ClipConfig


class ClipEncoder(nn.Module):
    """Encode SAM features [B, C, h, w] into [B, h*w + 1, D] with the class token first."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = ClipEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.transformer = ClipTransformer(config)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        if sam_features.shape[1] != self.config.width:
            message = (
                f"invalid SAM feature shape {tuple(sam_features.shape)}: expected "
                f"{self.config.width} channels, the CLIP width"
            )
            raise ValueError(message)

        x = self.embeddings(sam_features)  # [B, T, D]
        x = self.pre_layrnorm(x)
        return self.transformer(x)


class ClipEmbeddings(nn.Module):
    """Class token plus SAM features, with resized position embeddings."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.grid_side = config.image_size // config.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(config.width))
        self.patch_embedding = nn.Conv2d(
            3, config.width, kernel_size=config.patch_size, stride=config.patch_size, bias=False
        )  # NOTE: never called, because SAM features take its place.
        self.position_embedding = nn.Embedding(self.grid_side**2 + 1, config.width)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = sam_features.shape
        patches = sam_features.flatten(2).transpose(1, 2)  # [B, h*w, D]
        class_token = self.class_embedding.to(patches.dtype).expand(batch, 1, -1)  # [B, 1, D]
        tokens = torch.cat([class_token, patches], dim=1)  # [B, T, D]
        return tokens + self.positions(height, width).to(tokens.dtype)

    def positions(self, height: int, width: int) -> torch.Tensor:
        """Return [1, h*w + 1, D] position embeddings for an h x w grid."""
        table = self.position_embedding.weight  # [g*g + 1, D]
        class_row, grid_rows = table[:1], table[1:]
        if (height, width) != (self.grid_side, self.grid_side):
            side, dim = self.grid_side, table.shape[1]
            grid = grid_rows.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # [1, D, g, g]
            grid = F.interpolate(
                grid.to(torch.float32),
                size=(height, width),
                mode="bicubic",
                align_corners=False,
                antialias=True,
            )
            grid = grid.to(table.dtype).permute(0, 2, 3, 1)  # [1, h, w, D]
            grid_rows = grid.reshape(height * width, dim)  # [h*w, D]
        return torch.cat([class_row, grid_rows], dim=0)[None]  # [1, T, D]


class ClipTransformer(nn.Module):
    """The stack of pre-norm encoder layers."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ClipLayer(config) for _ in range(config.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipLayer(nn.Module):
    """x + attention(layer_norm1(x)), then + mlp(layer_norm2(x))."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.self_attn = ClipAttention(config.width, config.heads)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = ClipMlp(config.width, config.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipAttention(nn.Module):
    """Bidirectional multi-head attention with one fused q/k/v projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv_proj(x).reshape(batch, tokens, 3, self.heads, -1)  # [B, T, 3, H, c]
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, T, c]
        out = F.scaled_dot_product_attention(query, key, value)  # [B, H, T, c]
        out = out.transpose(1, 2).reshape(batch, tokens, dim)  # [B, T, D]
        return self.out_proj(out)


class ClipMlp(nn.Module):
    """fc1, quick-GELU x * sigmoid(1.702 x), fc2."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x)
        return self.fc2(x)
