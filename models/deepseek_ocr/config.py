"""Configuration of the DeepSeek-OCR network: frozen dataclasses, one per module.

Dimension legend used across models/deepseek_ocr: B batch, T tokens, D hidden, H heads,
E experts, K top_k.

`OcrConfig.from_checkpoint_config` builds everything from the checkpoint's config.json. The
encoder hyper-parameters (SAM-B, CLIP-L) are fixed in the reference builders rather than read
from vision_config, so they are constants here too; `tiny()` returns a small config for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamConfig:
    image_size: int = 1024  # pretrained input side; pos_embed is (image_size/patch_size)^2
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    neck_channels: int = 256
    downsample_channels: tuple[int, int] = (512, 1024)  # net_2, net_3 outputs
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class ClipConfig:
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    image_size: int = 224
    patch_size: int = 14  # positions: (224/14)^2 + 1 class row = 257
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class ProjectorConfig:
    input_dim: int = 2048  # CLIP width + SAM net_3 channels
    n_embed: int = 1280


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 129280
    hidden_size: int = 1280
    num_hidden_layers: int = 12
    num_attention_heads: int = 10
    num_key_value_heads: int = 10
    intermediate_size: int = 6848  # dense layers
    moe_intermediate_size: int = 896  # one routed expert
    n_routed_experts: int = 64
    n_shared_experts: int = 2  # fused into one SwiGLU of width n_shared * moe_intermediate
    num_experts_per_tok: int = 6
    first_k_dense_replace: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    bos_token_id: int = 0
    eos_token_id: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class OcrConfig:
    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_token_id: int = 128815

    @classmethod
    def from_checkpoint_config(cls, raw: dict[str, Any]) -> OcrConfig:
        """Build the config from a parsed config.json (top level or its language_config)."""
        language = dict(raw.get("language_config") or {})
        merged = {**raw, **language}
        defaults = DecoderConfig()
        decoder_fields = DecoderConfig.__dataclass_fields__
        values = {name: merged[name] for name in decoder_fields if merged.get(name) is not None}
        if merged.get("use_mla"):
            message = "config.json sets use_mla=true; DeepSeek-OCR v1 uses plain multi-head attention"
            raise ValueError(message)
        decoder = DecoderConfig(**{**defaults.__dict__, **values})
        projector_raw = raw.get("projector_config") or {}
        projector = ProjectorConfig(
            input_dim=int(projector_raw.get("input_dim", 2048)),
            n_embed=int(projector_raw.get("n_embed", decoder.hidden_size)),
        )
        return cls(decoder=decoder, projector=projector)

    @classmethod
    def tiny(cls) -> OcrConfig:
        """Return a small config with the same structure, for CPU tests with random weights."""
        sam = SamConfig(
            width=32, depth=4, heads=2, mlp_dim=64, global_attn_indexes=(1, 3),
            neck_channels=16, downsample_channels=(16, 32),
        )
        clip = ClipConfig(width=32, depth=2, heads=2, mlp_dim=64)
        projector = ProjectorConfig(input_dim=64, n_embed=32)
        decoder = DecoderConfig(
            vocab_size=129280, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, intermediate_size=64, moe_intermediate_size=16,
            n_routed_experts=4, n_shared_experts=2, num_experts_per_tok=2,
        )
        return cls(sam=sam, clip=clip, projector=projector, decoder=decoder)
