"""Checkpoint reading and writing for DeepSeek-OCR, by the official tensor names.

Dimension legend used across models/deepseek_ocr: B batch, T tokens, D hidden, H heads,
E experts, K top_k; I is the width of one routed expert.

This is the only module that reads checkpoints. Our `state_dict()` keys are the official
names except for the routed experts. The checkpoint stores one tensor per expert
(`model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight`). The MoE keeps them stacked as
`experts.gate_up_proj` [E, 2*I, D] (gate rows first, then up rows) and `experts.down_proj`
[E, D, I]. Loading is strict: a missing, unexpected or misshapen tensor stops it with a list
of the names involved. Only safetensors files are read, so no checkpoint code ever runs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from models.deepseek_ocr.config import ClipConfig, OcrConfig, SamConfig

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Names listed per kind in a mismatch error before the list is cut short.
_MAX_LISTED_NAMES = 20

_STACKED_EXPERTS = re.compile(r"^(?P<prefix>.+\.experts)\.(?P<kind>gate_up_proj|down_proj)$")
_EXPERT_TENSOR = re.compile(
    r"^(?P<prefix>.+\.experts)\.(?P<expert>\d+)\.(?P<kind>gate_proj|up_proj|down_proj)\.weight$"
)
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensor names or shapes differ from the model's."""


# --- names and shapes ------------------------------------------------------------------------


