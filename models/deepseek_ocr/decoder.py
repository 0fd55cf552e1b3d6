"""Decoder blocks of DeepSeek-3B-MoE, the language model of DeepSeek-OCR.

Dimension legend: B batch, T tokens (queries), S keys (cached + new), D hidden, H heads,
E experts, K top_k; hd is the head dimension (D / H).

Architecture features:
- pre-norm layers: RMSNorm (computed in fp32, cast back before the weight multiply), attention,
  residual add, RMSNorm, MLP, residual add;
- plain multi-head attention (no GQA in the checkpoint, but num_key_value_heads is honoured),
  q/k/v/o projections without bias, softmax scale 1/sqrt(hd);
- rotate-half (Llama/NeoX style) RoPE on the full head dimension, base theta 10000, no scaling;
- a dense SwiGLU MLP for layers below first_k_dense_replace, a mixture of experts (moe.py) after.

Batched decoding uses LEFT padding: every sequence of a batch ends at the same cache column, so a
decode step writes one column for the whole batch. Padded key columns are masked out by the
attention mask and each sequence's positions start at 0 on its first real token (its BOS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.deepseek_ocr.config import DecoderConfig
from models.deepseek_ocr.moe import DenseMlp, MoE

# DenseMlp lives in moe.py beside the experts; it is re-exported here with the other blocks.
__all__ = [
    "Attention",
    "DecoderLayer",
    "DenseMlp",
    "KVCache",
    "MoE",
    "RMSNorm",
    "RotaryEmbedding",
    "causal_mask",
]


class RMSNorm(nn.Module):
    """Root-mean-square norm: statistics in fp32, result cast back, then scaled by `weight`."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, hidden: Tensor) -> Tensor:
        input_dtype = hidden.dtype
        hidden32 = hidden.float()
        variance = hidden32.pow(2).mean(-1, keepdim=True)  # [..., 1]
        normed = hidden32 * torch.rsqrt(variance + self.eps)
        return self.weight * normed.to(input_dtype)


