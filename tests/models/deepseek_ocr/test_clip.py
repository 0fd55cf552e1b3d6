"""ClipEncoder against transformers' CLIP encoder layers given the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoder

from models.deepseek_ocr.clip import ClipEncoder
from models.deepseek_ocr.config import ClipConfig, OcrConfig

TOLERANCE = 1e-5
# Exact CLIP parameter count of the released checkpoint, unused patch convolution included.
CHECKPOINT_CLIP_PARAMETERS = 303_177_728


def make_clip_config() -> ClipConfig:
    return OcrConfig.tiny().clip


def make_random_clip(config: ClipConfig, seed: int = 0) -> ClipEncoder:
    """Build a ClipEncoder with random weights, including the zero-initialised class token."""
    torch.manual_seed(seed)
    clip = ClipEncoder(config)
    with torch.no_grad():
        for name, parameter in clip.named_parameters():
            if name == "embeddings.class_embedding":
                parameter.copy_(torch.randn_like(parameter))
            elif parameter.dim() == 1 and name.endswith("weight"):  # LayerNorm scales
                parameter.copy_(1.0 + torch.randn_like(parameter) * 0.1)
            elif parameter.dim() == 1:  # biases
                parameter.copy_(torch.randn_like(parameter) * 0.1)
    return clip.eval()


def make_reference_stack(config: ClipConfig, clip: ClipEncoder) -> CLIPEncoder:
    """Build transformers' CLIPEncoder and load it with q/k/v split from the fused qkv_proj."""
    reference_config = CLIPVisionConfig(
        hidden_size=config.width,
        intermediate_size=config.mlp_dim,
        num_attention_heads=config.heads,
        num_hidden_layers=config.depth,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act="quick_gelu",
    )
    reference_config._attn_implementation = "eager"
    reference = CLIPEncoder(reference_config)

    converted = {}
    for name, tensor in clip.transformer.state_dict().items():
        if ".qkv_proj." not in name:
            converted[name] = tensor
            continue
        query, key, value = tensor.chunk(3, dim=0)  # the fused output is [q | k | v]
        for part, piece in (("q_proj", query), ("k_proj", key), ("v_proj", value)):
            converted[name.replace("qkv_proj", part)] = piece
    reference.load_state_dict(converted, strict=True)
    return reference.eval()


def reference_embeddings(clip: ClipEncoder, sam_features: torch.Tensor) -> torch.Tensor:
    """Class token + flattened features + resized positions, then pre_layrnorm."""
    batch, channels, height, width = sam_features.shape
    table = clip.embeddings.position_embedding.weight
    side = clip.embeddings.grid_side
    patch_positions = table[1:].reshape(1, side, side, channels).permute(0, 3, 1, 2)
    if height != side:
        patch_positions = F.interpolate(
            patch_positions.float(),
            size=(height, width),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        )
    patch_positions = patch_positions.permute(0, 2, 3, 1).reshape(height * width, channels)
    positions = torch.cat([table[:1], patch_positions])

    class_token = clip.embeddings.class_embedding.expand(batch, 1, channels)
    tokens = torch.cat([class_token, sam_features.flatten(2).transpose(1, 2)], dim=1)
    return clip.pre_layrnorm(tokens + positions)


@pytest.mark.parametrize("grid", [8, 10, 16, 20])
def test_clip_matches_reference_stack(grid: int) -> None:
    """Outputs agree within 1e-5 at the SAM grid of every mode (fp32, random weights)."""
    config = make_clip_config()
    clip = make_random_clip(config)
    reference = make_reference_stack(config, clip)
    generator = torch.Generator().manual_seed(grid)
    sam_features = torch.randn(2, config.width, grid, grid, generator=generator)

    with torch.no_grad():
        ours = clip(sam_features)
        theirs = reference(reference_embeddings(clip, sam_features)).last_hidden_state

    assert ours.shape == (2, grid * grid + 1, config.width)
    max_difference = (ours - theirs).abs().max().item()
    assert max_difference <= TOLERANCE, f"max abs difference {max_difference:.3e} at grid {grid}"


def test_clip_positions_keep_class_row() -> None:
    clip = make_random_clip(make_clip_config())

    positions = clip.embeddings.positions(10, 10)

    assert positions.shape == (1, 101, clip.config.width)
    assert torch.equal(positions[0, 0], clip.embeddings.position_embedding.weight[0])


def test_clip_never_calls_patch_convolution() -> None:
    clip = make_random_clip(make_clip_config())
    with torch.no_grad():
        clip.embeddings.patch_embedding.weight.fill_(float("nan"))

        output = clip(torch.randn(1, clip.config.width, 10, 10))

    assert torch.isfinite(output).all()


def test_clip_rejects_wrong_channel_count() -> None:
    clip = ClipEncoder(make_clip_config())

    with pytest.raises(ValueError, match="channels"):
        clip(torch.zeros(1, clip.config.width + 1, 10, 10))


def test_clip_full_size_parameters_match_checkpoint() -> None:
    with torch.device("meta"):
        clip = ClipEncoder(ClipConfig())
        output = clip(torch.empty(2, 1024, 10, 10))

    shapes = {name: tuple(tensor.shape) for name, tensor in clip.state_dict().items()}
    assert output.shape == (2, 101, 1024)
    assert sum(tensor.numel() for tensor in clip.parameters()) == CHECKPOINT_CLIP_PARAMETERS
    assert shapes["embeddings.position_embedding.weight"] == (257, 1024)
    assert shapes["embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert shapes["transformer.layers.23.self_attn.qkv_proj.weight"] == (3072, 1024)
    assert "embeddings.position_ids" not in shapes
