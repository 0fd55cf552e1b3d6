"""Parity of the decoder blocks with transformers' DeepseekOcr2TextModel, fp32, tolerance 1e-5."""

from __future__ import annotations

import math

import pytest
import torch

from models.deepseek_ocr.decoder import (
    DecoderLayer,
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    causal_mask,
)
from tests.models.deepseek_ocr.decoder_factories import (
    make_stack_and_reference,
    max_difference,
    tiny_decoder_config,
)

TOLERANCE = 1e-5


def make_positions(batch: int, length: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + length).expand(batch, length)


def test_decoder_stack_matches_reference() -> None:
    """embed -> 3 layers (dense, MoE, MoE) -> norm equals the reference's last hidden state."""
    config = tiny_decoder_config()
    stack, reference = make_stack_and_reference(config)
    input_ids = torch.randint(
        0, config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1)
    )

    with torch.no_grad():
        expected = reference(input_ids=input_ids).last_hidden_state
        actual = stack(input_ids, make_positions(2, 11))

    difference = max_difference(actual, expected)
    assert difference <= TOLERANCE, f"stack max abs diff {difference:.3e}"


@pytest.mark.parametrize("layer_index", [0, 1, 2])
def test_decoder_layer_matches_reference(layer_index: int) -> None:
    """Each layer alone (layer 0 dense, layers 1-2 MoE) equals the reference layer."""
    config = tiny_decoder_config()
    stack, reference = make_stack_and_reference(config, seed=layer_index)
    hidden = torch.randn(2, 9, config.hidden_size, generator=torch.Generator().manual_seed(2))
    positions = make_positions(2, 9, start=3)

    with torch.no_grad():
        position_embeddings = reference.rotary_emb(hidden, positions)
        expected = reference.layers[layer_index](
            hidden, position_embeddings=position_embeddings, position_ids=positions
        )
        actual = stack.layers[layer_index](hidden, positions)

    difference = max_difference(actual, expected)
    assert difference <= TOLERANCE, f"layer {layer_index} max abs diff {difference:.3e}"


@pytest.mark.parametrize("capacity", [16, None], ids=["preallocated", "growing"])
def test_kv_cache_incremental_matches_full_forward(capacity: int | None) -> None:
    """Prefill 6 tokens, decode 6 one at a time: equals a full forward, ours and the reference's."""
    config = tiny_decoder_config()
    stack, reference = make_stack_and_reference(config, seed=3)
    input_ids = torch.randint(
        0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(4)
    )

    with torch.no_grad():
        expected = reference(input_ids=input_ids).last_hidden_state
        full = stack(input_ids, make_positions(2, 12))
        cache = KVCache(capacity)
        pieces = [stack(input_ids[:, :6], make_positions(2, 6), cache)]
        for column in range(6, 12):
            pieces.append(
                stack(input_ids[:, column : column + 1], make_positions(2, 1, column), cache)
            )
        incremental = torch.cat(pieces, dim=1)

    assert cache.length(0) == 12
    to_reference = max_difference(incremental, expected)
    to_full = max_difference(incremental, full)
    assert to_reference <= TOLERANCE, f"incremental vs reference max abs diff {to_reference:.3e}"
    assert to_full <= TOLERANCE, f"incremental vs full forward max abs diff {to_full:.3e}"


def test_left_padded_batch_matches_single_sequences() -> None:
    """Left padding with causal_mask and per-row positions reproduces each unpadded sequence."""
    config = tiny_decoder_config()
    stack, _ = make_stack_and_reference(config, seed=5)
    generator = torch.Generator().manual_seed(6)
    lengths = [4, 9, 7]
    sequences = [
        torch.randint(3, config.vocab_size, (length,), generator=generator) for length in lengths
    ]
    width = max(lengths)

    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, width - len(sequence) :] = sequence
    padding = torch.tensor([width - length for length in lengths])
    columns = torch.arange(width)
    key_valid = columns[None, :] >= padding[:, None]
    positions = (columns[None, :] - padding[:, None]).clamp(min=0)

    with torch.no_grad():
        batched = stack(input_ids, positions, KVCache(width), causal_mask(key_valid, width))
        for row, sequence in enumerate(sequences):
            single = stack(sequence[None], make_positions(1, len(sequence)))
            difference = max_difference(batched[row, width - len(sequence) :], single[0])
            assert difference <= TOLERANCE, f"row {row} max abs diff {difference:.3e}"


