"""The deepseek-ocr engine end to end on a tiny random model: real pipeline, noise text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from models.deepseek_ocr.config import OcrConfig
from models.deepseek_ocr.engine import DeepseekOcrEngine
from models.deepseek_ocr.generate import GenerationConfig
from models.deepseek_ocr.model import DeepseekOcrForCausalLM
from models.deepseek_ocr.preprocess import count_image_tokens
from models.deepseek_ocr.prompts import OcrTokenizer, load_tokenizer, save_test_tokenizer
from models.deepseek_ocr.random_weights import fill_random_weights, save_random_checkpoint
from models.deepseek_ocr.weights import save_checkpoint
from models.engine import PageInput, PageOptions, PageResult
from models.registry import load_engine

CORPUS_PAGE = Path("/work/shared/corpus/phototest.tif")
MAX_NEW_TOKENS = 6
STAGES = {"preprocess", "sam", "clip", "projector", "prefill", "decode", "postprocess"}


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_test_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_folder: Path) -> OcrTokenizer:
    return load_tokenizer(tokenizer_folder)


def make_model(seed: int = 0) -> DeepseekOcrForCausalLM:
    model = DeepseekOcrForCausalLM(OcrConfig.tiny())
    fill_random_weights(model, seed=seed, std=0.2)
    return model.eval()


def make_engine(tokenizer: OcrTokenizer, **options: object) -> DeepseekOcrEngine:
    generation = options.pop("generation", GenerationConfig(max_new_tokens=MAX_NEW_TOKENS))
    return DeepseekOcrEngine.from_parts(
        OcrConfig.tiny(), make_model(), tokenizer, generation=generation, **options
    )


def make_pages() -> list[PageInput]:
    """Return the corpus page (640x480, no tiles) and a 2x copy (tiled in Gundam mode)."""
    image = Image.open(CORPUS_PAGE).convert("RGB")
    larger = image.resize((image.width * 2, image.height * 2))
    return [PageInput(image=image, page_index=0), PageInput(image=larger, page_index=1)]


def assert_valid_result(result: PageResult, page: PageInput, mode: str) -> None:
    assert result.page_index == page.page_index
    assert (result.width, result.height) == page.image.size
    assert result.finish_reason in ("eos", "length", "loop")
    assert 1 <= result.output_tokens <= MAX_NEW_TOKENS
    image_tokens, _ = count_image_tokens(page.image.width, page.image.height, mode)
    assert result.prompt_tokens > image_tokens + 1
    assert set(result.timings_ms) == STAGES
    assert all(value >= 0 for value in result.timings_ms.values())
    assert isinstance(result.markdown, str)
    assert isinstance(result.raw_text, str)


@pytest.fixture(scope="module")
def shared_engine(tokenizer: OcrTokenizer) -> DeepseekOcrEngine:
    """One engine for the tests that only call run_pages (building a model costs seconds)."""
    return make_engine(tokenizer)


@pytest.fixture(scope="module")
def batch_results(shared_engine: DeepseekOcrEngine) -> dict[str, list[PageResult]]:
    """Results of the two corpus pages read as one batch, by mode."""
    return {
        mode: shared_engine.run_pages(make_pages(), PageOptions(mode=mode, task="markdown"))
        for mode in ("tiny", "gundam")
    }


@pytest.mark.parametrize("mode", ["tiny", "gundam"])
def test_run_pages_reads_batch_of_two(
    batch_results: dict[str, list[PageResult]], mode: str
) -> None:
    pages = make_pages()
    results = batch_results[mode]
    assert len(results) == 2
    for result, page in zip(results, pages, strict=True):
        assert_valid_result(result, page, mode)


def test_gundam_prompt_counts_tiles(batch_results: dict[str, list[PageResult]]) -> None:
    results = batch_results["gundam"]
    small_tokens, small_grid = count_image_tokens(640, 480, "gundam")
    large_tokens, large_grid = count_image_tokens(1280, 960, "gundam")
    assert small_grid is None
    assert large_grid is not None
    text_tokens = results[0].prompt_tokens - small_tokens
    assert results[1].prompt_tokens - large_tokens == text_tokens


def test_batched_page_matches_page_alone(
    shared_engine: DeepseekOcrEngine, batch_results: dict[str, list[PageResult]]
) -> None:
    """The shorter prompt is left-padded in the batch; padding must not change its output."""
    options = PageOptions(mode="gundam", task="markdown")
    alone = shared_engine.run_pages(make_pages()[:1], options)[0]
    together = batch_results["gundam"][0]
    assert together.raw_text == alone.raw_text
    assert together.finish_reason == alone.finish_reason


def test_max_batch_pages_splits_batches(
    shared_engine: DeepseekOcrEngine, batch_results: dict[str, list[PageResult]]
) -> None:
    engine = DeepseekOcrEngine(
        shared_engine.model,
        shared_engine.tokenizer,
        generation=shared_engine.generation,
        max_batch_pages=1,
    )
    results = engine.run_pages(make_pages(), PageOptions(mode="tiny", task="markdown"))
    assert [result.page_index for result in results] == [0, 1]
    expected = [result.raw_text for result in batch_results["tiny"]]
    assert [result.raw_text for result in results] == expected


def test_locate_without_target_is_rejected(shared_engine: DeepseekOcrEngine) -> None:
    with pytest.raises(ValueError, match="target"):
        shared_engine.run_pages(make_pages()[:1], PageOptions(mode="tiny", task="locate"))


def make_repeating_engine(tokenizer: OcrTokenizer, loop_min_tokens: int) -> DeepseekOcrEngine:
    """Return an engine whose logits are all zero, so greedy decoding repeats token 0."""
    model = make_model()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    generation = GenerationConfig(
        max_new_tokens=60,
        ngram_size=0,
        loop_max_period=4,
        loop_min_repeats=2,
        loop_min_tokens=loop_min_tokens,
    )
    return DeepseekOcrEngine.from_parts(OcrConfig.tiny(), model, tokenizer, generation=generation)


def test_looping_page_is_retried_with_ngram_rule(tokenizer: OcrTokenizer) -> None:
    """The retry's 20-gram rule bans token 0 after 19 repeats, so EOS (id 1) comes next."""
    engine = make_repeating_engine(tokenizer, loop_min_tokens=24)
    result = engine.run_pages(make_pages()[:1], PageOptions(mode="tiny", task="free"))[0]
    assert result.finish_reason == "eos"
    assert result.output_tokens == 20 + 1