def inverse_frequencies(head_dim: int, theta: float, device: torch.device | None = None) -> Tensor:
    """Return the fp32 RoPE inverse frequencies theta^(-2i/hd) for i in [0, hd/2)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta**exponents)


class RotaryEmbedding(nn.Module):
    """Rotate-half rotary position embedding over the full head dimension."""

    inv_freq: Tensor

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        # The checkpoint stores no inv_freq, so the buffer is computed here and never saved.
        self.register_buffer("inv_freq", inverse_frequencies(head_dim, theta), persistent=False)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Return (cos, sin), each [B, T, hd] in `dtype`, for integer positions [B, T]."""
        inv_freq = self.inv_freq
        if inv_freq.dtype != torch.float32:
            # module.to(bfloat16) casts buffers too; bf16 frequencies would shift every angle.
            inv_freq = inverse_frequencies(self.head_dim, self.theta, positions.device)
        freqs = positions[..., None].float() * inv_freq  # [B, T, hd/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [B, T, hd]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """Map the halves (x1, x2) of the last axis to (-x2, x1)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, H, T, hd] by the angles whose cos/sin are [B, T, hd]."""
    cos = cos[:, None]  # [B, 1, T, hd]
    sin = sin[:, None]  # [B, 1, T, hd]
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of every layer for one batch of left-padded sequences.

    With `capacity` set, each layer's storage [B, H, capacity, hd] is allocated on its first
    update (dtype and device follow the keys) and new columns are written in place. With
    `capacity=None` the storage grows by concatenation. Each layer counts its own columns, so
    no explicit "advance" call is needed after a forward pass. All rows share the column count;
    per-sequence lengths are expressed by left padding plus the attention mask.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._keys: dict[int, Tensor] = {}
        self._values: dict[int, Tensor] = {}
        self._lengths: dict[int, int] = {}

    def length(self, layer_index: int = 0) -> int:
        """Return the number of cached columns of a layer (0 before its first update)."""
        return self._lengths.get(layer_index, 0)

    def update(self, layer_index: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Append keys/values [B, H, T, hd] and return all cached ones [B, H, S, hd].

        NOTE: S grows by one per decode step, so torch.compile needs dynamic shapes here. A
        static-shape variant would return the whole capacity and mask the unwritten columns.
        """
        start = self.length(layer_index)
        end = start + keys.shape[2]
        if self.capacity is None:
            if layer_index in self._keys:
                keys = torch.cat((self._keys[layer_index], keys), dim=2)  # [B, H, S, hd]
                values = torch.cat((self._values[layer_index], values), dim=2)  # [B, H, S, hd]
            self._keys[layer_index], self._values[layer_index] = keys, values
            self._lengths[layer_index] = end
            return keys, values

        if end > self.capacity:
            message = f"KV cache capacity {self.capacity} exceeded: layer {layer_index} needs {end}"
            raise ValueError(message)
        if layer_index not in self._keys:
            batch, heads, _, head_dim = keys.shape
            shape = (batch, heads, self.capacity, head_dim)
            self._keys[layer_index] = keys.new_zeros(shape)
            self._values[layer_index] = values.new_zeros(shape)
        self._keys[layer_index][:, :, start:end] = keys
        self._values[layer_index][:, :, start:end] = values
        self._lengths[layer_index] = end
        return self._keys[layer_index][:, :, :end], self._values[layer_index][:, :, :end]

    def keep_rows(self, rows: Tensor) -> None:
        """Drop every batch row not listed in `rows` (a 1-D index tensor), e.g. finished ones."""
        for layer_index in self._keys:
            self._keys[layer_index] = self._keys[layer_index].index_select(0, rows)
            self._values[layer_index] = self._values[layer_index].index_select(0, rows)


def causal_mask(key_valid: Tensor, num_queries: int) -> Tensor:
    """Build the attention mask [B, 1, T, S] (True = may attend) for the last T of S columns.

    `key_valid` [B, S] is False on left-padding columns. Query t sits at column S - T + t and
    attends to valid keys at or before its own column. A padding query also attends to itself so
    that its softmax row is never empty. Its output is never read.
    """
    num_keys = key_valid.shape[1]
    query_columns = torch.arange(num_keys - num_queries, num_keys, device=key_valid.device)
    key_columns = torch.arange(num_keys, device=key_valid.device)
    before = key_columns[None, :] <= query_columns[:, None]  # [T, S]
    itself = key_columns[None, :] == query_columns[:, None]  # [T, S]
    mask = (before[None] & key_valid[:, None, :]) | itself[None]  # [B, T, S]
    return mask[:, None]  # [B, 1, T, S]


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and an optional KV cache."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.rotary_emb = RotaryEmbedding(self.head_dim, config.rope_theta)

    def forward(
        self,
        hidden: Tensor,
        positions: Tensor,
        cache: KVCache | None,
        layer_index: int,
        attention_mask: Tensor | None,
    ) -> Tensor:
        batch, num_tokens, _ = hidden.shape
        query = self.q_proj(hidden).view(batch, num_tokens, self.num_heads, -1).transpose(1, 2)
        key = self.k_proj(hidden).view(batch, num_tokens, self.num_kv_heads, -1).transpose(1, 2)
        value = self.v_proj(hidden).view(batch, num_tokens, self.num_kv_heads, -1).transpose(1, 2)
        # query [B, H, T, hd]; key, value [B, H_kv, T, hd]

        cos, sin = self.rotary_emb(positions, query.dtype)
        query = apply_rotary(query, cos, sin)
        key = apply_rotary(key, cos, sin)
        if cache is not None:
            key, value = cache.update(layer_index, key, value)  # [B, H_kv, S, hd]

        # Without a mask, queries are the last T of S columns and attend causally.
        if attention_mask is None and num_tokens > 1:
            all_valid = torch.ones(batch, key.shape[2], dtype=torch.bool, device=hidden.device)
            attention_mask = causal_mask(all_valid, num_tokens)
        output = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            scale=self.head_dim**-0.5,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )  # [B, H, T, hd]
        output = output.transpose(1, 2).reshape(batch, num_tokens, -1)  # [B, T, D]
        projected: Tensor = self.o_proj(output)
        return projected


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer; its MLP is dense below first_k_dense_replace, else MoE."""

    def __init__(self, config: DecoderConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp: nn.Module
        if layer_index < config.first_k_dense_replace:
            self.mlp = DenseMlp(config.hidden_size, config.intermediate_size)
        else:
            self.mlp = MoE(config)

    def forward(
        self,
        hidden: Tensor,
        positions: Tensor,
        cache: KVCache | None = None,
        layer_index: int | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Run the layer on hidden [B, T, D] at positions [B, T]; mask [B, 1, T, S] or None.

        `layer_index` selects the cache slot and defaults to the index given at construction.
        """
        slot = self.layer_index if layer_index is None else layer_index
        normed = self.input_layernorm(hidden)
        hidden = hidden + self.self_attn(normed, positions, cache, slot, attention_mask)
        normed = self.post_attention_layernorm(hidden)
        mlp_output: Tensor = self.mlp(normed)
        return hidden + mlp_output
