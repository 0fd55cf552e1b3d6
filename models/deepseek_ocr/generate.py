"""Batched greedy decoding with a KV cache, windowed n-gram blocking and a loop detector.

Dimension legend: B batch (sequences still running), T tokens, D hidden, V vocabulary,
L tokens generated so far, P loop periods checked, S cache columns.

How a batch is laid out: prompts are LEFT padded to the longest one, so every row of the batch
writes the same cache column at each decode step. Padding columns are masked out of attention
and each row's positions start at 0 on its own first token (BOS). Rows leave the batch (and the
KV cache) as soon as they finish, so finished sequences cost nothing afterwards.

Each sequence stops at the first of:
- "eos": it produced eos_token_id (id 1);
- "loop": its tail repeats a block of at most loop_max_period tokens at least loop_min_repeats
  times and over at least loop_min_tokens tokens. The n-gram rule below only blocks periods up to
  ngram_window - ngram_size + 1 (61 tokens for 30/90); this catches the longer ones;
- "length": prompt + output reached max_length (8192, the trained sequence length) or the output
  reached max_new_tokens.

The n-gram rule is the one in DeepSeek-OCR's vLLM scripts (process/ngram_norepeat.py), applied
to generated tokens only. With L generated tokens, every n-gram starting at index i with
max(0, L - window) <= i <= L - n whose first n - 1 tokens equal the last n - 1 generated tokens
bans its last token, unless that token is whitelisted (<td> 128821 and </td> 128822 by default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from models.deepseek_ocr.decoder import KVCache, causal_mask

FinishReason = Literal["eos", "length", "loop"]

# step_fn(inputs, positions [B, T], cache, mask [B, 1, T, S]) -> logits [B, T or 1, V].
# `inputs` is prompt embeddings [B, T, D] during prefill and token ids [B, 1] while decoding.
# Only the last position's logits are used, so a step_fn may return [B, 1, V].
StepFn = Callable[[Tensor, Tensor, KVCache, Tensor], Tensor]


@dataclass(frozen=True)
class GenerationConfig:
    """Stop conditions and repeat control for `generate`.

    The n-gram defaults (30, 90, <td>/</td>) are those of DeepSeek-OCR's vLLM image script. The
    loop detector's defaults are estimates, chosen so that legitimate repeated lines pass.
    """

    max_new_tokens: int = 8192
    max_length: int = 8192  # prompt + output tokens (the EOS token counts)
    eos_token_id: int = 1
    ngram_size: int = 30  # 0 turns the n-gram rule off
    ngram_window: int = 90
    ngram_whitelist: tuple[int, ...] = (128821, 128822)
    loop_max_period: int = 512  # 0 turns the loop detector off
    loop_min_repeats: int = 4
    loop_min_tokens: int = 256
    prefill_chunk_size: int | None = None  # prompt columns per prefill call; None = all at once

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_length", "loop_min_repeats"):
            if getattr(self, name) < 1:
                message = f"GenerationConfig.{name} must be >= 1, got {getattr(self, name)}"
                raise ValueError(message)
        for name in ("ngram_size", "ngram_window", "loop_max_period", "loop_min_tokens"):
            if getattr(self, name) < 0:
                message = f"GenerationConfig.{name} must be >= 0, got {getattr(self, name)}"
                raise ValueError(message)
        if self.prefill_chunk_size is not None and self.prefill_chunk_size < 1:
            message = (
                f"GenerationConfig.prefill_chunk_size must be >= 1, got {self.prefill_chunk_size}"
            )
            raise ValueError(message)


@dataclass(frozen=True)
class GenerationOutput:
    """The generated tokens of one sequence (EOS excluded) and why generation stopped."""

    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    output_tokens: int  # generated tokens, EOS included


@torch.inference_mode()
def generate(
    step_fn: StepFn, prompt_embeds: Sequence[Tensor], config: GenerationConfig | None = None
) -> list[GenerationOutput]:
    """Greedily decode every prompt (embeddings [T_i, D]) as one batch; outputs in input order."""
    config = config or GenerationConfig()
    if not prompt_embeds:
        return []

    batch = _Batch.prefill(step_fn, prompt_embeds, config)
    outputs: list[GenerationOutput | None] = [None] * len(prompt_embeds)
    while batch.size > 0:
        logits = ban_repeated_ngrams(batch.logits, batch.generated(), config)  # [B, V]
        next_ids = logits.argmax(dim=-1)  # [B]
        reasons = batch.append(next_ids, config)

        finished = [row for row, reason in enumerate(reasons) if reason is not None]
        for row in finished:
            outputs[batch.sequences[row]] = batch.output(row, reasons[row])
        running = [row for row, reason in enumerate(reasons) if reason is None]
        if finished:
            batch.keep(running)
        if running:
            batch.decode(step_fn, next_ids[running])

    return [output for output in outputs if output is not None]


def ban_repeated_ngrams(logits: Tensor, generated: Tensor, config: GenerationConfig) -> Tensor:
    """Set to -inf, in place, the logits [B, V] of tokens that would repeat an n-gram.

    `generated` [B, L] contains each row's output tokens so far (all rows have the same L).
    Returns `logits`.
    """
    size, length = config.ngram_size, generated.shape[1]
    recent = generated[:, max(0, length - config.ngram_window) :]  # [B, min(L, window)]
    if size == 0 or recent.shape[1] < size:
        return logits

    grams = recent.unfold(1, size, 1)  # [B, C, n], one row per n-gram start in the window
    prefix = generated[:, length - size + 1 :]  # [B, n-1]
    matches = (grams[..., :-1] == prefix[:, None, :]).all(dim=-1)  # [B, C]
    banned = grams[..., -1]  # [B, C]
    if config.ngram_whitelist:
        allowed = torch.tensor(config.ngram_whitelist, device=banned.device)
        matches &= ~torch.isin(banned, allowed)

    # Adding -inf where a match bans a token and 0 elsewhere is safe with repeated indices.
    penalty = torch.zeros(banned.shape, dtype=logits.dtype, device=logits.device)
    penalty.masked_fill_(matches, float("-inf"))
    return logits.scatter_add_(1, banned, penalty)


class _Batch:
    """Device state of the sequences still running; rows are removed as they finish."""

    def __init__(
        self,
        cache: KVCache,
        key_valid: Tensor,
        positions: Tensor,
        budgets: Tensor,
        prompt_lengths: list[int],
        max_budget: int,
        loop_max_period: int,
    ) -> None:
        device = key_valid.device
        batch_size = key_valid.shape[0]
        self.cache = cache
        self.key_valid = key_valid  # [B, S]; False on left padding
        self.positions = positions  # [B], position of the next token fed
        self.budgets = budgets  # [B], max output tokens per row
        self.prompt_lengths = prompt_lengths
        self.sequences = list(range(batch_size))  # row -> index in the caller's list
        # Generated tokens [B, L_max] and, per loop period, trailing run lengths [B, P].
        self.tokens = torch.zeros((batch_size, max_budget), dtype=torch.long, device=device)
        self.loop_runs = self.tokens.new_zeros(batch_size, loop_max_period)
        self.length = 0  # tokens generated per row, shared by all rows
        self.columns = 0  # cache columns written
        self.logits = torch.empty(0)  # [B, V], logits for the next token

    @property
    def size(self) -> int:
        return len(self.sequences)

    @classmethod
    def prefill(
        cls, step_fn: StepFn, prompt_embeds: Sequence[Tensor], config: GenerationConfig
    ) -> _Batch:
        """Left-pad the prompts, run them through step_fn and keep the last logits."""
        prompt_lengths = [int(embeds.shape[0]) for embeds in prompt_embeds]
        if min(prompt_lengths) < 1:
            raise ValueError("every prompt needs at least one token (its BOS)")
        budgets = [_output_budget(length, config) for length in prompt_lengths]
        first = prompt_embeds[0]
        batch_size, width = len(prompt_embeds), max(prompt_lengths)
        embeds = first.new_zeros(batch_size, width, first.shape[-1])  # [B, T, D]
        for row, prompt in enumerate(prompt_embeds):
            embeds[row, width - prompt.shape[0] :] = prompt

        padding = width - torch.tensor(prompt_lengths, device=first.device)  # [B]
        columns = torch.arange(width + max(budgets), device=first.device)  # [S]
        key_valid = columns[None, :] >= padding[:, None]  # [B, S]
        positions = (columns[None, :width] - padding[:, None]).clamp(min=0)  # [B, T]
        batch = cls(
            KVCache(capacity=width + max(budgets)),
            key_valid,
            positions[:, -1] + 1,
            torch.tensor(budgets, device=first.device),
            prompt_lengths,
            max(budgets),
            config.loop_max_period,
        )

        chunk = config.prefill_chunk_size or width
        for start in range(0, width, chunk):
            end = min(start + chunk, width)
            mask = causal_mask(key_valid[:, :end], end - start)  # [B, 1, T, S]
            logits = step_fn(embeds[:, start:end], positions[:, start:end], batch.cache, mask)
        batch.logits = logits[:, -1].float()
        batch.columns = width
        return batch

    def generated(self) -> Tensor:
        return self.tokens[:, : self.length]  # [B, L]

    def append(self, next_ids: Tensor, config: GenerationConfig) -> list[FinishReason | None]:
        """Record one token per row and return each row's finish reason, None if it runs on."""
        self.tokens[:, self.length] = next_ids
        self.length += 1
        looping = self._update_loop_runs(next_ids, config)  # [B]
        at_eos = next_ids == config.eos_token_id  # [B]
        at_budget = self.budgets <= self.length  # [B]

        flags = torch.stack((at_eos, looping, at_budget), dim=1).tolist()  # [B, 3], one sync

        reasons: list[FinishReason | None] = []
        for eos, loop, budget in flags:
            reason: FinishReason | None = None
            if eos:
                reason = "eos"
            elif loop:
                reason = "loop"
            elif budget:
                reason = "length"
            reasons.append(reason)
        return reasons

    def _update_loop_runs(self, next_ids: Tensor, config: GenerationConfig) -> Tensor:
        """Update, per period p, how many trailing tokens equal the token p places earlier.

        A run of r such tokens means the last r + p tokens repeat with period p. Returns a [B]
        bool tensor: True where some period repeats loop_min_repeats times over loop_min_tokens.
        """
        max_period = config.loop_max_period
        if max_period == 0:
            return torch.zeros_like(next_ids, dtype=torch.bool)
        periods = torch.arange(1, max_period + 1, device=next_ids.device)  # [P]
        earlier = self.length - 1 - periods  # [P], index of the token p places back
        lagged = self.tokens[:, earlier.clamp(min=0)]  # [B, P]
        same = (lagged == next_ids[:, None]) & (earlier >= 0)  # [B, P]
        self.loop_runs = (self.loop_runs + 1) * same

        needed = torch.maximum(
            (config.loop_min_repeats - 1) * periods, config.loop_min_tokens - periods
        )
        return (self.loop_runs >= needed.clamp(min=1)).any(dim=-1)

    def output(self, row: int, reason: FinishReason | None) -> GenerationOutput:
        assert reason is not None
        token_ids = self.tokens[row, : self.length].tolist()
        if reason == "eos":
            token_ids = token_ids[:-1]
        return GenerationOutput(
            token_ids, reason, self.prompt_lengths[self.sequences[row]], self.length
        )

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in `rows` from the batch state and the KV cache."""
        index = torch.tensor(rows, dtype=torch.long, device=self.tokens.device)
        self.cache.keep_rows(index)
        self.key_valid = self.key_valid[index]
        self.positions = self.positions[index]
        self.budgets = self.budgets[index]
        self.tokens = self.tokens[index]
        self.loop_runs = self.loop_runs[index]
        self.sequences = [self.sequences[row] for row in rows]

    def decode(self, step_fn: StepFn, next_ids: Tensor) -> None:
        """Feed one new token per row and keep the logits for the following one."""
        self.columns += 1
        mask = causal_mask(self.key_valid[:, : self.columns], 1)  # [B, 1, 1, S]
        logits = step_fn(next_ids[:, None], self.positions[:, None], self.cache, mask)
        self.logits = logits[:, -1].float()
        self.positions = self.positions + 1


def _output_budget(prompt_length: int, config: GenerationConfig) -> int:
    """Return how many tokens a prompt may generate; raise ValueError when it leaves no room."""
    budget = min(config.max_new_tokens, config.max_length - prompt_length)
    if budget < 1:
        message = (
            f"prompt of {prompt_length} tokens leaves no room for output within "
            f"max_length {config.max_length}"
        )
        raise ValueError(message)
    return budget
