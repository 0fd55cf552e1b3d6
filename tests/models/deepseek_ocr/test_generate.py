"""Greedy batched generation: the windowed n-gram rule, batching, stop conditions and loops."""

from __future__ import annotations

import random

import pytest
import torch
from torch import Tensor

from models.deepseek_ocr.decoder import KVCache
from models.deepseek_ocr.generate import (
    GenerationConfig,
    GenerationOutput,
    ban_repeated_ngrams,
    generate,
)
from tests.models.deepseek_ocr.decoder_factories import (
    TinyDecoderStack,
    randomize_,
    tiny_decoder_config,
)

WHITELIST = (128821, 128822)


def banned_by_rule(
    generated: list[int], size: int, window: int, whitelist: tuple[int, ...]
) -> set[int]:
    """Apply the vLLM n-gram rule step by step, as written, to one sequence of output tokens."""
    length = len(generated)
    if length < size:
        return set()
    prefix = generated[length - size + 1 :]
    banned = set()
    for start in range(max(0, length - window), length - size + 1):
        if generated[start : start + size - 1] == prefix:
            banned.add(generated[start + size - 1])
    return banned - set(whitelist)


def banned_by_function(
    generated: list[list[int]], config: GenerationConfig, vocab: int
) -> list[set[int]]:
    logits = torch.zeros(len(generated), vocab)
    tokens = torch.tensor(generated, dtype=torch.long).view(len(generated), -1)
    result = ban_repeated_ngrams(logits, tokens, config)
    return [set(torch.nonzero(row == float("-inf")).flatten().tolist()) for row in result]


@pytest.mark.parametrize(("size", "window"), [(3, 8), (2, 5), (4, 4), (5, 3), (1, 6)])
def test_ngram_ban_matches_rule_simulation(size: int, window: int) -> None:
    """Random low-entropy sequences of every length: the banned sets equal the rule's, per row."""
    rng = random.Random(size * 100 + window)
    vocab = 6
    config = GenerationConfig(ngram_size=size, ngram_window=window, ngram_whitelist=(4,))
    for length in range(0, 30):
        rows = [[rng.randrange(vocab) for _ in range(length)] for _ in range(3)]
        expected = [banned_by_rule(row, size, window, (4,)) for row in rows]
        assert banned_by_function(rows, config, vocab) == expected, (length, rows)


def test_ngram_ban_period_limit() -> None:
    """With (30, 90) a block of 61 tokens repeated is blocked, one of 62 is not."""
    config = GenerationConfig()
    for period, blocked in ((40, True), (61, True), (62, False), (70, False)):
        block = list(range(1000, 1000 + period))
        generated = (block * 4)[: 2 * period + 29]
        banned = banned_by_function([generated], config, 1000 + period)[0]
        assert (banned == {generated[-period]}) is blocked, period


def test_ngram_ban_spares_whitelisted_cells() -> None:
    config = GenerationConfig(ngram_size=3, ngram_window=10)
    generated = [WHITELIST[0], WHITELIST[1]] * 5
    assert banned_by_function([generated], config, 128830)[0] == set()
    config_without = GenerationConfig(ngram_size=3, ngram_window=10, ngram_whitelist=())
    assert banned_by_function([generated], config_without, 128830)[0] == {WHITELIST[0]}


def test_ngram_ban_ignores_tokens_outside_window() -> None:
    config = GenerationConfig(ngram_size=2, ngram_window=4)
    generated = [7, 8, 1, 2, 3, 4, 7]
    assert banned_by_function([generated], config, 10)[0] == set()
    wider = GenerationConfig(ngram_size=2, ngram_window=7)
    assert banned_by_function([generated], wider, 10)[0] == {8}


def make_random_decoder(vocab: int = 50) -> TinyDecoderStack:
    config = tiny_decoder_config(vocab_size=vocab)
    return randomize_(TinyDecoderStack(config).eval(), seed=21)  # type: ignore[return-value]


def make_prompts(stack: TinyDecoderStack, lengths: list[int]) -> list[Tensor]:
    generator = torch.Generator().manual_seed(22)
    vocab = stack.embed_tokens.num_embeddings
    with torch.no_grad():
        return [
            stack.embed_tokens(torch.randint(2, vocab, (length,), generator=generator))
            for length in lengths
        ]


def test_batched_greedy_equals_per_sequence_greedy() -> None:
    """Prompts of 3, 11 and 6 tokens decoded together give the same tokens as one by one."""
    stack = make_random_decoder()
    prompts = make_prompts(stack, [3, 11, 6])
    config = GenerationConfig(
        max_new_tokens=14, ngram_size=3, ngram_window=12, eos_token_id=-1, loop_max_period=0
    )

    batched = generate(stack.step, prompts, config)
    singles = [generate(stack.step, [prompt], config)[0] for prompt in prompts]

    assert batched == singles
    assert all(output.finish_reason == "length" for output in batched)
    assert [output.output_tokens for output in batched] == [14, 14, 14]


