"""DeepseekOcrForCausalLM: batched vision encoding and filling the <image> slots."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from models.deepseek_ocr.config import OcrConfig
from models.deepseek_ocr.model import DeepseekOcrForCausalLM
from models.deepseek_ocr.preprocess import PreparedPage, prepare_page
from models.deepseek_ocr.random_weights import fill_random_weights

IMAGE_TOKEN_ID = OcrConfig().image_token_id


def make_model() -> DeepseekOcrForCausalLM:
    model = DeepseekOcrForCausalLM(OcrConfig.tiny())
    fill_random_weights(model, seed=1, std=0.2)
    return model.eval()


def make_page(width: int, height: int, mode: str, shade: int = 200) -> PreparedPage:
    image = Image.new("RGB", (width, height), (shade, shade, shade))
    image.paste((20, 20, 20), (width // 4, height // 4, width // 2, height // 3))
    return prepare_page(image, mode)


def test_vision_sequence_length_is_token_count() -> None:
    model = make_model()
    pages = [make_page(700, 1000, "gundam"), make_page(300, 200, "tiny")]
    sequences = model.encode_images(pages)
    assert [seq.shape for seq in sequences] == [(page.num_image_tokens, 32) for page in pages]
    assert pages[0].tiles is not None
    assert pages[1].tiles is None


def test_batched_vision_matches_one_page_at_a_time() -> None:
    """Views of three sizes (1024 and 512 global views, 640 tiles) go through in groups."""
    model = make_model()
    pages = [
        make_page(700, 1000, "gundam", 180),
        make_page(300, 200, "tiny", 220),
        make_page(500, 300, "tiny", 90),
    ]
    together = model.encode_images(pages)
    alone = [model.encode_images([page])[0] for page in pages]
    for batched, single in zip(together, alone, strict=True):
        difference = (batched - single).abs().max().item()
        assert difference < 1e-4, difference


def test_vision_stages_are_reported_in_order() -> None:
    stages: list[str] = []
    make_model().encode_images([make_page(300, 200, "tiny")], stages.append)
    assert stages == ["sam", "clip", "projector"]


def test_sequence_ends_with_separator_and_newlines() -> None:
    model = make_model()
    page = make_page(300, 200, "tiny")
    sequence = model.encode_images([page])[0]
    side = page.spec.global_grid_side
    assert torch.equal(sequence[-1], model.model.view_seperator)
    for row in range(side):
        assert torch.equal(sequence[row * (side + 1) + side], model.model.image_newline), row


def test_embed_prompt_fills_image_slots_in_order() -> None:
    model = make_model()
    vision = torch.randn(3, 32)
    input_ids = torch.tensor([0, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, 17, 5])
    with torch.no_grad():
        embeds = model.embed_prompt(input_ids, vision)
        text = model.model.embed_tokens(input_ids)
    assert torch.equal(embeds[1:4], vision)
    assert torch.equal(embeds[0], text[0])
    assert torch.equal(embeds[4:], text[4:])


@pytest.mark.parametrize("slots", [2, 4])
def test_embed_prompt_rejects_wrong_slot_count(slots: int) -> None:
    model = make_model()
    input_ids = torch.tensor([0, *[IMAGE_TOKEN_ID] * slots, 17])
    with pytest.raises(ValueError, match=f"{slots} <image> ids but the page has 3"):
        model.embed_prompt(input_ids, torch.randn(3, 32))


def test_step_returns_last_position_logits() -> None:
    model = make_model()
    token_ids = torch.tensor([[0, 5, 900, 17]])
    positions = torch.arange(4)[None]
    with torch.no_grad():
        last = model.step(token_ids, positions, None, None)
        every = model.step(token_ids, positions, None, None, all_positions=True)
    assert last.shape == (1, 1, 129280)
    assert every.shape == (1, 4, 129280)
    assert last.dtype == torch.float32
    assert torch.allclose(last[:, 0], every[:, -1], atol=1e-5)


def test_projector_width_must_match_decoder() -> None:
    tiny = OcrConfig.tiny()
    config = OcrConfig(
        sam=tiny.sam,
        clip=tiny.clip,
        projector=type(tiny.projector)(input_dim=64, n_embed=48),
        decoder=tiny.decoder,
    )
    with pytest.raises(ValueError, match="n_embed 48"):
        DeepseekOcrForCausalLM(config)


def test_views_split_into_passes_give_same_sequences() -> None:
    model = make_model()
    pages = [make_page(700, 1000, "gundam", 180), make_page(300, 200, "tiny", 220)]
    whole = model.encode_images(pages)
    model.max_views_per_pass = 2
    split = model.encode_images(pages)
    for expected, actual in zip(whole, split, strict=True):
        difference = (expected - actual).abs().max().item()
        assert difference < 1e-4, difference
