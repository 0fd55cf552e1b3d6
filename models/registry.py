"""Engine selection: turn an engine name and its options into a loaded Engine."""

from __future__ import annotations

from pathlib import Path

from models.engine import Engine

ENGINE_NAMES = ("auto", "deepseek-ocr", "rapidocr")


def resolve_engine_name(name: str, model_path: Path | None) -> str:
    """Return the concrete engine for `name`; auto means deepseek-ocr when weights are set."""
    if name not in ENGINE_NAMES:
        message = f"unknown engine {name!r}; expected one of {', '.join(ENGINE_NAMES)}"
        raise ValueError(message)
    if name == "auto":
        return "deepseek-ocr" if model_path is not None else "rapidocr"
    return name


def load_engine(name: str, *, model_path: Path | None = None, device: str = "cpu") -> Engine:
    """Load the named engine once; callers keep and reuse the returned object."""
    concrete = resolve_engine_name(name, model_path)
    if concrete == "rapidocr":
        from models.rapidocr_engine import RapidOcrEngine

        return RapidOcrEngine()

    if model_path is None:
        message = "the deepseek-ocr engine needs model weights: set OCRQ_MODEL_PATH to a local folder"
        raise ValueError(message)
    from models.deepseek_ocr.engine import DeepseekOcrEngine

    return DeepseekOcrEngine.from_pretrained(model_path, device=device)