def test_batched_greedy_equals_per_sequence_with_early_eos() -> None:
    """A row that stops early leaves the batch without disturbing the others."""
    stack = make_random_decoder()
    prompts = make_prompts(stack, [5, 9, 2, 7])
    probe = generate(stack.step, prompts, GenerationConfig(max_new_tokens=12, eos_token_id=-1))
    # Use the 4th token of the second sequence as EOS so that at least one row stops early.
    config = GenerationConfig(max_new_tokens=12, eos_token_id=probe[1].token_ids[3])

    batched = generate(stack.step, prompts, config)
    singles = [generate(stack.step, [prompt], config)[0] for prompt in prompts]

    assert batched == singles
    assert batched[1].finish_reason == "eos"
    assert batched[1].output_tokens <= 4


def test_chunked_prefill_equals_single_prefill() -> None:
    stack = make_random_decoder()
    prompts = make_prompts(stack, [10, 4])
    whole = generate(stack.step, prompts, GenerationConfig(max_new_tokens=8))
    chunked = generate(
        stack.step, prompts, GenerationConfig(max_new_tokens=8, prefill_chunk_size=3)
    )
    assert chunked == whole


def test_generated_output_never_repeats_banned_ngram() -> None:
    """In real decoding no n-gram is repeated within the window (whitelist empty)."""
    stack = make_random_decoder(vocab=12)
    config = GenerationConfig(
        max_new_tokens=40, ngram_size=3, ngram_window=10, ngram_whitelist=(), eos_token_id=-1
    )
    for output in generate(stack.step, make_prompts(stack, [4, 7]), config):
        tokens = output.token_ids
        for length in range(3, len(tokens)):
            assert tokens[length] not in banned_by_rule(tokens[:length], 3, 10, ()), length


class ScriptedModel:
    """A step_fn whose next token follows a fixed script per sequence.

    Each prompt is embedded as [T, 1] filled with its sequence id (>= 1). The id is written into
    the KV cache at prefill, so it is read back from the cache at every step: if batch rows were
    mixed up when finished rows leave, the scripts would be mixed up too.
    """

    def __init__(self, scripts: dict[int, list[int]], vocab: int, filler: int = 3) -> None:
        self.scripts = scripts
        self.vocab = vocab
        self.filler = filler
        self.prompt_lengths: dict[int, int] = {}
        self.batch_sizes: list[int] = []

    def prompt(self, sequence_id: int, length: int) -> Tensor:
        self.prompt_lengths[sequence_id] = length
        return torch.full((length, 1), float(sequence_id))

    def __call__(self, inputs: Tensor, positions: Tensor, cache: KVCache, mask: Tensor) -> Tensor:
        self.batch_sizes.append(inputs.shape[0])
        if inputs.dtype == torch.long:  # decoding: token ids [B, 1]
            keys = torch.zeros(inputs.shape[0], 1, 1, 1)
        else:  # prefill: embeddings [B, T, 1] holding the sequence id
            keys = inputs[:, None]  # [B, 1, T, 1]
        cached, _ = cache.update(0, keys, keys)
        sequence_ids = cached.amax(dim=(1, 2, 3)).long().tolist()  # one id per row

        logits = torch.zeros(inputs.shape[0], 1, self.vocab)
        for row, sequence_id in enumerate(sequence_ids):
            step = int(positions[row, -1]) - self.prompt_lengths[sequence_id] + 1
            script = self.scripts[sequence_id]
            token = script[step] if step < len(script) else self.filler
            logits[row, 0, token] = 10.0
        return logits


def run_scripted(
    scripts: dict[int, list[int]],
    lengths: dict[int, int],
    config: GenerationConfig,
    vocab: int = 64,
) -> tuple[list[GenerationOutput], ScriptedModel]:
    model = ScriptedModel(scripts, vocab)
    prompts = [model.prompt(sequence_id, lengths[sequence_id]) for sequence_id in scripts]
    return generate(model, prompts, config), model


def test_finish_reason_eos_excludes_eos_token() -> None:
    outputs, _ = run_scripted({1: [5, 6, 1, 7]}, {1: 4}, GenerationConfig(ngram_size=0))
    assert outputs[0].token_ids == [5, 6]
    assert outputs[0].finish_reason == "eos"
    assert outputs[0].output_tokens == 3
    assert outputs[0].prompt_tokens == 4


