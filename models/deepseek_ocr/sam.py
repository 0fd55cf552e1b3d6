"""SAM ViT-B image encoder with the 16x token compressor ("sam_model" in the checkpoint).

Dimension legend: B batch, T tokens, D hidden, H heads, E experts, K top_k; S view side in
pixels, h x w patch grid (S / 16), c head dim, C channels.

Architecture:
- Patch embedding: 16x16 convolution with bias, kept channels-last [B, h, w, D].
- Absolute position embedding for the pretrained 64x64 grid, resized in fp32 (bicubic,
  antialias) for other view sizes.
- Pre-norm blocks with exact GELU. Most blocks attend inside 14x14 windows, and the blocks in
  global_attn_indexes attend over the whole grid. The grid is zero-padded to a multiple of the
  window with no mask, as the released model does, so padded tokens still act as keys and
  values through the q/k/v bias.
- Decomposed relative position bias (MViTv2) in every block, the tables resized linearly in
  fp32 when the grid differs from the pretrained one.
- Neck: 1x1 conv, channel LayerNorm, 3x3 conv, channel LayerNorm (no biases on the convs).
- Compressor: net_2 and net_3, two stride-2 3x3 convolutions with no activation between them,
  so a view of side S leaves as [B, C_out, S/64, S/64].

Attribute names are the checkpoint names, so state_dict() keys match it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.deepseek_ocr.config import SamConfig


class SamEncoder(nn.Module):
    """Encode views [B, 3, S, S] into compressed SAM features [B, C_out, S/64, S/64]."""

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        grid = config.image_size // config.patch_size
        width = config.width

        self.patch_embed = PatchEmbed(config.patch_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, width))
        self.blocks = nn.ModuleList(
            SamBlock(
                config,
                window_size=0 if index in config.global_attn_indexes else config.window_size,
                pretrained_grid=grid,
            )
            for index in range(config.depth)
        )
        neck = config.neck_channels
        self.neck = nn.Sequential(
            nn.Conv2d(width, neck, kernel_size=1, bias=False),
            LayerNorm2d(neck, config.layer_norm_eps),
            nn.Conv2d(neck, neck, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(neck, config.layer_norm_eps),
        )
        middle, out = config.downsample_channels
        self.net_2 = nn.Conv2d(neck, middle, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(middle, out, kernel_size=3, stride=2, padding=1, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        side = pixels.shape[-1]
        if pixels.shape[-2] != side or side % self.config.patch_size:
            message = (
                f"invalid view shape {tuple(pixels.shape)}: expected [B, 3, S, S] with S a "
                f"multiple of {self.config.patch_size}"
            )
            raise ValueError(message)

        x = self.patch_embed(pixels)  # [B, h, w, D]
        x = x + resize_pos_embed(self.pos_embed, x.shape[1], x.shape[2])
        for block in self.blocks:
            x = block(x)

        x = self.neck(x.permute(0, 3, 1, 2))  # [B, C_neck, h, w]
        x = self.net_2(x)  # [B, C_mid, h/2, w/2]
        return self.net_3(x)  # [B, C_out, h/4, w/4]


class PatchEmbed(nn.Module):
    """Non-overlapping patch convolution, output channels-last."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).permute(0, 2, 3, 1)  # [B, h, w, D]


