"""Prompt ids: BOS, the image slots, the task text, and the test tokenizer's id layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.deepseek_ocr.prompts import (
    IMAGE_TOKEN_ID,
    OCR_SPECIAL_TOKENS,
    TASK_PROMPTS,
    OcrTokenizer,
    build_prompt_ids,
    load_tokenizer,
    save_test_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> OcrTokenizer:
    return load_tokenizer(save_test_tokenizer(tmp_path_factory.mktemp("tokenizer")))


def test_test_tokenizer_places_ocr_specials_at_official_ids(tokenizer: OcrTokenizer) -> None:
    for offset, token in enumerate(OCR_SPECIAL_TOKENS):
        assert tokenizer.token_id(token) == IMAGE_TOKEN_ID + offset, token
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.image_id) == (0, 1, IMAGE_TOKEN_ID)


def test_prompt_starts_with_bos_then_image_slots(tokenizer: OcrTokenizer) -> None:
    ids = build_prompt_ids(tokenizer, "markdown", None, num_image_tokens=273)
    assert ids[0] == 0
    assert ids[1:274] == [IMAGE_TOKEN_ID] * 273
    assert ids[274] != IMAGE_TOKEN_ID
    assert ids.count(IMAGE_TOKEN_ID) == 273


def test_prompt_text_is_encoded_without_special_tokens(tokenizer: OcrTokenizer) -> None:
    ids = build_prompt_ids(tokenizer, "markdown", None, num_image_tokens=5)
    text_ids = ids[6:]
    assert tokenizer.decode(text_ids) == "\n<|grounding|>Convert the document to markdown."
    assert tokenizer.token_id("<|grounding|>") in text_ids
    assert ids.count(tokenizer.bos_id) == 1
    assert tokenizer.eos_id not in ids


@pytest.mark.parametrize("task", sorted(TASK_PROMPTS))
def test_every_task_round_trips_its_prompt(tokenizer: OcrTokenizer, task: str) -> None:
    target = "the title" if task == "locate" else None
    ids = build_prompt_ids(tokenizer, task, target, num_image_tokens=3)
    expected = TASK_PROMPTS[task].format(target=target).removeprefix("<image>")
    assert ids[:4] == [0, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID]
    assert tokenizer.decode(ids[4:]) == expected
    assert ids[-1] != tokenizer.eos_id


def test_locate_puts_target_between_ref_tags(tokenizer: OcrTokenizer) -> None:
    ids = build_prompt_ids(tokenizer, "locate", "red car", num_image_tokens=1)
    assert tokenizer.decode(ids[2:]) == "\nLocate <|ref|>red car<|/ref|> in the image."


@pytest.mark.parametrize("target", [None, "", "   "])
def test_locate_without_target_is_rejected(tokenizer: OcrTokenizer, target: str | None) -> None:
    with pytest.raises(ValueError, match="target"):
        build_prompt_ids(tokenizer, "locate", target, num_image_tokens=1)


def test_locate_target_with_special_token_is_rejected(tokenizer: OcrTokenizer) -> None:
    with pytest.raises(ValueError, match="plain text"):
        build_prompt_ids(tokenizer, "locate", "a <image> b", num_image_tokens=1)


def test_unknown_task_is_rejected(tokenizer: OcrTokenizer) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        build_prompt_ids(tokenizer, "translate", None, num_image_tokens=1)


def test_zero_image_tokens_is_rejected(tokenizer: OcrTokenizer) -> None:
    with pytest.raises(ValueError, match="num_image_tokens"):
        build_prompt_ids(tokenizer, "free", None, num_image_tokens=0)


def test_missing_tokenizer_file_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
