"""DeepSeek-OCR as one module: vision encoders, projector and the DeepSeek-3B-MoE decoder.

Dimension legend used across models/deepseek_ocr: B batch, T tokens, D hidden, H heads,
E experts, K top_k; S view side in pixels, C vision channels (equal to D).

Features:
- Attribute names are the checkpoint names (`model.sam_model`, `model.vision_model`,
  `model.projector`, `model.image_newline`, `model.view_seperator` [sic], `model.embed_tokens`,
  `model.layers`, `model.norm`, `lm_head`), so `state_dict()` keys are the checkpoint keys
  except for the stacked routed experts (weights.py maps those).
- Vision runs once per request, on prefill, batched over every view of every page: global
  views grouped by size, all tiles together. Per page the vision sequence is laid out as
  stitched tiles, global grid, separator.
- The vision sequence overwrites the embeddings of the prompt's `<image>` slots in order; the
  number of slots must equal its length.
- `step` runs the decoder on embeddings or token ids with a KV cache and returns fp32 logits;
  generate.py drives it.
- `skip_weight_init` builds the model without torch's initialisation, for a checkpoint or
  random weights to fill right after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from models.deepseek_ocr.clip import ClipEncoder
from models.deepseek_ocr.config import OcrConfig
from models.deepseek_ocr.decoder import DecoderLayer, KVCache, RMSNorm
from models.deepseek_ocr.preprocess import PreparedPage
from models.deepseek_ocr.projector import Projector
from models.deepseek_ocr.sam import SamEncoder
from models.deepseek_ocr.vision import assemble_vision_sequence

DEFAULT_MAX_VIEWS_PER_PASS = 16
# Called after each vision stage ("sam", "clip", "projector") so a caller can time it.
StageHook = Callable[[str], None]

_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
)


class DeepseekOcrModel(nn.Module):
    """The `model.` subtree of the checkpoint: encoders, projector, special vectors, decoder."""

    def __init__(self, config: OcrConfig) -> None:
        super().__init__()
        decoder = config.decoder
        self.sam_model = SamEncoder(config.sam)
        self.vision_model = ClipEncoder(config.clip)
        self.projector = Projector(config.projector)
        self.image_newline = nn.Parameter(torch.zeros(config.projector.n_embed))
        # The checkpoint spells it "seperator".
        self.view_seperator = nn.Parameter(torch.zeros(config.projector.n_embed))

        self.embed_tokens = nn.Embedding(decoder.vocab_size, decoder.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(decoder, index) for index in range(decoder.num_hidden_layers)
        )
        self.norm = RMSNorm(decoder.hidden_size, decoder.rms_norm_eps)


class DeepseekOcrForCausalLM(nn.Module):
    """DeepSeek-OCR: prepared pages and prompt ids in, next-token logits out."""

    def __init__(self, config: OcrConfig) -> None:
        super().__init__()
        if config.projector.n_embed != config.decoder.hidden_size:
            message = (
                f"projector n_embed {config.projector.n_embed} must equal the decoder "
                f"hidden_size {config.decoder.hidden_size}"
            )
            raise ValueError(message)
        self.config = config
        self.model = DeepseekOcrModel(config)
        self.lm_head = nn.Linear(config.decoder.hidden_size, config.decoder.vocab_size, bias=False)
        # Views per SAM or CLIP call; larger batches of views are split (see _in_chunks).
        self.max_views_per_pass = DEFAULT_MAX_VIEWS_PER_PASS

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @torch.no_grad()
    def encode_images(
        self, pages: Sequence[PreparedPage], on_stage_end: StageHook | None = None
    ) -> list[torch.Tensor]:
        """Return each page's vision sequence [T_img, D], in page order.

        All views of all pages go through each encoder together, in one group per view side
        (the global views of one mode share a side, and so do all tiles). `on_stage_end` is
        called after SAM, CLIP and the projector, once each.
        """
        if not pages:
            return []
        groups = _group_views(pages)
        hook = on_stage_end or _ignore_stage

        sam_features = [
            self._in_chunks(self.model.sam_model, self._to_model(views)) for views, _ in groups
        ]  # each [B, C_sam, q, q]
        hook("sam")
        clip_features = [
            self._in_chunks(self.model.vision_model, features) for features in sam_features
        ]  # each [B, q*q + 1, D_clip]
        hook("clip")
        tokens = [
            self._project(clip, sam) for clip, sam in zip(clip_features, sam_features, strict=True)
        ]  # each [B, q*q, D]
        hook("projector")

        return self._assemble(pages, groups, tokens)

    def embed_prompt(self, input_ids: torch.Tensor, vision_sequence: torch.Tensor) -> torch.Tensor:
        """Embed one prompt's ids [T] and fill its `<image>` slots with vision tokens [T_img, D].

        Raises ValueError when the number of `<image>` ids differs from T_img, because the
        tokens would otherwise land in the wrong slots.
        """
        embeds = self.model.embed_tokens(input_ids.to(self.device))  # [T, D]
        slots = input_ids.to(self.device) == self.config.image_token_id  # [T]
        slot_count = int(slots.sum())
        if slot_count != vision_sequence.shape[0]:
            message = (
                f"the prompt has {slot_count} <image> ids but the page has "
                f"{vision_sequence.shape[0]} vision tokens; they must be equal"
            )
            raise ValueError(message)
        embeds[slots] = vision_sequence.to(device=embeds.device, dtype=embeds.dtype)
        return embeds

    def step(
        self,
        inputs: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None,
        attention_mask: torch.Tensor | None,
        *,
        all_positions: bool = False,
    ) -> torch.Tensor:
        """Run the decoder on embeddings [B, T, D] or token ids [B, T]; return fp32 logits.

        Logits are [B, 1, V] for the last position only, which is all generation needs (a
        900-token prompt would otherwise cost 900 x 129,280 floats per page), or [B, T, V]
        with `all_positions`. The cache and mask follow generate.py's conventions.
        """
        if inputs.is_floating_point():
            hidden = inputs.to(self.dtype)  # [B, T, D]
        else:
            hidden = self.model.embed_tokens(inputs)  # [B, T, D]

        for index, layer in enumerate(self.model.layers):
            hidden = layer(hidden, positions, cache, index, attention_mask)
        if not all_positions:
            hidden = hidden[:, -1:]  # [B, 1, D]
        hidden = self.model.norm(hidden)
        return self.lm_head(hidden).float()  # [B, T or 1, V]

    def _in_chunks(
        self, encoder: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor
    ) -> torch.Tensor:
        """Run `encoder` on at most max_views_per_pass views at a time and join the outputs.

        SAM's global-attention bias is [B*H, 4096, 4096] for 1024-pixel views, so an unbounded
        batch of views could exhaust memory; the encoders' outputs themselves are small.
        """
        if inputs.shape[0] <= self.max_views_per_pass:
            return encoder(inputs)
        parts = [encoder(chunk) for chunk in inputs.split(self.max_views_per_pass)]
        return torch.cat(parts)

    def _to_model(self, views: torch.Tensor) -> torch.Tensor:
        return views.to(device=self.device, dtype=self.dtype)

    def _project(self, clip_features: torch.Tensor, sam_features: torch.Tensor) -> torch.Tensor:
        # Fused channels are CLIP (class token dropped) first, then SAM: the trained order.
        sam_tokens = sam_features.flatten(2).transpose(1, 2)  # [B, q*q, C_sam]
        fused = torch.cat([clip_features[:, 1:], sam_tokens], dim=-1)  # [B, q*q, D_clip + C_sam]
        return self.model.projector(fused)  # [B, q*q, D]

    def _assemble(
        self,
        pages: Sequence[PreparedPage],
        groups: list[tuple[torch.Tensor, list[tuple[int, str]]]],
        tokens: list[torch.Tensor],
    ) -> list[torch.Tensor]:
        """Split each group's tokens back per page and lay out every page's sequence."""
        global_by_page: dict[int, torch.Tensor] = {}
        tiles_by_page: dict[int, list[torch.Tensor]] = {}
        for (_, owners), group_tokens in zip(groups, tokens, strict=True):
            for row, (page_index, kind) in enumerate(owners):
                if kind == "global":
                    global_by_page[page_index] = group_tokens[row]  # [q*q, D]
                else:
                    tiles_by_page.setdefault(page_index, []).append(group_tokens[row])

        sequences = []
        for page_index, page in enumerate(pages):
            tiles = tiles_by_page.get(page_index)
            tile_features = torch.stack(tiles) if tiles else None  # [n, ql*ql, D]
            sequence = assemble_vision_sequence(
                global_by_page[page_index],
                tile_features,
                page.tile_grid if tiles else None,
                self.model.image_newline,
                self.model.view_seperator,
            )  # [T_img, D]
            if sequence.shape[0] != page.num_image_tokens:
                message = (
                    f"page {page_index} has {sequence.shape[0]} vision tokens but preprocessing "
                    f"counted {page.num_image_tokens}"
                )
                raise ValueError(message)
            sequences.append(sequence)
        return sequences


def _group_views(
    pages: Sequence[PreparedPage],
) -> list[tuple[torch.Tensor, list[tuple[int, str]]]]:
    """Batch views of one side together; return [(views [B,3,S,S], [(page, kind)] per row)].

    Global views are grouped by side. Tiles all share image_size within a mode but are grouped
    by side too, in case a batch mixes modes.
    """
    by_side: dict[tuple[str, int], list[tuple[torch.Tensor, int, str]]] = {}
    for page_index, page in enumerate(pages):
        side = page.global_view.shape[-1]
        by_side.setdefault(("global", side), []).append((page.global_view, page_index, "global"))
        if page.tiles is None:
            continue
        for tile in page.tiles:
            by_side.setdefault(("tile", tile.shape[-1]), []).append((tile, page_index, "tile"))

    groups = []
    for entries in by_side.values():
        views = torch.stack([view for view, _, _ in entries])  # [B, 3, S, S]
        owners = [(page_index, kind) for _, page_index, kind in entries]
        groups.append((views, owners))
    return groups


@contextlib.contextmanager
def skip_weight_init() -> Iterator[None]:
    """Make torch.nn.init functions no-ops while a model is built, to be filled right after.

    The usual initialisation of 3.3 billion fp32 values is slow on a CPU, and the checkpoint
    overwrites the values anyway. Tensors created directly (torch.zeros, torch.randn) still
    get their values. Not thread-safe, because it patches the torch.nn.init module.
    """
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, _keep_tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _ignore_stage(stage: str) -> None:
    return None


def _keep_tensor(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor
