"""Engine selection: turn an engine name and its options into a loaded Engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from models.engine import Engine

ENGINE_NAMES = ("auto", "deepseek-ocr", "rapidocr")
DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")
# Prompt and output together never exceed the sequence length DeepSeek-OCR was trained on.
MAX_SEQUENCE_TOKENS = 8192


class EngineLoadError(ValueError):
    """An engine failed to load because of one argument of load_engine, named in `argument`.

    Callers that build the arguments from settings map `argument` back to its setting.
    """

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


def resolve_engine_name(name: str, model_path: Path | None) -> str:
    """Return the concrete engine for `name`; auto means deepseek-ocr when weights are set."""
    if name not in ENGINE_NAMES:
        message = f"unknown engine {name!r}; expected one of {', '.join(ENGINE_NAMES)}"
        raise ValueError(message)
    if name == "auto":
        return "deepseek-ocr" if model_path is not None else "rapidocr"
    return name


def load_engine(
    name: str,
    *,
    model_path: Path | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    max_new_tokens: int | None = None,
    max_tiles: int | None = None,
    max_batch_pages: int | None = None,
) -> Engine:
    """Load the named engine once; callers keep and reuse the returned object.

    The rapidocr engine ignores every option. For deepseek-ocr, `dtype` "auto" means bfloat16
    on CUDA and float32 elsewhere, `max_new_tokens` None means the rest of the 8192-token
    window after the prompt, and None for the other options keeps the engine's defaults.
    Raises EngineLoadError naming the argument at fault.
    """
    concrete = resolve_engine_name(name, model_path)
    if concrete == "rapidocr":
        from models.rapidocr_engine import RapidOcrEngine

        return RapidOcrEngine()

    if model_path is None:
        message = "the deepseek-ocr engine needs model weights, but no model folder was given"
        raise EngineLoadError("model_path", message)
    options = _deepseek_options(max_tiles, max_batch_pages)
    _check_max_new_tokens(max_new_tokens)
    torch_dtype = _torch_dtype(dtype, _checked_device(device))

    from models.deepseek_ocr.engine import DeepseekOcrEngine

    try:
        engine = DeepseekOcrEngine.from_pretrained(
            model_path, device=device, dtype=torch_dtype, **options
        )
    except (OSError, ValueError) as exc:
        # Missing files, unreadable safetensors, and strict-load mismatches listing tensor
        # names. The listing has one name per line, joined here into one line.
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        message = f"failed to load the checkpoint in {model_path}: {detail}"
        raise EngineLoadError("model_path", message) from exc

    if max_new_tokens is not None:
        # max_length still stops a page at 8192 tokens of prompt and output together.
        engine.generation = replace(engine.generation, max_new_tokens=max_new_tokens)
    return engine


def _check_max_new_tokens(max_new_tokens: int | None) -> None:
    if max_new_tokens is not None and not 1 <= max_new_tokens <= MAX_SEQUENCE_TOKENS:
        message = f"max_new_tokens must be 1 to {MAX_SEQUENCE_TOKENS}, got {max_new_tokens}"
        raise EngineLoadError("max_new_tokens", message)


def _deepseek_options(max_tiles: int | None, max_batch_pages: int | None) -> dict[str, Any]:
    from models.deepseek_ocr.preprocess import MAX_TILES_LIMIT, MIN_TILES

    options: dict[str, Any] = {}
    if max_tiles is not None:
        if not MIN_TILES <= max_tiles <= MAX_TILES_LIMIT:
            message = f"max_tiles must be {MIN_TILES} to {MAX_TILES_LIMIT}, got {max_tiles}"
            raise EngineLoadError("max_tiles", message)
        options["max_tiles"] = max_tiles
    if max_batch_pages is not None:
        if max_batch_pages < 1:
            message = f"max_batch_pages must be at least 1, got {max_batch_pages}"
            raise EngineLoadError("max_batch_pages", message)
        options["max_batch_pages"] = max_batch_pages
    return options


def _checked_device(device: str) -> Any:
    """Return torch.device(device), or raise EngineLoadError when it is invalid or absent."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        message = f"invalid torch device {device!r}; expected e.g. cpu, cuda or cuda:1"
        raise EngineLoadError("device", message) from exc

    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            message = (
                f"device {device!r} requested, but CUDA is not available "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
            )
            raise EngineLoadError("device", message)
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            message = f"device {device!r} requested, but this machine has {count} CUDA device(s)"
            raise EngineLoadError("device", message)
    return parsed


def _torch_dtype(name: str, device: Any) -> Any:
    import torch

    if name not in DTYPE_NAMES:
        message = f"unknown dtype {name!r}; expected one of {', '.join(DTYPE_NAMES)}"
        raise EngineLoadError("dtype", message)
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)
