"""MoE parity with transformers' DeepseekOcr2TextMoe, routing rules and expert weight stacking."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from models.deepseek_ocr import moe as moe_module
from models.deepseek_ocr.moe import (
    MoE,
    stack_expert_weights,
    unstack_expert_names,
    unstack_expert_weights,
)
from tests.models.deepseek_ocr.decoder_factories import (
    make_reference_model,
    max_difference,
    randomize_,
    tiny_decoder_config,
)

TOLERANCE = 1e-5


def make_moe_and_reference(**overrides: object) -> tuple[MoE, torch.nn.Module]:
    """Return our MoE (layer 1) and the reference's layer-1 MoE holding the same random weights."""
    config = tiny_decoder_config(num_hidden_layers=2, **overrides)
    reference = randomize_(make_reference_model(config), seed=11).layers[1].mlp
    ours = MoE(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def make_hidden(tokens: int = 13, seed: int = 12) -> Tensor:
    return torch.randn(2, tokens, 32, generator=torch.Generator().manual_seed(seed))


def dense_reference(moe: MoE, hidden: Tensor) -> Tensor:
    """Compute the MoE token by token from the definition, with no grouping."""
    flat = hidden.reshape(-1, hidden.shape[-1]).double()
    scores = (flat @ moe.gate.weight.double().T).softmax(dim=-1)
    experts = moe.experts
    width = experts.down_proj.shape[-1]
    rows = []
    for token in range(flat.shape[0]):
        weights, chosen = scores[token].topk(moe.top_k)
        if moe.norm_topk_prob:
            weights = weights / weights.sum()
        total = torch.zeros(flat.shape[1], dtype=torch.float64)
        for weight, expert in zip(weights.tolist(), chosen.tolist(), strict=True):
            gate_up = experts.gate_up_proj[expert].double() @ flat[token]
            activated = torch.nn.functional.silu(gate_up[:width]) * gate_up[width:]
            total += (
                moe.routed_scaling_factor
                * weight
                * (experts.down_proj[expert].double() @ activated)
            )
        rows.append(total)
    routed = torch.stack(rows).view(hidden.shape)
    return routed + moe.shared_experts(hidden).double()


def test_moe_matches_reference() -> None:
    ours, reference = make_moe_and_reference()
    hidden = make_hidden()

    with torch.no_grad():
        difference = max_difference(ours(hidden), reference(hidden))

    assert difference <= TOLERANCE, f"MoE max abs diff {difference:.3e}"


def test_moe_matches_token_by_token_definition() -> None:
    ours, _ = make_moe_and_reference(routed_scaling_factor=2.5)
    hidden = make_hidden()

    with torch.no_grad():
        expected = dense_reference(ours, hidden)
        difference = max_difference(ours(hidden), expected)

    assert difference <= TOLERANCE, f"MoE vs definition max abs diff {difference:.3e}"


def test_grouped_mm_path_matches_loop_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """F.grouped_mm (used on CUDA) gives the same result as the per-expert loop, here on CPU."""
    ours, _ = make_moe_and_reference()
    hidden = make_hidden(tokens=17)

    with torch.no_grad():
        looped = ours(hidden)
        monkeypatch.setattr(moe_module, "_grouped_mm_supported", lambda grouped: True)
        grouped = ours(hidden)

    difference = max_difference(grouped, looped)
    assert difference <= TOLERANCE, f"grouped_mm vs loop max abs diff {difference:.3e}"


def test_router_keeps_softmax_weights_without_renormalising() -> None:
    ours, _ = make_moe_and_reference()
    flat = make_hidden().reshape(-1, 32)

    weights, expert_ids = ours.route(flat)

    scores = (flat.float() @ ours.gate.weight.float().T).softmax(dim=-1)
    assert weights.dtype == torch.float32
    assert torch.allclose(weights, scores.gather(1, expert_ids), atol=1e-7, rtol=0)
    assert torch.equal(
        expert_ids.sort(dim=-1).values, scores.topk(2, dim=-1).indices.sort(dim=-1).values
    )
    assert (weights.sum(dim=-1) < 1.0 - 1e-3).all()


def test_router_renormalises_when_norm_topk_prob() -> None:
    ours, _ = make_moe_and_reference(norm_topk_prob=True, routed_scaling_factor=2.0)
    weights, _ = ours.route(make_hidden().reshape(-1, 32))
    assert torch.allclose(weights.sum(dim=-1), torch.full((26,), 2.0), atol=1e-6)


def test_router_runs_in_fp32_for_bf16_hidden() -> None:
    ours, _ = make_moe_and_reference()
    flat = make_hidden().reshape(-1, 32)
    ours.to(torch.bfloat16)

    weights, _ = ours.route(flat.to(torch.bfloat16))

    expected = (flat.to(torch.bfloat16).float() @ ours.gate.weight.float().T).softmax(dim=-1)
    assert weights.dtype == torch.float32
    assert torch.allclose(weights.sum(dim=-1), expected.topk(2).values.sum(dim=-1), atol=1e-6)


def test_shared_experts_added_unweighted() -> None:
    """With routed experts zeroed, the output is exactly shared_experts(x) at any scaling factor."""
    ours, _ = make_moe_and_reference(routed_scaling_factor=3.0)
    hidden = make_hidden()
    with torch.no_grad():
        ours.experts.down_proj.zero_()
        output = ours(hidden)
        shared = ours.shared_experts(hidden)

    assert torch.equal(output, shared)


def test_moe_width_of_shared_experts() -> None:
    config = tiny_decoder_config()
    moe = MoE(config)
    assert moe.shared_experts.gate_proj.weight.shape == (2 * 16, 32)
    assert moe.experts.gate_up_proj.shape == (4, 2 * 16, 32)
    assert moe.experts.down_proj.shape == (4, 32, 16)


def make_per_expert(prefix: str, num_experts: int = 4) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(13)
    shapes = {"gate_proj": (16, 32), "up_proj": (16, 32), "down_proj": (32, 16)}
    return {
        f"{prefix}experts.{expert}.{projection}.weight": torch.randn(shape, generator=generator)
        for expert in range(num_experts)
        for projection, shape in shapes.items()
    }


def test_stack_expert_weights_round_trip() -> None:
    prefix = "model.layers.3.mlp."
    per_expert = make_per_expert(prefix)

    stacked = stack_expert_weights(per_expert, 4, prefix=prefix)
    restored = unstack_expert_weights(stacked, 4, prefix=prefix)

    assert sorted(stacked) == [f"{prefix}experts.down_proj", f"{prefix}experts.gate_up_proj"]
    assert restored.keys() == per_expert.keys()
    for name, tensor in per_expert.items():
        assert torch.equal(restored[name], tensor), name


def test_stack_expert_weights_puts_gate_rows_first() -> None:
    per_expert = make_per_expert("")
    stacked = stack_expert_weights(per_expert, 4)

    gate_up = stacked["experts.gate_up_proj"]
    assert gate_up.shape == (4, 32, 32)
    assert torch.equal(gate_up[2, :16], per_expert["experts.2.gate_proj.weight"])
    assert torch.equal(gate_up[2, 16:], per_expert["experts.2.up_proj.weight"])
    assert torch.equal(stacked["experts.down_proj"][3], per_expert["experts.3.down_proj.weight"])


def test_stacked_weights_load_into_moe_and_match_reference() -> None:
    """Per-expert tensors split from the reference, stacked again, reproduce its output."""
    ours, reference = make_moe_and_reference()
    state = reference.state_dict()
    per_expert = unstack_expert_weights(state, 4)
    others = {name: tensor for name, tensor in state.items() if not name.startswith("experts.")}
    rebuilt = others | stack_expert_weights(per_expert, 4)
    fresh = MoE(tiny_decoder_config()).eval()
    fresh.load_state_dict(rebuilt, strict=True)

    hidden = make_hidden()
    with torch.no_grad():
        difference = max_difference(fresh(hidden), reference(hidden))
    assert difference <= TOLERANCE, f"restacked MoE max abs diff {difference:.3e}"


def test_stack_expert_weights_lists_missing_names() -> None:
    per_expert = make_per_expert("")
    del per_expert["experts.1.up_proj.weight"]

    with pytest.raises(ValueError, match=r"experts\.1\.up_proj\.weight"):
        stack_expert_weights(per_expert, 4)


def test_unstack_expert_names_order() -> None:
    names = unstack_expert_names("model.layers.1.mlp.", 64)
    assert len(names) == 64 * 3
    assert names[:3] == [
        "model.layers.1.mlp.experts.0.gate_proj.weight",
        "model.layers.1.mlp.experts.0.up_proj.weight",
        "model.layers.1.mlp.experts.0.down_proj.weight",
    ]
    assert names[-1] == "model.layers.1.mlp.experts.63.down_proj.weight"
