"""StructBERT prompts for ``plug-infer``: text the way the ``'encoder'`` converter gives it.

A pre-training prompt is a sentence pair ``"S1\\tS2"`` (segments of one or more sentences,
newlines inside a segment) or, without a tab, ``"S1\\nS2"`` (split at the first newline), with
``[MASK]`` where a token is to be filled in. A classifier's prompt is one text.
"""
from __future__ import annotations

import numpy as np


def encode_in_document(vocabulary, text: str) -> list[int]:
    """``text``'s ids as they read inside a document, after a newline. SentencePiece marks
    the start of a text (``encode("The bag")`` begins with ``"▁The"``, the same words after
    a newline with ``"The"``); the StructBERT pre-training pairs are tokenized this way
    (tasks/structbert.py ``newline_first`` / ``drop_through_first_sep``), so prompts must be
    too."""
    ids = list(vocabulary.encode("\n" + text))
    return ids[ids.index(vocabulary.tokenizer.piece_to_id("\n")) + 1:]


def prompt_batch(vocabulary, prompts, *, classify: bool,
                 max_length: int = 128) -> tuple[dict, list]:
    """``(batch, masked positions per row)`` for ``prompts``: the ids and token types the
    ``'encoder'`` converter gives the same text in training."""
    size = vocabulary.vocab_size
    cls, mask = size - 2, size - 1
    sep = vocabulary.tokenizer.piece_to_id("\n")
    rows, types, masked = [], [], []
    for prompt in prompts:
        first, _, second = prompt.partition("\t" if "\t" in prompt else "\n")
        ids, tt = [cls], [0]
        for part, (text, t) in enumerate(((first, 0), (second, 1))):
            if part == 1:
                if classify or not second:
                    break
                ids.append(sep)
                tt.append(0)
            pieces = text.split("[MASK]")
            for k, piece in enumerate(pieces):
                # a classifier's text starts a document (as its reviews did in training);
                # pre-training segments and the text after a [MASK] read inside one
                in_doc = k > 0 or not classify
                enc = ([] if not piece else encode_in_document(vocabulary, piece) if in_doc
                       else list(vocabulary.encode(piece)))
                ids += enc + ([mask] if k < len(pieces) - 1 else [])
                tt += [t] * (len(enc) + (k < len(pieces) - 1))
        rows.append(ids[:max_length])
        types.append(tt[:max_length])
        masked.append([i for i, x in enumerate(ids[:max_length]) if x == mask])
    width = max(len(r) for r in rows)
    batch = {"encoder_input_tokens": np.zeros((len(rows), width), np.int32),
             "encoder_token_types": np.zeros((len(rows), width), np.int32)}
    for r, (ids, tt) in enumerate(zip(rows, types)):
        batch["encoder_input_tokens"][r, :len(ids)] = ids
        batch["encoder_token_types"][r, :len(tt)] = tt
    return batch, masked
