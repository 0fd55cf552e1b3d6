"""Checkpoint names and shapes, the official layout on disk, and strict loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from models.deepseek_ocr.config import OcrConfig
from models.deepseek_ocr.model import DeepseekOcrForCausalLM, skip_weight_init
from models.deepseek_ocr.preprocess import prepare_page
from models.deepseek_ocr.random_weights import fill_random_weights
from models.deepseek_ocr.weights import (
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointMismatchError,
    checkpoint_config_json,
    config_from_checkpoint_json,
    describe_checkpoint,
    load_model,
    read_checkpoint_config,
    save_checkpoint,
)

FULL_PARAMETERS = 3_336_106_240
FULL_TENSORS = 2_710

# One row per name pattern of the official weight table (N = block index, E = expert index).
FULL_SHAPES = {
    "model.sam_model.patch_embed.proj.weight": [768, 3, 16, 16],
    "model.sam_model.patch_embed.proj.bias": [768],
    "model.sam_model.pos_embed": [1, 64, 64, 768],
    "model.sam_model.blocks.0.norm1.weight": [768],
    "model.sam_model.blocks.11.norm2.bias": [768],
    "model.sam_model.blocks.3.attn.qkv.weight": [2304, 768],
    "model.sam_model.blocks.3.attn.qkv.bias": [2304],
    "model.sam_model.blocks.4.attn.proj.weight": [768, 768],
    "model.sam_model.blocks.4.attn.proj.bias": [768],
    "model.sam_model.blocks.0.attn.rel_pos_h": [27, 64],
    "model.sam_model.blocks.10.attn.rel_pos_w": [27, 64],
    "model.sam_model.blocks.2.attn.rel_pos_h": [127, 64],
    "model.sam_model.blocks.5.attn.rel_pos_w": [127, 64],
    "model.sam_model.blocks.8.attn.rel_pos_h": [127, 64],
    "model.sam_model.blocks.11.attn.rel_pos_w": [127, 64],
    "model.sam_model.blocks.7.mlp.lin1.weight": [3072, 768],
    "model.sam_model.blocks.7.mlp.lin1.bias": [3072],
    "model.sam_model.blocks.7.mlp.lin2.weight": [768, 3072],
    "model.sam_model.blocks.7.mlp.lin2.bias": [768],
    "model.sam_model.neck.0.weight": [256, 768, 1, 1],
    "model.sam_model.neck.1.weight": [256],
    "model.sam_model.neck.1.bias": [256],
    "model.sam_model.neck.2.weight": [256, 256, 3, 3],
    "model.sam_model.neck.3.weight": [256],
    "model.sam_model.neck.3.bias": [256],
    "model.sam_model.net_2.weight": [512, 256, 3, 3],
    "model.sam_model.net_3.weight": [1024, 512, 3, 3],
    "model.vision_model.embeddings.class_embedding": [1024],
    "model.vision_model.embeddings.patch_embedding.weight": [1024, 3, 14, 14],
    "model.vision_model.embeddings.position_embedding.weight": [257, 1024],
    "model.vision_model.pre_layrnorm.weight": [1024],
    "model.vision_model.pre_layrnorm.bias": [1024],
    "model.vision_model.transformer.layers.0.layer_norm1.weight": [1024],
    "model.vision_model.transformer.layers.23.layer_norm2.bias": [1024],
    "model.vision_model.transformer.layers.5.self_attn.qkv_proj.weight": [3072, 1024],
    "model.vision_model.transformer.layers.5.self_attn.qkv_proj.bias": [3072],
    "model.vision_model.transformer.layers.5.self_attn.out_proj.weight": [1024, 1024],
    "model.vision_model.transformer.layers.5.self_attn.out_proj.bias": [1024],
    "model.vision_model.transformer.layers.9.mlp.fc1.weight": [4096, 1024],
    "model.vision_model.transformer.layers.9.mlp.fc1.bias": [4096],
    "model.vision_model.transformer.layers.9.mlp.fc2.weight": [1024, 4096],
    "model.vision_model.transformer.layers.9.mlp.fc2.bias": [1024],
    "model.projector.layers.weight": [1280, 2048],
    "model.projector.layers.bias": [1280],
    "model.image_newline": [1280],
    "model.view_seperator": [1280],
    "model.embed_tokens.weight": [129280, 1280],
    "model.layers.0.input_layernorm.weight": [1280],
    "model.layers.11.post_attention_layernorm.weight": [1280],
    "model.layers.0.self_attn.q_proj.weight": [1280, 1280],
    "model.layers.6.self_attn.k_proj.weight": [1280, 1280],
    "model.layers.6.self_attn.v_proj.weight": [1280, 1280],
    "model.layers.11.self_attn.o_proj.weight": [1280, 1280],
    "model.layers.0.mlp.gate_proj.weight": [6848, 1280],
    "model.layers.0.mlp.up_proj.weight": [6848, 1280],
    "model.layers.0.mlp.down_proj.weight": [1280, 6848],
    "model.layers.1.mlp.gate.weight": [64, 1280],
    "model.layers.11.mlp.gate.weight": [64, 1280],
    "model.layers.1.mlp.experts.0.gate_proj.weight": [896, 1280],
    "model.layers.5.mlp.experts.37.up_proj.weight": [896, 1280],
    "model.layers.11.mlp.experts.63.down_proj.weight": [1280, 896],
    "model.layers.3.mlp.shared_experts.gate_proj.weight": [1792, 1280],
    "model.layers.3.mlp.shared_experts.up_proj.weight": [1792, 1280],
    "model.layers.3.mlp.shared_experts.down_proj.weight": [1280, 1792],
    "model.norm.weight": [1280],
    "lm_head.weight": [129280, 1280],
}


def make_tiny_model(seed: int = 0) -> DeepseekOcrForCausalLM:
    torch.manual_seed(seed)
    model = DeepseekOcrForCausalLM(OcrConfig.tiny())
    fill_random_weights(model, seed=seed, std=0.2)
    return model.eval()


def run_model(model: DeepseekOcrForCausalLM) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (vision sequence, logits) for a fixed small page and fixed token ids."""
    image = Image.new("RGB", (96, 64), (230, 230, 230))
    page = prepare_page(image, "tiny")
    vision = model.encode_images([page])[0]
    token_ids = torch.tensor([[0, 5, 900, 128820, 17, 3]])
    positions = torch.arange(token_ids.shape[1])[None]
    with torch.no_grad():
        logits = model.step(token_ids, positions, None, None, all_positions=True)
    return vision, logits