def test_causal_mask_hides_padding_and_future() -> None:
    key_valid = torch.tensor([[False, False, True, True, True]])
    mask = causal_mask(key_valid, 3)[0, 0]
    expected = torch.tensor(
        [
            [False, False, True, False, False],
            [False, False, True, True, False],
            [False, False, True, True, True],
        ]
    )
    assert torch.equal(mask, expected)


def test_causal_mask_lets_padding_query_see_itself() -> None:
    """A padding query attends only to itself, so its softmax row is never empty (no NaN)."""
    key_valid = torch.tensor([[False, False, True]])
    mask = causal_mask(key_valid, 3)[0, 0]
    assert mask[0].tolist() == [True, False, False]
    assert mask[1].tolist() == [False, True, False]


def test_rms_norm_casts_back_before_weight_multiply() -> None:
    """bf16 input: normalise in fp32, cast to bf16, then multiply by the bf16 weight."""
    generator = torch.Generator().manual_seed(7)
    norm = RMSNorm(256, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(1.0 + torch.randn(256, generator=generator))
    hidden = (3.0 * torch.randn(4, 256, generator=generator)).to(torch.bfloat16)

    hidden32 = hidden.float()
    normed = hidden32 * torch.rsqrt(hidden32.pow(2).mean(-1, keepdim=True) + 1e-6)
    expected = norm.weight * normed.to(torch.bfloat16)

    actual = norm(hidden)
    assert actual.dtype == torch.bfloat16
    assert torch.equal(actual, expected)


def test_rotary_frequencies_stay_fp32_after_bf16_cast() -> None:
    rotary = RotaryEmbedding(128, 10000.0)
    positions = torch.tensor([[0, 1, 4000, 8191]])
    expected_cos, expected_sin = rotary(positions, torch.float32)

    rotary.to(torch.bfloat16)
    cos, sin = rotary(positions, torch.float32)

    assert torch.equal(cos, expected_cos)
    assert torch.equal(sin, expected_sin)
    assert "inv_freq" not in rotary.state_dict()


def test_rotary_rotates_half_pairs_by_position_times_frequency() -> None:
    """Element i pairs with i + hd/2 and turns by position * theta^(-2i/hd) (rotate-half RoPE)."""
    head_dim, theta = 8, 10000.0
    cos, sin = RotaryEmbedding(head_dim, theta)(torch.tensor([[5]]), torch.float64)
    for index in range(head_dim // 2):
        angle = 5 * theta ** (-2 * index / head_dim)
        for column in (index, index + head_dim // 2):
            assert cos[0, 0, column].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert sin[0, 0, column].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_decoder_layer_state_dict_uses_checkpoint_names() -> None:
    config = tiny_decoder_config()
    attention = [f"self_attn.{name}_proj.weight" for name in ("q", "k", "v", "o")]
    norms = ["input_layernorm.weight", "post_attention_layernorm.weight"]
    dense = [f"mlp.{name}_proj.weight" for name in ("gate", "up", "down")]
    moe = [
        "mlp.gate.weight",
        "mlp.experts.gate_up_proj",
        "mlp.experts.down_proj",
        *[f"mlp.shared_experts.{name}_proj.weight" for name in ("gate", "up", "down")],
    ]

    assert sorted(DecoderLayer(config, 0).state_dict()) == sorted(attention + norms + dense)
    assert sorted(DecoderLayer(config, 1).state_dict()) == sorted(attention + norms + moe)


def test_decoder_stack_runs_in_bfloat16() -> None:
    """bf16 weights keep bf16 activations and stay close to the fp32 result."""
    config = tiny_decoder_config()
    stack, _ = make_stack_and_reference(config, seed=8)
    input_ids = torch.randint(
        0, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(9)
    )
    positions = make_positions(2, 10)

    with torch.no_grad():
        expected = stack(input_ids, positions)
        stack.to(torch.bfloat16)
        cache = KVCache(10)
        actual = stack(input_ids, positions, cache)

    assert actual.dtype == torch.bfloat16
    assert cache.length(0) == 10
    relative = max_difference(actual, expected) / expected.abs().max().item()
    assert relative <= 0.1, f"bf16 vs fp32 max abs diff relative to max {relative:.3e}"
