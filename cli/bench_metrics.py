"""Text accuracy metrics shared by `ocrq bench` and the engine accuracy tests.

Both sides of a comparison go through `normalise_text` first, so markdown syntax, line breaks and
hyphenation at line ends do not count as errors:
- a leading markdown heading or list marker (`#`, `##`, `- `) is removed from each line;
- a word split across lines with a hyphen (`ex-` / `plain`) is joined (`explain`), because the
  ground-truth files keep the printed line breaks while engines may join paragraphs;
- every run of whitespace (form feeds included) becomes one space.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

_HEADING_OR_BULLET = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|[-*+][ \t]+)", re.MULTILINE)
_LINE_END_HYPHEN = re.compile(r"(\w)-[ \t]*\n\s*(\w)")
_WHITESPACE = re.compile(r"\s+")
_EDGE_PUNCTUATION = "\"'“”‘’«»„‚.,;:!?()[]{}<>"


def normalise_text(text: str) -> str:
    """Return `text` without markdown markers, line-end hyphenation or repeated whitespace."""
    text = _HEADING_OR_BULLET.sub("", text)
    text = _LINE_END_HYPHEN.sub(r"\1\2", text)
    return _WHITESPACE.sub(" ", text).strip()


def edit_distance(hypothesis: str, reference: str) -> int:
    """Return the Levenshtein distance (unit-cost insert, delete, substitute) between two strings.

    Each row of the dynamic programme is computed with numpy: substitutions and deletions
    elementwise, then insertions as a running minimum, which keeps 5,000-character pages well
    under a second.
    """
    if not hypothesis:
        return len(reference)
    if not reference:
        return len(hypothesis)

    reference_codes = np.frombuffer(reference.encode("utf-32-le"), dtype=np.uint32)
    columns = np.arange(len(reference) + 1, dtype=np.int64)
    previous = columns.copy()
    for row, char in enumerate(hypothesis, start=1):
        mismatch = (reference_codes != ord(char)).astype(np.int64)
        current = np.empty_like(previous)
        current[0] = row
        current[1:] = np.minimum(previous[1:] + 1, previous[:-1] + mismatch)
        # An insertion moves right along the row: d[j] = min over k <= j of d[k] + (j - k).
        current = np.minimum.accumulate(current - columns) + columns
        previous = current
    return int(previous[-1])


def character_error_rate(hypothesis: str, reference: str) -> float:
    """Return the CER of `hypothesis` against `reference`, both normalised first.

    The CER is the edit distance divided by the length of the normalised reference. An empty
    reference gives 0.0 for an empty hypothesis and 1.0 otherwise.
    """
    hypothesis = normalise_text(hypothesis)
    reference = normalise_text(reference)
    if not reference:
        return 0.0 if not hypothesis else 1.0
    return edit_distance(hypothesis, reference) / len(reference)


def word_f1(hypothesis: str, reference: str) -> float:
    """Return the bag-of-words F1 of `hypothesis` against `reference`, insensitive to word order.

    Words are the normalised text split on spaces, with quotes and punctuation stripped from
    their ends; case is kept. Two empty texts score 1.0.
    """
    hypothesis_words = _count_words(hypothesis)
    reference_words = _count_words(reference)
    if not hypothesis_words and not reference_words:
        return 1.0
    if not hypothesis_words or not reference_words:
        return 0.0

    matched = sum((hypothesis_words & reference_words).values())
    precision = matched / sum(hypothesis_words.values())
    recall = matched / sum(reference_words.values())
    if matched == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _count_words(text: str) -> Counter[str]:
    words = (word.strip(_EDGE_PUNCTUATION) for word in normalise_text(text).split(" "))
    return Counter(word for word in words if word)
