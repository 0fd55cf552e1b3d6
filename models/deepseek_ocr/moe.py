"""Feed-forward blocks of the decoder: the dense SwiGLU MLP and the mixture of experts.

Dimension legend: B batch, T tokens, D hidden, E experts, K top_k, I expert width,
N = B*T flattened tokens, P = N*K (token, expert) pairs.

MoE semantics (DeepSeek-V2 family, as configured for DeepSeek-OCR):
- router logits = hidden (cast to fp32) @ gate.weight (cast to fp32), softmax in fp32;
- greedy top-K over the softmax scores, with no renormalisation unless norm_topk_prob is set,
  then multiplied by routed_scaling_factor;
- output = sum_k w_k * expert_k(x), the weighted expert outputs summed in fp32 and cast back,
  plus the shared experts (one SwiGLU of width n_shared * I) added unweighted.

Routed experts are stored STACKED: `experts.gate_up_proj` [E, 2I, D] with the gate rows first,
and `experts.down_proj` [E, D, I]. `stack_expert_weights` converts the checkpoint's per-expert
tensors to this layout and `unstack_expert_weights` converts them back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.deepseek_ocr.config import DecoderConfig

_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class DenseMlp(nn.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, hidden: Tensor) -> Tensor:
        activated = F.silu(self.gate_proj(hidden)) * self.up_proj(hidden)
        output: Tensor = self.down_proj(activated)
        return output


class StackedExperts(nn.Module):
    """All routed SwiGLU experts of one layer, computed by grouping tokens per expert."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(
            torch.empty(num_experts, 2 * intermediate_size, hidden_size)
        )
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        nn.init.normal_(self.gate_up_proj, std=0.02)
        nn.init.normal_(self.down_proj, std=0.02)

    def forward(self, hidden: Tensor, expert_ids: Tensor, weights: Tensor) -> Tensor:
        """Combine the chosen experts for hidden [N, D], expert_ids [N, K], fp32 weights [N, K]."""
        num_tokens, top_k = expert_ids.shape

        # Sort the (token, k) pairs by expert so that each expert gets one contiguous slice.
        flat_ids = expert_ids.reshape(-1)  # [P]
        order = flat_ids.argsort(stable=True)  # [P]
        counts = torch.bincount(flat_ids, minlength=self.num_experts)  # [E]
        grouped_inputs = hidden.index_select(0, order // top_k)  # [P, D]
        grouped_outputs = self._run_groups(grouped_inputs, counts)  # [P, D]

        # Undo the sort (a deterministic gather), then sum over k in fp32.
        pair_outputs = torch.empty_like(grouped_outputs).index_copy_(0, order, grouped_outputs)
        pair_outputs = pair_outputs.view(num_tokens, top_k, -1)  # [N, K, D]
        combined = (pair_outputs.float() * weights[..., None]).sum(dim=1)  # [N, D]
        return combined.to(hidden.dtype)

    def _run_groups(self, grouped: Tensor, counts: Tensor) -> Tensor:
        """Apply expert e to its slice of `grouped` [P, D]; slice sizes are `counts` [E]."""
        if _grouped_mm_supported(grouped):
            offsets = counts.cumsum(0).to(torch.int32)  # [E], end of each expert's slice
            gate_up = F.grouped_mm(grouped, self.gate_up_proj.transpose(1, 2), offs=offsets)
            gate, up = gate_up.chunk(2, dim=-1)  # [P, I] each
            activated = F.silu(gate) * up  # [P, I]
            return F.grouped_mm(activated, self.down_proj.transpose(1, 2), offs=offsets)

        # Fallback: one matmul pair per expert that received tokens (a loop over E, not over N).
        outputs = torch.empty_like(grouped)
        start = 0
        for expert, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            rows = slice(start, start + count)
            gate, up = F.linear(grouped[rows], self.gate_up_proj[expert]).chunk(2, dim=-1)
            outputs[rows] = F.linear(F.silu(gate) * up, self.down_proj[expert])
            start += count
        return outputs


def _grouped_mm_supported(grouped: Tensor) -> bool:
    """Tell whether to run the experts with F.grouped_mm on this tensor's device and dtype.

    On CPU the per-expert loop is faster (torch 2.13, 2 cores, real sizes, 256 tokens: 1.3 s
    against 1.8 s for grouped_mm). CUDA needs bf16 on SM >= 80 and rows whose byte size is a
    multiple of 16, which the real sizes (1280, 1792, 896) satisfy.
    NOTE: the CUDA path was not run when this was written.
    """
    if not hasattr(F, "grouped_mm") or grouped.device.type != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(grouped.device)
    return grouped.dtype == torch.bfloat16 and major >= 8


class MoE(nn.Module):
    """Router, stacked routed experts and shared experts of one decoder layer."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.gate = nn.Linear(config.hidden_size, config.n_routed_experts, bias=False)
        self.experts = StackedExperts(
            config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        )
        shared_width = config.n_shared_experts * config.moe_intermediate_size
        self.shared_experts = DenseMlp(config.hidden_size, shared_width)

    def route(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Return (fp32 weights [N, K], expert ids [N, K]) for hidden [N, D]."""
        logits = F.linear(hidden.float(), self.gate.weight.float())  # [N, E]
        scores = logits.softmax(dim=-1)  # [N, E], fp32
        weights, expert_ids = torch.topk(scores, self.top_k, dim=-1, sorted=False)  # [N, K]
        if self.norm_topk_prob and self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor, expert_ids

    def forward(self, hidden: Tensor) -> Tensor:
        shape = hidden.shape
        flat = hidden.reshape(-1, shape[-1])  # [N, D]
        weights, expert_ids = self.route(flat)
        routed: Tensor = self.experts(flat, expert_ids, weights)  # [N, D]
        shared: Tensor = self.shared_experts(hidden)
        return routed.view(shape) + shared


def expert_weight_name(prefix: str, expert: int, projection: str) -> str:
    """Return the checkpoint name of one expert's projection, e.g. `...experts.3.up_proj.weight`."""
    return f"{prefix}experts.{expert}.{projection}.weight"


def unstack_expert_names(prefix: str, num_experts: int) -> list[str]:
    """List the per-expert checkpoint names (gate, up, down for each expert) under `prefix`.

    `prefix` ends with the MoE module's dot, e.g. "model.layers.1.mlp.".
    """
    return [
        expert_weight_name(prefix, expert, projection)
        for expert in range(num_experts)
        for projection in _PROJECTIONS
    ]


def stack_expert_weights(
    per_expert: dict[str, Tensor], num_experts: int, prefix: str = ""
) -> dict[str, Tensor]:
    """Stack per-expert checkpoint tensors into `{prefix}experts.gate_up_proj` / `.down_proj`.

    Reads `{prefix}experts.{e}.{gate,up,down}_proj.weight` for e < num_experts ([I, D], [I, D],
    [D, I]) and returns [E, 2I, D] (gate rows first, then up rows) and [E, D, I]. Raises
    ValueError listing every missing name.
    """
    names = unstack_expert_names(prefix, num_experts)
    missing = [name for name in names if name not in per_expert]
    if missing:
        message = f"missing {len(missing)} expert weights, e.g. {', '.join(missing[:6])}"
        raise ValueError(message)

    gate_up = [
        torch.cat(
            (
                per_expert[expert_weight_name(prefix, expert, "gate_proj")],
                per_expert[expert_weight_name(prefix, expert, "up_proj")],
            )
        )  # [2I, D]
        for expert in range(num_experts)
    ]
    down = [
        per_expert[expert_weight_name(prefix, expert, "down_proj")] for expert in range(num_experts)
    ]
    return {
        f"{prefix}experts.gate_up_proj": torch.stack(gate_up),  # [E, 2I, D]
        f"{prefix}experts.down_proj": torch.stack(down),  # [E, D, I]
    }


def unstack_expert_weights(
    stacked: dict[str, Tensor], num_experts: int, prefix: str = ""
) -> dict[str, Tensor]:
    """Split `{prefix}experts.gate_up_proj` / `.down_proj` back into per-expert checkpoint names."""
    gate_up = stacked[f"{prefix}experts.gate_up_proj"]  # [E, 2I, D]
    down = stacked[f"{prefix}experts.down_proj"]  # [E, D, I]
    if gate_up.shape[0] != num_experts or down.shape[0] != num_experts:
        message = f"stacked experts have {gate_up.shape[0]} rows, expected {num_experts}"
        raise ValueError(message)

    per_expert: dict[str, Tensor] = {}
    for expert in range(num_experts):
        gate, up = gate_up[expert].chunk(2, dim=0)  # [I, D] each
        per_expert[expert_weight_name(prefix, expert, "gate_proj")] = gate.contiguous()
        per_expert[expert_weight_name(prefix, expert, "up_proj")] = up.contiguous()
        per_expert[expert_weight_name(prefix, expert, "down_proj")] = down[expert].contiguous()
    return per_expert
