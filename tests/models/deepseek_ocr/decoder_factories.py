"""Factories for decoder tests: tiny configs, random weights, a decoder stack and its reference.

The reference is transformers' DeepseekOcr2TextModel (transformers 5.25), whose decoder is the
same family as DeepSeek-OCR v1's: Llama attention with rotate-half RoPE, DeepSeek-V2 MoE with a
greedy softmax top-k, shared experts and a dense first layer. Its state_dict names equal ours.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from models.deepseek_ocr.config import DecoderConfig
from models.deepseek_ocr.decoder import DecoderLayer, KVCache, RMSNorm


def tiny_decoder_config(**overrides: object) -> DecoderConfig:
    """Return a 3-layer decoder config (1 dense + 2 MoE layers, 4 experts, top-2, vocab 97)."""
    config = DecoderConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        moe_intermediate_size=16,
        n_routed_experts=4,
        n_shared_experts=2,
        num_experts_per_tok=2,
    )
    return dataclasses.replace(config, **overrides)  # type: ignore[arg-type]


def make_reference_model(config: DecoderConfig) -> nn.Module:
    """Build transformers' DeepseekOcr2TextModel with the same hyper-parameters as `config`."""
    from transformers.models.deepseek_ocr2 import DeepseekOcr2TextConfig, DeepseekOcr2TextModel

    dense_layers = config.first_k_dense_replace
    sparse_layers = config.num_hidden_layers - dense_layers
    reference_config = DeepseekOcr2TextConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        moe_intermediate_size=config.moe_intermediate_size,
        n_routed_experts=config.n_routed_experts,
        n_shared_experts=config.n_shared_experts,
        num_experts_per_tok=config.num_experts_per_tok,
        routed_scaling_factor=config.routed_scaling_factor,
        topk_method="greedy",
        n_group=1,
        topk_group=1,
        mlp_layer_types=["dense"] * dense_layers + ["sparse"] * sparse_layers,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.max_position_embeddings,
    )
    return DeepseekOcr2TextModel(reference_config).eval()


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter with random values large enough to make routing and norms matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("layernorm.weight") or name == "norm.weight":
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(0.2 * noise)
    return module


class TinyDecoderStack(nn.Module):
    """embed_tokens, DecoderLayer x N, norm and lm_head, named like the checkpoint."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [DecoderLayer(config, index) for index in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self,
        inputs: Tensor,
        positions: Tensor,
        cache: KVCache | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Return final hidden states [B, T, D] for token ids [B, T] or embeddings [B, T, D]."""
        hidden = self.embed_tokens(inputs) if inputs.dtype == torch.long else inputs
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, positions, cache, index, mask)
        return self.norm(hidden)

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache, mask: Tensor) -> Tensor:
        """Return fp32 logits [B, 1, V] of the last position, as generate's step_fn."""
        hidden = self.forward(inputs, positions, cache, mask)
        return self.lm_head(hidden[:, -1:]).float()


def make_stack_and_reference(
    config: DecoderConfig, seed: int = 0
) -> tuple[TinyDecoderStack, nn.Module]:
    """Return our stack and the reference model holding the same random weights."""
    reference = randomize_(make_reference_model(config), seed)
    stack = TinyDecoderStack(config).eval()
    missing, unexpected = stack.load_state_dict(reference.state_dict(), strict=False)
    assert missing == ["lm_head.weight"], missing
    assert not unexpected, unexpected
    randomize_(stack.lm_head, seed + 1)
    return stack, reference


def max_difference(actual: Tensor, expected: Tensor) -> float:
    return (actual.double() - expected.double()).abs().max().item()
