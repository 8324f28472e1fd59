"""Character spans of terms inside Shop World text (shared by the glossary and triple kinds)."""
from __future__ import annotations

import re
from typing import Optional

from plug_jax.data.shop_world import text
from plug_jax.data.shop_world.world import Product


def find_span(haystack: str, term: str, lang: str, lo: int = 0, hi: Optional[int] = None,
              taken: tuple[tuple[int, int], ...] = (), ignore_case: bool = False
              ) -> Optional[tuple[int, int]]:
    """First ``(start, end)`` of ``term`` in ``haystack[lo:hi]`` that overlaps no span in
    ``taken``; ``None`` if there is none.

    English terms match whole words only ("men" never matches inside "women", "hat" never
    inside "that"); Chinese terms match any substring.
    """
    if not term:
        return None
    hi = len(haystack) if hi is None else hi
    flags = re.IGNORECASE if ignore_case else 0
    pattern = re.escape(term) if lang == "zh" else rf"(?<!\w){re.escape(term)}(?!\w)"
    for m in re.compile(pattern, flags).finditer(haystack, lo, hi):
        s, e = m.span()
        if all(e <= a or s >= b for a, b in taken):
            return s, e
    return None


def description_of(p: Product, lang: str) -> dict:
    """The ``description`` kind output of ``p`` (identical to ``text_example``'s)."""
    rng = text.kind_rng(p.seed, p.split, p.index, "description")
    return text.KINDS["description"](p, rng, lang)


def title_of(p: Product, lang: str) -> str:
    rng = text.kind_rng(p.seed, p.split, p.index, "title")
    return text.KINDS["title"](p, rng, lang)["title"]


def sentence_offsets(desc: dict, lang: str) -> dict[str, tuple[int, int]]:
    """``slot -> (start, end)`` of each description sentence inside ``desc["description"]``."""
    sep = len(text.SENTENCE_JOIN[lang])
    out, pos = {}, 0
    for slot, sentence in zip(desc["description_slots"], desc["description_sentences"]):
        out[slot] = (pos, pos + len(sentence))
        pos += len(sentence) + sep
    return out