def test_finish_reason_length_at_max_new_tokens() -> None:
    outputs, _ = run_scripted({1: list(range(10, 30))}, {1: 4}, GenerationConfig(max_new_tokens=5))
    assert outputs[0].token_ids == [10, 11, 12, 13, 14]
    assert outputs[0].finish_reason == "length"


def test_finish_reason_length_at_max_length_budget() -> None:
    """Prompt + output (EOS included) never exceeds max_length."""
    config = GenerationConfig(max_length=9)
    outputs, _ = run_scripted({1: list(range(10, 30)), 2: [5, 1]}, {1: 6, 2: 8}, config)
    assert outputs[0].token_ids == [10, 11, 12]
    assert outputs[0].finish_reason == "length"
    assert outputs[1].token_ids == [5]
    assert outputs[1].finish_reason == "length"


def test_prompt_without_room_for_output_raises() -> None:
    with pytest.raises(ValueError, match="max_length 8"):
        run_scripted({1: [5]}, {1: 8}, GenerationConfig(max_length=8))


def test_loop_detector_stops_long_period_repeats() -> None:
    """A 100-token block repeated (past the n-gram rule's reach) stops after 4 periods."""
    block = list(range(200, 300))
    outputs, _ = run_scripted({1: [7] + block * 10}, {1: 5}, GenerationConfig(), vocab=400)
    assert outputs[0].finish_reason == "loop"
    # Tail of 400 tokens with period 100: 1 lead token + 4 blocks.
    assert outputs[0].output_tokens == 401
    assert outputs[0].token_ids == [7] + block * 4


def test_loop_detector_catches_whitelisted_cell_loop() -> None:
    """A whitelisted pair (like <td></td>) is never blocked by the n-gram rule; the detector is."""
    config = GenerationConfig(ngram_whitelist=(5, 6))
    outputs, _ = run_scripted({1: [5, 6] * 400}, {1: 3}, config)
    assert outputs[0].finish_reason == "loop"
    assert outputs[0].output_tokens == 256


def test_loop_detector_ignores_three_repeats() -> None:
    block = list(range(200, 300))
    script = block * 3 + list(range(300, 340)) + [1]
    outputs, _ = run_scripted({1: script}, {1: 5}, GenerationConfig(), vocab=400)
    assert outputs[0].finish_reason == "eos"
    assert outputs[0].token_ids == script[:-1]


def test_mixed_batch_finishes_each_sequence_on_its_own() -> None:
    """eos, length and loop in one batch; finished rows leave the batch as they stop."""
    block = list(range(100, 170))
    scripts = {
        1: [20, 21, 1],
        2: list(range(30, 100)),
        3: block * 8,
        4: [40, 41, 42, 43, 44, 1],
    }
    # Sequence 2 has room for 40 tokens only: 300 - 260.
    lengths = {1: 7, 2: 260, 3: 5, 4: 2}
    config = GenerationConfig(max_length=300, loop_min_tokens=0, loop_min_repeats=3)

    outputs, model = run_scripted(scripts, lengths, config, vocab=200)

    assert [output.finish_reason for output in outputs] == ["eos", "length", "loop", "eos"]
    assert outputs[0].token_ids == [20, 21]
    assert outputs[1].token_ids == list(range(30, 70))
    assert outputs[2].token_ids == block * 3
    assert outputs[3].token_ids == [40, 41, 42, 43, 44]
    assert [output.prompt_tokens for output in outputs] == [7, 260, 5, 2]
    assert model.batch_sizes[:3] == [4, 4, 4]
    assert model.batch_sizes[-1] == 1


def test_ngram_rule_changes_scripted_short_loop() -> None:
    """A 5-token loop is blocked: the banned scripted token loses to the next best one."""
    model = ScriptedModel({1: [10, 11, 12, 13, 14] * 6}, vocab=32)

    def step(inputs: Tensor, positions: Tensor, cache: KVCache, mask: Tensor) -> Tensor:
        logits = model(inputs, positions, cache, mask)
        logits[..., 30] += 5.0  # the fallback when the scripted token is banned
        return logits

    config = GenerationConfig(max_new_tokens=12, ngram_size=3, ngram_window=10)
    outputs = generate(step, [model.prompt(1, 2)], config)

    tokens = outputs[0].token_ids
    assert tokens[:7] == [10, 11, 12, 13, 14, 10, 11]
    assert tokens[7] == 30
    for length in range(3, len(tokens)):
        assert tokens[length] not in banned_by_rule(tokens[:length], 3, 10, WHITELIST), length


def test_generation_config_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="ngram_window"):
        GenerationConfig(ngram_window=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
