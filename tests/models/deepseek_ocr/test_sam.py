"""SamEncoder against transformers' DeepSeek-OCR-2 SAM encoder, which has the same math."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import (
    DeepseekOcr2SamVisionConfig,
)
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import (
    DeepseekOcr2SamVisionEncoder,
)

from models.deepseek_ocr.config import OcrConfig, SamConfig
from models.deepseek_ocr.sam import SamEncoder

TOLERANCE = 1e-5
# Exact SAM parameter count of the released checkpoint, neck and compressor included.
CHECKPOINT_SAM_PARAMETERS = 95_569_152


def make_sam_config() -> SamConfig:
    """A narrow SAM with window, global and window blocks, so 1280 px views stay fast."""
    return replace(OcrConfig.tiny().sam, depth=3, global_attn_indexes=(1,))


def make_random_sam(config: SamConfig, seed: int = 0) -> SamEncoder:
    """Build a SamEncoder whose every parameter, zero-initialised ones too, is random."""
    torch.manual_seed(seed)
    sam = SamEncoder(config)
    with torch.no_grad():
        for name, parameter in sam.named_parameters():
            if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                parameter.copy_(torch.randn_like(parameter) * 0.5)
            elif parameter.dim() == 1 and name.endswith("weight"):  # LayerNorm scales
                parameter.copy_(1.0 + torch.randn_like(parameter) * 0.1)
            elif parameter.dim() == 1:  # biases
                parameter.copy_(torch.randn_like(parameter) * 0.1)
    return sam.eval()


def to_reference_key(name: str) -> str:
    """Map a checkpoint-style SAM key to the transformers deepseek_ocr2 key."""
    renames = [
        ("patch_embed.proj.", "patch_embed.projection."),
        ("blocks.", "layers."),
        (".norm1.", ".layer_norm1."),
        (".norm2.", ".layer_norm2."),
        ("neck.0.", "neck.conv1."),
        ("neck.1.", "neck.layer_norm1."),
        ("neck.2.", "neck.conv2."),
        ("neck.3.", "neck.layer_norm2."),
        ("net_2.", "proj.conv1."),
        ("net_3.", "proj.conv2."),
    ]
    for old, new in renames:
        name = name.replace(old, new)
    return name


def make_reference(config: SamConfig, sam: SamEncoder) -> DeepseekOcr2SamVisionEncoder:
    reference_config = DeepseekOcr2SamVisionConfig(
        hidden_size=config.width,
        num_hidden_layers=config.depth,
        num_attention_heads=config.heads,
        mlp_dim=config.mlp_dim,
        image_size=config.image_size,
        patch_size=config.patch_size,
        window_size=config.window_size,
        global_attn_indexes=list(config.global_attn_indexes),
        output_channels=config.neck_channels,
        downsample_channels=list(config.downsample_channels),
        layer_norm_eps=config.layer_norm_eps,
    )
    reference_config._attn_implementation = "sdpa"
    reference = DeepseekOcr2SamVisionEncoder(reference_config)
    converted = {to_reference_key(k): v for k, v in sam.state_dict().items()}
    reference.load_state_dict(converted, strict=True)
    return reference.eval()


@pytest.mark.parametrize("side", [512, 640, 1024, 1280])
def test_sam_matches_reference_encoder(side: int) -> None:
    """Outputs agree within 1e-5 at the view size of every mode (fp32, random weights)."""
    config = make_sam_config()
    sam = make_random_sam(config)
    reference = make_reference(config, sam)
    batch = 1 if side > 1024 else 2
    views = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(side))

    with torch.no_grad():
        ours = sam(views)
        theirs = reference(views).last_hidden_state

    assert ours.shape == (batch, config.downsample_channels[1], side // 64, side // 64)
    assert theirs.shape == ours.shape
    max_difference = (ours - theirs).abs().max().item()
    assert max_difference <= TOLERANCE, f"max abs difference {max_difference:.3e} at {side} px"


def test_sam_views_are_independent_in_a_batch() -> None:
    """A view encoded alone gives the same features as inside a batch."""
    sam = make_random_sam(make_sam_config())
    views = torch.randn(3, 3, 640, 640, generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        batched = sam(views)
        alone = sam(views[1:2])

    max_difference = (batched[1:2] - alone).abs().max().item()
    assert max_difference <= TOLERANCE, f"max abs difference {max_difference:.3e}"


@pytest.mark.parametrize("side", [512, 640, 1024, 1280])
def test_sam_full_size_shapes_on_meta(side: int) -> None:
    with torch.device("meta"):
        sam = SamEncoder(SamConfig())
        features = sam(torch.empty(2, 3, side, side))

    assert features.shape == (2, 1024, side // 64, side // 64)


def test_sam_full_size_parameters_match_checkpoint() -> None:
    with torch.device("meta"):
        sam = SamEncoder(SamConfig())

    shapes = {name: tuple(tensor.shape) for name, tensor in sam.state_dict().items()}
    assert sum(tensor.numel() for tensor in sam.parameters()) == CHECKPOINT_SAM_PARAMETERS
    assert shapes["patch_embed.proj.weight"] == (768, 3, 16, 16)
    assert shapes["pos_embed"] == (1, 64, 64, 768)
    assert shapes["blocks.0.attn.rel_pos_h"] == (27, 64)
    assert shapes["blocks.2.attn.rel_pos_w"] == (127, 64)
    assert shapes["neck.0.weight"] == (256, 768, 1, 1)
    assert shapes["neck.3.bias"] == (256,)
    assert shapes["net_2.weight"] == (512, 256, 3, 3)
    assert shapes["net_3.weight"] == (1024, 512, 3, 3)


def test_sam_rejects_non_square_view() -> None:
    sam = SamEncoder(make_sam_config())

    with pytest.raises(ValueError, match="expected \\[B, 3, S, S\\]"):
        sam(torch.zeros(1, 3, 512, 640))
