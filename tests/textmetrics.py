"""Character error rate for OCR tests."""

from __future__ import annotations


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def character_error_rate(expected: str, actual: str) -> float:
    """Return the Levenshtein distance over len(expected), after whitespace normalisation."""
    reference = normalize_whitespace(expected)
    hypothesis = normalize_whitespace(actual)
    if not reference:
        return float(bool(hypothesis))
    previous = list(range(len(hypothesis) + 1))
    for row, ref_char in enumerate(reference, start=1):
        current = [row]
        for column, hyp_char in enumerate(hypothesis, start=1):
            substitution = previous[column - 1] + (ref_char != hyp_char)
            current.append(min(previous[column] + 1, current[column - 1] + 1, substitution))
        previous = current
    return previous[-1] / len(reference)