class SamBlock(nn.Module):
    """Pre-norm transformer block, with window attention when window_size > 0, else global."""

    def __init__(self, config: SamConfig, window_size: int, pretrained_grid: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attn = SamAttention(
            config.width, config.heads, rel_pos_size=window_size or pretrained_grid
        )
        self.norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = SamMlp(config.width, config.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)

        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            windows = partition_windows(x, self.window_size)  # [B*windows, ws, ws, D]
            windows = self.attn(windows)
            x = merge_windows(windows, self.window_size, height, width)  # [B, h, w, D]
        else:
            x = self.attn(x)

        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class SamAttention(nn.Module):
    """Multi-head self-attention over a 2-D grid with decomposed relative position bias."""

    def __init__(self, width: int, heads: int, rel_pos_size: int) -> None:
        super().__init__()
        self.heads = heads
        head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.heads, -1)  # [B, T, 3, H, c]
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, T, c]

        bias = self._rel_pos_bias(query, height, width)  # [B, H, T, T]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)  # [B, H, T, c]
        out = out.transpose(1, 2).reshape(batch, height, width, dim)  # [B, h, w, D]
        return self.proj(out)

    def _rel_pos_bias(self, query: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Build the additive bias q . R_h[row_q - row_k] + q . R_w[col_q - col_k] (q unscaled).

        NOTE: the bias is materialised as [B, H, T, T]. In a global block of the full model that
        is 12 * 6400^2 bf16 values, about 0.98 GB per 1280 px view (0.4 GB at 1024 px), so
        callers bound the number of views per call.
        """
        batch, heads, _, head_dim = query.shape
        table_h = relative_positions(self.rel_pos_h, height).to(query.dtype)  # [h, h, c]
        table_w = relative_positions(self.rel_pos_w, width).to(query.dtype)  # [w, w, c]

        query_grid = query.reshape(batch, heads, height, width, head_dim)  # [B, H, h, w, c]
        bias_h = torch.einsum("bnyxc,ykc->bnyxk", query_grid, table_h)  # [B, H, h, w, h]
        bias_w = torch.einsum("bnyxc,xkc->bnyxk", query_grid, table_w)  # [B, H, h, w, w]
        bias = bias_h[..., :, None] + bias_w[..., None, :]  # [B, H, h, w, h, w]
        return bias.reshape(batch, heads, height * width, height * width)  # [B, H, T, T]


class SamMlp(nn.Module):
    """Two linear layers with exact (erf) GELU between them."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(width, hidden)
        self.lin2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of [B, C, h, w], computed in the input dtype."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)  # [B, 1, h, w]
        variance = (x - mean).pow(2).mean(1, keepdim=True)  # [B, 1, h, w]
        x = (x - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def resize_pos_embed(pos_embed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a [1, g, g, D] position table to [1, h, w, D] in fp32 (bicubic, antialias)."""
    if pos_embed.shape[1] == height and pos_embed.shape[2] == width:
        return pos_embed
    grid = pos_embed.permute(0, 3, 1, 2).to(torch.float32)  # [1, D, g, g]
    grid = F.interpolate(
        grid, size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )
    return grid.to(pos_embed.dtype).permute(0, 2, 3, 1)  # [1, h, w, D]


def relative_positions(table: torch.Tensor, size: int) -> torch.Tensor:
    """Return [size, size, c] embeddings of (i - j) for a query/key axis of equal length.

    A table learned for another length (2 * size - 1 entries are needed) is resized with 1-D
    linear interpolation in fp32 and cast back to its dtype.
    """
    length = 2 * size - 1
    if table.shape[0] != length:
        resized = F.interpolate(
            table.to(torch.float32).T[None], size=length, mode="linear"
        )  # [1, c, length]
        table = resized[0].T.to(table.dtype)  # [length, c]
    offsets = torch.arange(size, device=table.device)
    index = offsets[:, None] - offsets[None, :] + (size - 1)  # [size, size]
    return table[index]


def partition_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """Zero-pad [B, h, w, D] at the bottom/right to multiples of window and cut windows."""
    batch, height, width, dim = x.shape
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # [B, Hp, Wp, D]
    rows, columns = (height + pad_h) // window, (width + pad_w) // window
    x = x.reshape(batch, rows, window, columns, window, dim)
    x = x.permute(0, 1, 3, 2, 4, 5)  # [B, rows, columns, ws, ws, D]
    return x.reshape(batch * rows * columns, window, window, dim)  # [B*windows, ws, ws, D]


def merge_windows(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Reassemble windows from partition_windows into [B, h, w, D], dropping the padding."""
    rows, columns = -(-height // window), -(-width // window)
    dim = windows.shape[-1]
    batch = windows.shape[0] // (rows * columns)
    x = windows.reshape(batch, rows, columns, window, window, dim)
    x = x.permute(0, 1, 3, 2, 4, 5)  # [B, rows, ws, columns, ws, D]
    x = x.reshape(batch, rows * window, columns * window, dim)  # [B, Hp, Wp, D]
    return x[:, :height, :width].contiguous()
