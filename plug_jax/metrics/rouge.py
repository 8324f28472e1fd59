"""ROUGE-L (Lin 2004, section 3.1): the longest common subsequence F-measure.

For a prediction ``X`` of ``n`` tokens and a reference ``Y`` of ``m`` tokens with
``LCS(X, Y)`` the length of their longest common subsequence (tokens in order, not
necessarily contiguous)::

    P = LCS / n,   R = LCS / m,   F = (1 + beta^2) P R / (R + beta^2 P)

with ``beta = 1`` (F1, what summarisation papers report as ROUGE-L) unless given. If either
side has no tokens, or nothing in common, all three are 0 (as Google's ``rouge_score``).

Tokenisation:

* ``zh``: one token per character; whitespace and punctuation (Unicode categories ``P*``
  and ``Z*``, e.g. ``，。【】（）``) are dropped; Latin letters and digits in Chinese text
  are characters too, lower-cased.
* ``en``: lower-cased words, runs of ``[a-z0-9]``; everything else separates them (as
  ``rouge_score``'s default tokenizer without stemming).

``corpus_rouge_l`` is the mean of the per-example F (the "average of sentence-level
scores" that ``rouge_score``'s aggregator reports), and :func:`lead_baseline` is the
extractive lead baseline: the first sentence of the document.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

LANGS = ("zh", "en")
_EN_WORD = re.compile(r"[a-z0-9]+")
# A sentence ends at 。！？ (zh) or at
# . ! ? followed by whitespace (en).
_SENTENCE_END = {"zh": re.compile(r"(?<=[。！？])"), "en": re.compile(r"(?<=[.!?])\s+")}


def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"ROUGE-L tokenisation for lang {lang!r} is not defined; use one of "
                         f"{list(LANGS)}")


def tokenize(text: str, lang: str) -> list[str]:
    """The ROUGE tokens of ``text`` (see the module docstring)."""
    _check_lang(lang)
    text = text.lower()
    if lang == "en":
        return _EN_WORD.findall(text)
    return [c for c in text
            if not c.isspace() and unicodedata.category(c)[0] not in ("P", "Z")]


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (O(len a * len b) time,
    O(min) memory dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str, lang: str = "zh",
            beta: float = 1.0) -> dict[str, float]:
    """``{"precision", "recall", "f"}`` of ``prediction`` against ``reference``."""
    pred, ref = tokenize(prediction, lang), tokenize(reference, lang)
    lcs = lcs_length(pred, ref)
    if lcs == 0:  # also: either side empty
        return {"precision": 0.0, "recall": 0.0, "f": 0.0}
    p, r = lcs / len(pred), lcs / len(ref)
    b2 = beta * beta
    return {"precision": p, "recall": r, "f": (1 + b2) * p * r / (r + b2 * p)}


def corpus_rouge_l(predictions: Sequence[str], references: Sequence[str],
                   lang: str = "zh") -> float:
    """Mean over examples of the ROUGE-L F of each prediction against its reference."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("corpus_rouge_l needs at least one example")
    return sum(rouge_l(p, r, lang)["f"] for p, r in zip(predictions, references)) / len(
        predictions)


def split_sentences(document: str, lang: str = "zh") -> list[str]:
    """The sentences of ``document`` (terminators kept, surrounding whitespace stripped)."""
    _check_lang(lang)
    return [s.strip() for s in _SENTENCE_END[lang].split(document) if s.strip()]


def lead_baseline(document: str, lang: str = "zh") -> str:
    """The first sentence of ``document`` (all of it if it has no sentence end; ``""`` for
    an empty document): the lead baseline of extractive summarisation."""
    sentences = split_sentences(document, lang)
    return sentences[0] if sentences else ""
