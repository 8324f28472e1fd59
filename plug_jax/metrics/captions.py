"""Corpus CIDEr-D and BLEU-4 of generated captions, with the COCO caption scorers
(``pycocoevalcap``: ``Cider``, ``Bleu``; the ``captions`` extra).

The COCO evaluation tokenizes with Stanford's PTB tokenizer (Java). Here the text is
lower-cased, punctuation is dropped and words are split on white space (Chinese: one token
per character, as the Shop World zh vocabulary), which is what the PTB tokenizer does to
plain captions like Shop World's. CIDEr-D's document frequencies come from the references
of the evaluated set, as in ``pycocoevalcap`` (so a score depends on the set, not only the
pair).
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_CJK = re.compile(r"([\u3400-\u9fff])")


def tokenize(text: str, lang: str = "en") -> str:
    """Lower-case, punctuation removed, space-separated tokens (Chinese: per character)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _PUNCT.sub(" ", text)
    if lang == "zh":
        text = _CJK.sub(r" \1 ", text)
    return " ".join(text.split())


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   lang: str = "en") -> dict[str, float]:
    """``{'cider', 'bleu4'}`` of ``predictions[i]`` against ``references[i]`` (one or more
    reference captions each), over the whole set."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:
        raise ImportError("caption metrics need pycocoevalcap: pip install "
                          "'plug_jax[captions]'") from e
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"caption_scores: {len(predictions)} predictions for "
                         f"{len(references)} reference lists; give one list per prediction")
    gts = {i: [tokenize(r, lang) for r in refs] for i, refs in enumerate(references)}
    res = {i: [tokenize(p, lang) or "<empty>"] for i, p in enumerate(predictions)}
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"cider": float(cider), "bleu4": float(bleu[3])}