def checkpoint_tensor_specs(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Return {official name: (shape, dtype)} for every tensor the checkpoint must hold.

    Works on a model built on the meta device, so no weights are needed.
    """
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name, tensor in model.state_dict().items():
        match = _STACKED_EXPERTS.match(name)
        if match is None:
            specs[name] = (tuple(tensor.shape), tensor.dtype)
            continue

        prefix = match["prefix"]
        if match["kind"] == "gate_up_proj":
            num_experts, double_width, hidden = tensor.shape  # [E, 2*I, D]
            for expert in range(num_experts):
                for kind in ("gate_proj", "up_proj"):
                    specs[f"{prefix}.{expert}.{kind}.weight"] = (
                        (double_width // 2, hidden),
                        tensor.dtype,
                    )
        else:
            num_experts, hidden, width = tensor.shape  # [E, D, I]
            for expert in range(num_experts):
                specs[f"{prefix}.{expert}.down_proj.weight"] = ((hidden, width), tensor.dtype)
    return specs


def to_checkpoint_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the model's tensors under the official names, experts split one per tensor."""
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        match = _STACKED_EXPERTS.match(name)
        if match is None:
            tensors[name] = tensor.detach().contiguous()
            continue

        prefix = match["prefix"]
        for expert in range(tensor.shape[0]):
            if match["kind"] == "gate_up_proj":
                width = tensor.shape[1] // 2
                tensors[f"{prefix}.{expert}.gate_proj.weight"] = tensor[expert, :width].clone()
                tensors[f"{prefix}.{expert}.up_proj.weight"] = tensor[expert, width:].clone()
            else:
                tensors[f"{prefix}.{expert}.down_proj.weight"] = tensor[expert].clone()
    return tensors


def check_names(expected: set[str] | dict[str, Any], found: set[str] | dict[str, Any]) -> None:
    """Raise CheckpointMismatchError listing missing and unexpected names, if there are any."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if not missing and not unexpected:
        return
    lines = ["the checkpoint does not match the model:"]
    lines += _name_listing("missing", missing)
    lines += _name_listing("unexpected", unexpected)
    raise CheckpointMismatchError("\n".join(lines))


def describe_checkpoint(config: OcrConfig, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Return {"parameters": N, "tensors": [[name, shape, dtype], ...]} by official name, sorted.

    The model is built on the meta device, so this needs no memory for weights.
    """
    from models.deepseek_ocr.model import DeepseekOcrForCausalLM

    with torch.device("meta"):
        model = DeepseekOcrForCausalLM(config).to(dtype)
    specs = checkpoint_tensor_specs(model)
    tensors = [
        [name, list(shape), _DTYPE_NAMES.get(tensor_dtype, str(tensor_dtype))]
        for name, (shape, tensor_dtype) in sorted(specs.items())
    ]
    parameters = sum(math.prod(shape) for shape, _ in specs.values())
    return {"parameters": parameters, "tensors": tensors}


# --- reading -------------------------------------------------------------------------------


def read_checkpoint_config(folder: Path) -> OcrConfig:
    """Build the OcrConfig of a checkpoint folder from its config.json."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        message = f"{CONFIG_FILE} not found in {folder}: point at a DeepSeek-OCR checkpoint folder"
        raise FileNotFoundError(message)
    return config_from_checkpoint_json(json.loads(path.read_text()))


def config_from_checkpoint_json(raw: dict[str, Any]) -> OcrConfig:
    """Build an OcrConfig from parsed config.json, encoder sizes from its vision_config.

    The reference builders hard-code the encoders, and the official vision_config lists those
    same sizes, so reading them changes nothing for the official file. Reading them lets small
    test checkpoints describe small encoders. `mlp_dim` and `neck_channels` are our own additions.
    """
    config = OcrConfig.from_checkpoint_config(raw)
    widths = (raw.get("vision_config") or {}).get("width") or {}
    sam_raw = widths.get("sam_vit_b") or {}
    clip_raw = widths.get("clip-l-14-224") or {}

    sam_defaults = SamConfig()
    sam = SamConfig(
        width=int(sam_raw.get("width", sam_defaults.width)),
        depth=int(sam_raw.get("layers", sam_defaults.depth)),
        heads=int(sam_raw.get("heads", sam_defaults.heads)),
        mlp_dim=int(sam_raw.get("mlp_dim", sam_defaults.mlp_dim)),
        global_attn_indexes=tuple(
            sam_raw.get("global_attn_indexes", sam_defaults.global_attn_indexes)
        ),
        neck_channels=int(sam_raw.get("neck_channels", sam_defaults.neck_channels)),
        downsample_channels=_pair(sam_raw.get("downsample_channels"), sam_defaults),
    )
    clip_defaults = ClipConfig()
    clip = ClipConfig(
        width=int(clip_raw.get("width", clip_defaults.width)),
        depth=int(clip_raw.get("layers", clip_defaults.depth)),
        heads=int(clip_raw.get("heads", clip_defaults.heads)),
        mlp_dim=int(clip_raw.get("mlp_dim", clip_defaults.mlp_dim)),
        image_size=int(clip_raw.get("image_size", clip_defaults.image_size)),
        patch_size=int(clip_raw.get("patch_size", clip_defaults.patch_size)),
    )
    return replace(config, sam=sam, clip=clip)


def checkpoint_files(folder: Path) -> dict[str, Path]:
    """Return {tensor name: file} from the shard index, or from the single safetensors file."""
    folder = Path(folder)
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        return {name: folder / file_name for name, file_name in weight_map.items()}

    single = folder / SINGLE_FILE
    if not single.is_file():
        message = f"neither {INDEX_FILE} nor {SINGLE_FILE} found in {folder}"
        raise FileNotFoundError(message)
    with safe_open(str(single), framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)


def load_checkpoint_weights(
    model: nn.Module, folder: Path, *, dtype: torch.dtype, device: torch.device | str
) -> None:
    """Load a checkpoint folder into `model` strictly, casting every tensor to `dtype`.

    The checkpoint tensors replace the model's parameters (load_state_dict with assign=True),
    so a model built without initialised weights never keeps two copies. Buffers that are not
    saved (rotary inv_freq, position ids) keep the values and dtype they were built with.
    """
    specs = checkpoint_tensor_specs(model)
    files = checkpoint_files(folder)
    check_names(specs, files)
    _check_shapes(specs, files)

    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)

    for path, names in sorted(by_file.items()):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in sorted(names):
                tensor = handle.get_tensor(name).to(device=device, dtype=dtype)
                _place_tensor(state, expected, name, tensor)

    model.load_state_dict(state, strict=True, assign=True)


def load_model(
    folder: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """Build DeepseekOcrForCausalLM from a checkpoint folder; bf16 on CUDA, fp32 elsewhere.

    On a 2-core CPU, a full-size bf16 checkpoint (random weights, 6,672,212,480 bytes) loaded
    as fp32 in 54 s with a peak resident set of 14.9 GiB.
    NOTE: the CUDA path has not been run.
    """
    from models.deepseek_ocr.model import DeepseekOcrForCausalLM, skip_weight_init

    if dtype is None:
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    config = read_checkpoint_config(folder)
    with torch.device(device), skip_weight_init():
        model = DeepseekOcrForCausalLM(config)
    load_checkpoint_weights(model, folder, dtype=dtype, device=device)
    return model.eval()


# --- writing -------------------------------------------------------------------------------


def save_checkpoint(
    model: nn.Module,
    folder: Path,
    config: OcrConfig,
    *,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write `model` in the official layout: config.json and safetensors, one tensor per expert.

    Without `max_shard_bytes` all tensors go to one model.safetensors; with it, tensors are
    split into model-0000i-of-0000n.safetensors shards listed by model.safetensors.index.json.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.cpu() for name, tensor in to_checkpoint_state_dict(model).items()}
    dtype = next(iter(tensors.values())).dtype
    raw_config = checkpoint_config_json(config, torch_dtype=_DTYPE_NAMES.get(dtype, "float32"))
    (folder / CONFIG_FILE).write_text(json.dumps(raw_config, indent=2))

    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(tensors, str(folder / SINGLE_FILE), metadata=metadata)
        return folder

    shards = _split_into_shards(tensors, max_shard_bytes)
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / file_name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file_name))
    total_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {
        "metadata": {"total_size": total_bytes},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return folder


def checkpoint_config_json(config: OcrConfig, *, torch_dtype: str = "bfloat16") -> dict[str, Any]:
    """Return config.json content with the fields of the official DeepSeek-OCR file.

    Decoder fields appear at the top level and again in language_config, as in the official
    file. Fields the official file leaves to DeepseekV2Config defaults (rms_norm_eps,
    rope_theta, norm_topk_prob, routed_scaling_factor) are written out so that small test
    configs round-trip. `config_from_checkpoint_json` describes the two vision_config additions.
    """
    decoder = config.decoder
    language = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "bos_token_id": decoder.bos_token_id,
        "eos_token_id": decoder.eos_token_id,
        "first_k_dense_replace": decoder.first_k_dense_replace,
        "hidden_size": decoder.hidden_size,
        "intermediate_size": decoder.intermediate_size,
        "kv_lora_rank": None,
        "lm_head": True,
        "max_position_embeddings": decoder.max_position_embeddings,
        "model_type": "deepseek_v2",
        "moe_intermediate_size": decoder.moe_intermediate_size,
        "n_group": 1,
        "n_routed_experts": decoder.n_routed_experts,
        "n_shared_experts": decoder.n_shared_experts,
        "norm_topk_prob": decoder.norm_topk_prob,
        "num_attention_heads": decoder.num_attention_heads,
        "num_experts_per_tok": decoder.num_experts_per_tok,
        "num_hidden_layers": decoder.num_hidden_layers,
        "num_key_value_heads": decoder.num_key_value_heads,
        "q_lora_rank": None,
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "rm_head": False,
        "rms_norm_eps": decoder.rms_norm_eps,
        "rope_theta": decoder.rope_theta,
        "routed_scaling_factor": decoder.routed_scaling_factor,
        "topk_group": 1,
        "topk_method": "greedy",
        "torch_dtype": torch_dtype,
        "use_mla": False,
        "v_head_dim": 0,
        "vocab_size": decoder.vocab_size,
    }
    sam, clip = config.sam, config.clip
    vision = {
        "image_size": 1024,
        "mlp_ratio": 3.7362,
        "model_name": "deeplip_b_l",
        "model_type": "vision",
        "width": {
            "clip-l-14-224": {
                "heads": clip.heads,
                "image_size": clip.image_size,
                "layers": clip.depth,
                "patch_size": clip.patch_size,
                "width": clip.width,
                "mlp_dim": clip.mlp_dim,
            },
            "sam_vit_b": {
                "downsample_channels": list(sam.downsample_channels),
                "global_attn_indexes": list(sam.global_attn_indexes),
                "heads": sam.heads,
                "layers": sam.depth,
                "width": sam.width,
                "mlp_dim": sam.mlp_dim,
                "neck_channels": sam.neck_channels,
            },
        },
    }
    top_level_language = {k: v for k, v in language.items() if k not in ("architectures",)}
    return {
        **top_level_language,
        "architectures": ["DeepseekOCRForCausalLM"],
        "auto_map": {
            "AutoConfig": "modeling_deepseekocr.DeepseekOCRConfig",
            "AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM",
        },
        "candidate_resolutions": [[1024, 1024]],
        "global_view_pos": "head",
        "language_config": language,
        "model_type": "deepseek_vl_v2",
        "projector_config": {
            "input_dim": config.projector.input_dim,
            "model_type": "mlp_projector",
            "n_embed": config.projector.n_embed,
            "projector_type": "linear",
        },
        "tile_tag": "2D",
        "transformers_version": "4.46.3",
        "vision_config": vision,
    }


# --- helpers -------------------------------------------------------------------------------


def _pair(raw: Any, defaults: SamConfig) -> tuple[int, int]:
    if raw is None:
        return defaults.downsample_channels
    first, second = raw
    return int(first), int(second)


def _name_listing(kind: str, names: list[str]) -> list[str]:
    if not names:
        return []
    lines = [f"{len(names)} {kind} tensor(s):"]
    lines += [f"  {name}" for name in names[:_MAX_LISTED_NAMES]]
    if len(names) > _MAX_LISTED_NAMES:
        lines.append(f"  ... and {len(names) - _MAX_LISTED_NAMES} more")
    return lines


def _check_shapes(
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]], files: dict[str, Path]
) -> None:
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)

    wrong: list[str] = []
    for path, names in sorted(by_file.items()):
        with safe_open(str(path), framework="pt") as handle:
            for name in names:
                shape = tuple(handle.get_slice(name).get_shape())
                if shape != specs[name][0]:
                    wrong.append(f"{name}: checkpoint {list(shape)}, model {list(specs[name][0])}")
    if wrong:
        lines = ["the checkpoint does not match the model:"]
        lines += _name_listing("misshapen", sorted(wrong))
        raise CheckpointMismatchError("\n".join(lines))


def _place_tensor(
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    name: str,
    tensor: torch.Tensor,
) -> None:
    """Put one checkpoint tensor into `state`, copying an expert into its stacked slot."""
    match = _EXPERT_TENSOR.match(name)
    if match is None:
        state[name] = tensor
        return

    prefix, expert, kind = match["prefix"], int(match["expert"]), match["kind"]
    stacked_name = f"{prefix}.down_proj" if kind == "down_proj" else f"{prefix}.gate_up_proj"
    if stacked_name not in state:
        # One stacked tensor per layer, filled expert by expert, so no second copy is made.
        shape = expected[stacked_name].shape
        state[stacked_name] = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
    stacked = state[stacked_name]

    if kind == "down_proj":
        stacked[expert].copy_(tensor)  # [D, I]
    elif kind == "gate_proj":
        stacked[expert, : tensor.shape[0]].copy_(tensor)  # gate rows: [I, D]
    else:
        stacked[expert, tensor.shape[0] :].copy_(tensor)  # up rows: [I, D]


def _split_into_shards(
    tensors: dict[str, torch.Tensor], max_shard_bytes: int
) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name in sorted(tensors):
        size = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensors[name]
        shard_bytes += size
    return shards