@pytest.fixture(scope="module")
def full_description() -> dict[str, object]:
    return describe_checkpoint(OcrConfig())


def test_full_model_parameter_count(full_description: dict[str, object]) -> None:
    assert full_description["parameters"] == FULL_PARAMETERS


def test_full_model_tensor_count(full_description: dict[str, object]) -> None:
    tensors = full_description["tensors"]
    assert isinstance(tensors, list)
    assert len(tensors) == FULL_TENSORS
    assert sum(math.prod(shape) for _, shape, _ in tensors) == FULL_PARAMETERS


def test_full_model_names_are_sorted_and_official(full_description: dict[str, object]) -> None:
    tensors = full_description["tensors"]
    assert isinstance(tensors, list)
    names = [name for name, _, _ in tensors]
    assert names == sorted(names)
    assert not any(name.endswith(("gate_up_proj", "experts.down_proj")) for name in names)
    assert sum(".mlp.experts." in name for name in names) == 11 * 64 * 3
    assert all(dtype == "bfloat16" for _, _, dtype in tensors)


@pytest.mark.parametrize("name", sorted(FULL_SHAPES))
def test_full_model_shape(full_description: dict[str, object], name: str) -> None:
    tensors = full_description["tensors"]
    assert isinstance(tensors, list)
    shapes = {tensor_name: shape for tensor_name, shape, _ in tensors}
    assert shapes.get(name) == FULL_SHAPES[name]


def test_saved_layout_uses_per_expert_names(tmp_path: Path) -> None:
    save_checkpoint(make_tiny_model(), tmp_path, OcrConfig.tiny())
    names = set(load_file(str(tmp_path / SINGLE_FILE)))
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in names
    assert "model.layers.1.mlp.experts.0.gate_proj.weight" in names
    assert not any(name.endswith("gate_up_proj") for name in names)
    assert not any("inv_freq" in name or "position_ids" in name for name in names)


def test_saved_config_has_official_fields(tmp_path: Path) -> None:
    save_checkpoint(make_tiny_model(), tmp_path, OcrConfig.tiny())
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["architectures"] == ["DeepseekOCRForCausalLM"]
    assert raw["model_type"] == "deepseek_vl_v2"
    assert raw["language_config"]["architectures"] == ["DeepseekV2ForCausalLM"]
    assert raw["language_config"]["n_routed_experts"] == 4
    assert raw["n_routed_experts"] == 4
    assert raw["use_mla"] is False
    assert raw["projector_config"]["n_embed"] == 32
    assert "sam_vit_b" in raw["vision_config"]["width"]


def test_saved_config_reads_back_equal(tmp_path: Path) -> None:
    save_checkpoint(make_tiny_model(), tmp_path, OcrConfig.tiny())
    assert read_checkpoint_config(tmp_path) == OcrConfig.tiny()


@pytest.mark.parametrize("max_shard_bytes", [None, 2_000_000])
def test_saved_model_loads_back_identically(tmp_path: Path, max_shard_bytes: int | None) -> None:
    model = make_tiny_model()
    save_checkpoint(model, tmp_path, OcrConfig.tiny(), max_shard_bytes=max_shard_bytes)

    loaded = load_model(tmp_path, device="cpu")

    expected_vision, expected_logits = run_model(model)
    vision, logits = run_model(loaded)
    assert torch.equal(vision, expected_vision), (vision - expected_vision).abs().max()
    assert torch.equal(logits, expected_logits), (logits - expected_logits).abs().max()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_sharded_save_writes_index(tmp_path: Path) -> None:
    save_checkpoint(make_tiny_model(), tmp_path, OcrConfig.tiny(), max_shard_bytes=2_000_000)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    shard_files = set(index["weight_map"].values())
    assert len(shard_files) > 1
    assert all((tmp_path / name).is_file() for name in shard_files)
    assert not (tmp_path / SINGLE_FILE).exists()