def test_page_still_looping_after_retry_is_kept(tokenizer: OcrTokenizer) -> None:
    engine = make_repeating_engine(tokenizer, loop_min_tokens=4)
    results = engine.run_pages(make_pages(), PageOptions(mode="tiny", task="free"))
    assert [result.finish_reason for result in results] == ["loop", "loop"]
    assert [result.page_index for result in results] == [0, 1]


def test_loop_retry_can_be_turned_off(tokenizer: OcrTokenizer) -> None:
    engine = make_repeating_engine(tokenizer, loop_min_tokens=24)
    engine.retry_loops = False
    result = engine.run_pages(make_pages()[:1], PageOptions(mode="tiny", task="free"))[0]
    assert result.finish_reason == "loop"


def test_retry_config_is_tighter(shared_engine: DeepseekOcrEngine) -> None:
    engine = DeepseekOcrEngine(
        shared_engine.model,
        shared_engine.tokenizer,
        generation=GenerationConfig(max_new_tokens=4000),
    )
    retry = engine.retry_generation_config()
    assert (retry.ngram_size, retry.ngram_window) == (20, 50)
    assert retry.max_new_tokens == 2000


def test_from_pretrained_loads_saved_folder(tokenizer_folder: Path, tmp_path: Path) -> None:
    model = make_model(seed=3)
    save_checkpoint(model, tmp_path, OcrConfig.tiny())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tokenizer_folder / name).read_bytes())
    pages = make_pages()[:1]
    options = PageOptions(mode="tiny", task="markdown")

    generation = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS)
    loaded = load_engine("deepseek-ocr", model_path=tmp_path, device="cpu")
    assert isinstance(loaded, DeepseekOcrEngine)
    loaded.generation = generation
    reference = DeepseekOcrEngine(model, load_tokenizer(tmp_path), generation=generation)
    expected = reference.run_pages(pages, options)

    assert loaded.name == "deepseek-ocr"
    assert loaded.run_pages(pages, options)[0].raw_text == expected[0].raw_text


def test_from_pretrained_missing_folder_names_setting(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="OCRQ_MODEL_PATH"):
        DeepseekOcrEngine.from_pretrained(tmp_path / "absent")


def test_random_checkpoint_folder_loads_as_engine(tmp_path: Path) -> None:
    folder = save_random_checkpoint(tmp_path / "tiny", seed=5)
    engine = load_engine("deepseek-ocr", model_path=folder)
    assert isinstance(engine, DeepseekOcrEngine)
    assert engine.model.config == OcrConfig.tiny()
    assert engine.tokenizer.image_id == 128815
