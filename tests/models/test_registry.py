"""models.registry: engine options reach the deepseek-ocr engine; bad ones name their argument."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.deepseek_ocr.engine import DeepseekOcrEngine
from models.deepseek_ocr.random_weights import save_random_checkpoint
from models.registry import EngineLoadError, load_engine, resolve_engine_name


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))


def test_auto_picks_deepseek_when_model_path_set(tmp_path: Path) -> None:
    assert resolve_engine_name("auto", tmp_path) == "deepseek-ocr"
    assert resolve_engine_name("auto", None) == "rapidocr"


def test_load_engine_passes_deepseek_options(checkpoint: Path) -> None:
    engine = load_engine(
        "deepseek-ocr",
        model_path=checkpoint,
        max_new_tokens=8,
        max_tiles=3,
        max_batch_pages=2,
        dtype="bfloat16",
    )

    assert isinstance(engine, DeepseekOcrEngine)
    assert engine.generation.max_new_tokens == 8
    assert engine.generation.max_length == 8192
    assert engine.max_tiles == 3
    assert engine.max_batch_pages == 2
    assert engine.model.dtype == torch.bfloat16


def test_load_engine_auto_dtype_is_float32_on_cpu(checkpoint: Path) -> None:
    engine = load_engine("deepseek-ocr", model_path=checkpoint)

    assert isinstance(engine, DeepseekOcrEngine)
    assert engine.model.dtype == torch.float32
    assert engine.generation.max_new_tokens == 8192


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"max_new_tokens": 8193}, "max_new_tokens"),
        ({"max_tiles": 10}, "max_tiles"),
        ({"max_batch_pages": 0}, "max_batch_pages"),
        ({"dtype": "int8"}, "dtype"),
        ({"device": "bogus"}, "device"),
    ],
)
def test_load_engine_rejects_bad_option(
    checkpoint: Path, options: dict[str, object], argument: str
) -> None:
    with pytest.raises(EngineLoadError) as caught:
        load_engine("deepseek-ocr", model_path=checkpoint, **options)  # type: ignore[arg-type]

    assert caught.value.argument == argument


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_engine_rejects_cuda_without_cuda(checkpoint: Path) -> None:
    with pytest.raises(EngineLoadError, match="CUDA is not available") as caught:
        load_engine("deepseek-ocr", model_path=checkpoint, device="cuda")

    assert caught.value.argument == "device"


def test_load_engine_names_missing_tensor_on_one_line(checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in checkpoint.iterdir():
        if item.suffix != ".safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    tensors = load_file(str(checkpoint / "model.safetensors"))
    removed = sorted(tensors)[0]
    del tensors[removed]
    save_file(tensors, str(broken / "model.safetensors"))

    with pytest.raises(EngineLoadError) as caught:
        load_engine("deepseek-ocr", model_path=broken)

    assert caught.value.argument == "model_path"
    assert removed in str(caught.value)
    assert "missing" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_load_engine_without_model_path_names_it() -> None:
    with pytest.raises(EngineLoadError) as caught:
        load_engine("deepseek-ocr")

    assert caught.value.argument == "model_path"
