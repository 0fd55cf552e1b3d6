"""The deepseek-ocr engine: page images in, page results out, in batches.

Dimension legend used across models/deepseek_ocr: B batch, T tokens, D hidden, H heads,
E experts, K top_k.

One batch of pages goes through these steps:
1. preprocess: each page becomes a global view (plus tiles in Gundam mode), per preprocess.py;
2. encode: SAM, CLIP and the projector run once over every view of every page;
3. prompt: BOS, one `<image>` id per vision token and the task text, with the vision tokens
   written into the `<image>` slots;
4. generate: batched greedy decoding with the KV cache (generate.py);
5. retry: a page whose output loops is decoded once more with a tighter n-gram rule and a lower
   token limit. If it still loops, its finish_reason is "loop", and the page is kept;
6. post-process: grounding tags become blocks with pixel boxes, figure crops and markdown.

timings_ms of each page has preprocess (that page alone) and sam, clip, projector, prefill,
decode and postprocess. The batched stages report the time of the whole batch, so pages of one
batch share those values; a retry's prefill and decode are added to the page's own values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from models.deepseek_ocr.config import OcrConfig
from models.deepseek_ocr.decoder import KVCache
from models.deepseek_ocr.generate import GenerationConfig, GenerationOutput, generate
from models.deepseek_ocr.grounding import postprocess_output
from models.deepseek_ocr.model import DeepseekOcrForCausalLM
from models.deepseek_ocr.preprocess import DEFAULT_MAX_TILES, PreparedPage, prepare_page
from models.deepseek_ocr.prompts import OcrTokenizer, build_prompt_ids, load_tokenizer
from models.deepseek_ocr.random_weights import fill_random_weights
from models.deepseek_ocr.weights import load_model
from models.engine import PageInput, PageOptions, PageResult

ENGINE_NAME = "deepseek-ocr"
# The tighter n-gram rule of the reference PDF script (size 20, window 50) blocks loops with a
# period of up to 31 tokens. The retry also halves the token limit, so a second loop ends sooner.
RETRY_NGRAM_SIZE = 20
RETRY_NGRAM_WINDOW = 50
DEFAULT_MAX_BATCH_PAGES = 8


@dataclass
class _BatchTimings:
    """Milliseconds spent on the batched stages of one batch."""

    stages_ms: dict[str, float]

    def add(self, stage: str, elapsed_ms: float) -> None:
        self.stages_ms[stage] = self.stages_ms.get(stage, 0.0) + elapsed_ms


class DeepseekOcrEngine:
    """DeepSeek-OCR behind the Engine protocol; load it once and reuse it for every batch."""

    name = ENGINE_NAME

    def __init__(
        self,
        model: DeepseekOcrForCausalLM,
        tokenizer: OcrTokenizer,
        *,
        generation: GenerationConfig | None = None,
        max_tiles: int = DEFAULT_MAX_TILES,
        max_batch_pages: int = DEFAULT_MAX_BATCH_PAGES,
        retry_loops: bool = True,
    ) -> None:
        if max_batch_pages < 1:
            message = f"max_batch_pages must be at least 1, got {max_batch_pages}"
            raise ValueError(message)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.generation = generation or GenerationConfig(
            eos_token_id=model.config.decoder.eos_token_id
        )
        self.max_tiles = max_tiles
        self.max_batch_pages = max_batch_pages
        self.retry_loops = retry_loops

    @classmethod
    def from_pretrained(
        cls,
        folder: Path | str,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        **options: object,
    ) -> DeepseekOcrEngine:
        """Load config.json, tokenizer.json and the safetensors weights of a checkpoint folder.

        Weights are `dtype`, by default bf16 on CUDA and fp32 on other devices. `options` go
        to the constructor.
        """
        folder = Path(folder)
        if not folder.is_dir():
            message = f"model folder {folder} not found: set OCRQ_MODEL_PATH to a local checkpoint"
            raise FileNotFoundError(message)
        tokenizer = load_tokenizer(folder)
        model = load_model(folder, device=device, dtype=dtype)
        return cls(model, tokenizer, **options)  # type: ignore[arg-type]

    @classmethod
    def from_parts(
        cls,
        config: OcrConfig,
        model: DeepseekOcrForCausalLM,
        tokenizer: OcrTokenizer,
        **options: object,
    ) -> DeepseekOcrEngine:
        """Wrap an already built model and tokenizer (tests, benchmarks)."""
        if model.config != config:
            message = "the model was built from a different config than the one given"
            raise ValueError(message)
        return cls(model, tokenizer, **options)  # type: ignore[arg-type]

    @classmethod
    def from_config(
        cls, config: OcrConfig, tokenizer: OcrTokenizer, *, seed: int = 0, **options: object
    ) -> DeepseekOcrEngine:
        """Build a CPU model with random weights from `config` (tests); its text is noise."""
        model = DeepseekOcrForCausalLM(config)
        fill_random_weights(model, seed=seed)
        return cls(model, tokenizer, **options)  # type: ignore[arg-type]

    def run_pages(self, pages: Sequence[PageInput], options: PageOptions) -> list[PageResult]:
        """Read pages in batches of at most max_batch_pages; results come back in input order."""
        results: list[PageResult] = []
        for start in range(0, len(pages), self.max_batch_pages):
            results += self._run_batch(pages[start : start + self.max_batch_pages], options)
        return results

    def _run_batch(self, pages: Sequence[PageInput], options: PageOptions) -> list[PageResult]:
        if not pages:
            return []
        timings = _BatchTimings({})

        # Preprocess, timed per page because it runs per page.
        prepared: list[PreparedPage] = []
        preprocess_ms: list[float] = []
        for page in pages:
            started = time.perf_counter()
            prepared.append(prepare_page(page.image, options.mode, self.max_tiles))
            preprocess_ms.append(_elapsed_ms(started))

        vision = self._encode(prepared, timings)
        prompts = [
            self._embed_prompt(page, sequence, options)
            for page, sequence in zip(prepared, vision, strict=True)
        ]
        outputs = self._generate(prompts, self.generation, timings)
        retry_timings = self._retry_loops(prompts, outputs)

        results = []
        for index, (page, output) in enumerate(zip(pages, outputs, strict=True)):
            page_timings = dict(timings.stages_ms, preprocess=preprocess_ms[index])
            for stage, elapsed_ms in retry_timings.get(index, {}).items():
                page_timings[stage] = page_timings.get(stage, 0.0) + elapsed_ms
            results.append(self._page_result(page, output, page_timings))
        return results

    def _encode(self, prepared: list[PreparedPage], timings: _BatchTimings) -> list[Tensor]:
        started = time.perf_counter()

        def on_stage_end(stage: str) -> None:
            nonlocal started
            self._synchronize()
            timings.add(stage, _elapsed_ms(started))
            started = time.perf_counter()

        return self.model.encode_images(prepared, on_stage_end)

    def _embed_prompt(self, page: PreparedPage, vision: Tensor, options: PageOptions) -> Tensor:
        prompt_ids = build_prompt_ids(
            self.tokenizer, options.task, options.target, page.num_image_tokens
        )
        input_ids = torch.tensor(prompt_ids, dtype=torch.long)
        with torch.no_grad():
            return self.model.embed_prompt(input_ids, vision)  # [T, D]

    def _generate(
        self, prompts: list[Tensor], config: GenerationConfig, timings: _BatchTimings
    ) -> list[GenerationOutput]:
        """Run generate, splitting its time into prefill (first step) and decode (the rest)."""
        step = _TimedStep(self.model.step, self._synchronize)
        started = time.perf_counter()
        outputs = generate(step, prompts, config)
        total_ms = _elapsed_ms(started)
        timings.add("prefill", step.prefill_ms)
        timings.add("decode", total_ms - step.prefill_ms)
        return outputs

    def _retry_loops(
        self, prompts: list[Tensor], outputs: list[GenerationOutput]
    ) -> dict[int, dict[str, float]]:
        """Decode looping pages again with tighter settings, replacing their outputs in place.

        Returns the retry's prefill and decode times by page index.
        """
        looping = [index for index, output in enumerate(outputs) if output.finish_reason == "loop"]
        if not self.retry_loops or not looping:
            return {}

        config = self.retry_generation_config()
        timings = _BatchTimings({})
        retried = self._generate([prompts[index] for index in looping], config, timings)
        for index, output in zip(looping, retried, strict=True):
            outputs[index] = output
        return {index: dict(timings.stages_ms) for index in looping}

    def retry_generation_config(self) -> GenerationConfig:
        """Return the settings for a second try at a looping page."""
        base = self.generation
        ngram_size = min(base.ngram_size, RETRY_NGRAM_SIZE) if base.ngram_size else RETRY_NGRAM_SIZE
        return replace(
            base,
            ngram_size=ngram_size,
            ngram_window=min(base.ngram_window, RETRY_NGRAM_WINDOW) or RETRY_NGRAM_WINDOW,
            max_new_tokens=max(1, base.max_new_tokens // 2),
        )

    def _page_result(
        self, page: PageInput, output: GenerationOutput, timings_ms: dict[str, float]
    ) -> PageResult:
        started = time.perf_counter()
        raw_text = self.tokenizer.decode(output.token_ids)
        markdown, blocks, figures = postprocess_output(raw_text, page.image, page.page_index)
        timings_ms = dict(timings_ms, postprocess=_elapsed_ms(started))

        width, height = page.image.size
        return PageResult(
            page_index=page.page_index,
            width=width,
            height=height,
            markdown=markdown,
            blocks=blocks,
            raw_text=raw_text,
            finish_reason=output.finish_reason,
            prompt_tokens=output.prompt_tokens,
            output_tokens=output.output_tokens,
            timings_ms={stage: round(value) for stage, value in timings_ms.items()},
            figures=figures,
        )

    def _synchronize(self) -> None:
        """Wait for queued GPU work so that wall-clock stage times are real."""
        device = self.model.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)


class _TimedStep:
    """Wrap model.step, timing the prefill calls (those that take embeddings)."""

    def __init__(
        self,
        step: Callable[[Tensor, Tensor, KVCache | None, Tensor | None], Tensor],
        synchronize: Callable[[], None],
    ) -> None:
        self.step = step
        self.synchronize = synchronize
        self.prefill_ms = 0.0

    def __call__(self, inputs: Tensor, positions: Tensor, cache: KVCache, mask: Tensor) -> Tensor:
        if not inputs.is_floating_point():
            return self.step(inputs, positions, cache, mask)
        started = time.perf_counter()
        logits = self.step(inputs, positions, cache, mask)
        self.synchronize()
        self.prefill_ms += _elapsed_ms(started)
        return logits


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