def test_load_casts_to_requested_dtype(tmp_path: Path) -> None:
    save_checkpoint(make_tiny_model(), tmp_path, OcrConfig.tiny())
    loaded = load_model(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    rotary = loaded.model.layers[0].self_attn.rotary_emb.inv_freq
    assert rotary.dtype == torch.float32


def test_missing_tensor_is_listed(tmp_path: Path) -> None:
    save_checkpoint(make_tiny_model(), tmp_path, OcrConfig.tiny())
    tensors = load_file(str(tmp_path / SINGLE_FILE))
    del tensors["model.layers.1.mlp.experts.2.up_proj.weight"]
    save_file(tensors, str(tmp_path / SINGLE_FILE))

    with pytest.raises(CheckpointMismatchError) as caught:
        load_model(tmp_path)
    assert "1 missing" in str(caught.value)
    assert "model.layers.1.mlp.experts.2.up_proj.weight" in str(caught.value)
    assert "unexpected" not in str(caught.value)


def test_unexpected_tensor_is_listed(tmp_path: Path) -> None:
    save_checkpoint(make_tiny_model(), tmp_path, OcrConfig.tiny())
    tensors = load_file(str(tmp_path / SINGLE_FILE))
    tensors["model.vision_model.embeddings.position_ids"] = torch.arange(257)[None]
    save_file(tensors, str(tmp_path / SINGLE_FILE))

    with pytest.raises(CheckpointMismatchError) as caught:
        load_model(tmp_path)
    assert "1 unexpected" in str(caught.value)
    assert "model.vision_model.embeddings.position_ids" in str(caught.value)
    assert "missing" not in str(caught.value)


def test_long_mismatch_listing_is_truncated(tmp_path: Path) -> None:
    save_checkpoint(make_tiny_model(), tmp_path, OcrConfig.tiny())
    tensors = load_file(str(tmp_path / SINGLE_FILE))
    kept = {name: t for name, t in tensors.items() if not name.startswith("model.layers.")}
    save_file(kept, str(tmp_path / SINGLE_FILE))

    with pytest.raises(CheckpointMismatchError) as caught:
        load_model(tmp_path)
    message = str(caught.value)
    removed = len(tensors) - len(kept)
    assert f"{removed} missing" in message
    assert f"and {removed - 20} more" in message
    assert len(message.splitlines()) < 30


def test_misshapen_tensor_is_listed(tmp_path: Path) -> None:
    save_checkpoint(make_tiny_model(), tmp_path, OcrConfig.tiny())
    tensors = load_file(str(tmp_path / SINGLE_FILE))
    tensors["model.norm.weight"] = torch.ones(33)
    save_file(tensors, str(tmp_path / SINGLE_FILE))

    with pytest.raises(CheckpointMismatchError, match=r"model\.norm\.weight: checkpoint \[33\]"):
        load_model(tmp_path)


def test_folder_without_weights_is_rejected(tmp_path: Path) -> None:
    save_checkpoint(make_tiny_model(), tmp_path, OcrConfig.tiny())
    (tmp_path / SINGLE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)


def test_official_config_fields_give_full_config() -> None:
    """The official file has neither our extra keys nor the DeepseekV2Config default fields."""
    raw = checkpoint_config_json(OcrConfig())
    for key in ("rms_norm_eps", "rope_theta", "norm_topk_prob", "routed_scaling_factor"):
        del raw[key]
        del raw["language_config"][key]
    for encoder in raw["vision_config"]["width"].values():
        encoder.pop("mlp_dim")
        encoder.pop("neck_channels", None)
    assert config_from_checkpoint_json(raw) == OcrConfig()


@pytest.mark.slow
def test_full_size_checkpoint_round_trip(tmp_path: Path) -> None:
    """Write and strictly reload a full-size bf16 checkpoint (about 1 min, 11 GiB of RAM)."""
    with skip_weight_init():
        model = DeepseekOcrForCausalLM(OcrConfig()).to(torch.bfloat16)
    fill_random_weights(model)
    save_checkpoint(model, tmp_path, OcrConfig(), max_shard_bytes=4 * 2**30)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == 2 * FULL_PARAMETERS
    assert len(index["weight_map"]) == FULL_TENSORS

    name = "model.layers.7.mlp.experts.gate_up_proj"
    expected = model.state_dict()[name].clone()
    del model  # keep one full model in memory at a time

    loaded = load_model(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert torch.equal(loaded.state_dict()[name], expected)
