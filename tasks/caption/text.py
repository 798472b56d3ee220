"""Caption cleaning and the garbage test: what may be written as a training caption."""

from __future__ import annotations

import re
from collections import Counter

# Turn markers of the LLaVA-1.5 conversation format: text from a marker on is a new turn.
_TURN = re.compile(r"\b(?:USER|ASSISTANT)\s*:", re.IGNORECASE)


def clean(text: str, prompt: str = "") -> str:
    """Strip a prompt echo and any following turn, collapse whitespace."""
    prompt_text = " ".join(prompt.replace("<image>", " ").split())
    text = " ".join(text.split())
    if prompt_text and text.startswith(prompt_text):
        text = text[len(prompt_text):]
    # A reply that restates the assistant marker keeps what follows it; a new USER turn ends it.
    head, marker, tail = text.partition("ASSISTANT:")
    if marker and not _TURN.search(head):
        text = tail
    match = _TURN.search(text)
    if match:
        text = text[:match.start()]
    return " ".join(text.split()).strip(" \"'")


def garbage_reason(text: str, min_chars: int, max_repeat_share: float) -> str | None:
    """Why a cleaned caption must not be written, or None when it is usable."""
    if not text:
        return "empty"
    if len(text) < min_chars:
        return "too_short"
    letters = sum(c.isalpha() for c in text)
    if letters < 0.5 * len(text.replace(" ", "")):
        return "not_text"
    words = text.lower().split()
    if len(words) >= 4 and Counter(words).most_common(1)[0][1] > max_repeat_share * len(words):
        return "repetitive"
    return None
