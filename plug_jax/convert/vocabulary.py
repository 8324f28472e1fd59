"""The vocabulary a converted checkpoint carries.

A released model is only usable with the tokenizer it was trained with, so every
``plug-convert`` import copies the input's vocabulary into the output and records it in
``metadata.json``, and every ``--to`` export copies it back out:

* found in the input directory (or the directory of an input file; for a ModelScope palm_v2
  folder also in the ``encoder_pth`` folder its ``config.json`` names), in this order:
  ``vocab.txt`` (BERT / BERT-Chinese WordPiece: StructBERT, PALM, PLUG and ModelScope's
  GPT-3 base/large, whose ``GPT3ForTextGeneration`` builds a ``BertTokenizer`` from it), then a
  SentencePiece model (``spiece.model``, ``sentencepiece.model``, ``tokenizer.model``,
  ``sentencepiece.bpe.model``); or named with ``plug-convert --vocab FILE``;
* copied to ``OUT/vocab/<name>`` and recorded as ``metadata["vocabulary"] = {"kind":
  "wordpiece" | "sentencepiece", "file": "vocab/<name>", "size": N, "do_lower_case": ...}``;
* a vocabulary with more tokens than the embedding table has rows is one error line (ids past
  the table would index nothing);
* a vocabulary plug_jax cannot read yet (the Jieba-BPE ``tokenizer.json`` of ModelScope's
  Megatron GPT-3) is named in the report and not carried.

:func:`carried_vocabulary` gives the ``seqio.Vocabulary`` of a converted checkpoint; plug-infer,
plug-eval and plug-export tokenize with it when ``MODEL_DIR`` is one, and
``local_task(vocabulary=DIR)`` trains with it (runs/converted.gin).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

WORDPIECE_NAMES = ("vocab.txt",)
SENTENCEPIECE_NAMES = ("spiece.model", "sentencepiece.model", "tokenizer.model",
                       "sentencepiece.bpe.model")
UNSUPPORTED_NAMES = {"tokenizer.json": "a HF tokenizers file (ModelScope's Megatron GPT-3 "
                                       "Jieba-BPE tokenizer)",
                     "vocab.json": "a byte-level BPE vocabulary (GPT-2)"}
VOCAB_SUBDIR = "vocab"


class VocabularyError(ValueError):
    """A vocabulary that cannot be carried (one-line message naming the fix)."""


def kind_of(path: str) -> str:
    name = os.path.basename(path)
    if name.endswith(".txt"):
        return "wordpiece"
    if name.endswith(".model"):
        return "sentencepiece"
    raise VocabularyError(f"vocabulary {path}: expected a WordPiece vocab.txt (*.txt) or a "
                          f"SentencePiece model (*.model); pass one of those with --vocab")


def find_vocabulary(input_path: str) -> tuple[str | None, str | None]:
    """``(path, note)``: the vocabulary file beside ``input_path``, or ``None`` and a note
    saying what was found instead (or nothing)."""
    folder = input_path if os.path.isdir(input_path) else os.path.dirname(
        os.path.abspath(input_path))
    # ModelScope palm_v2 keeps its vocab.txt in the encoder folder its config.json names
    sub = _encoder_subfolder(folder)
    for where in [folder] + ([os.path.join(folder, sub)] if sub else []):
        for name in WORDPIECE_NAMES + SENTENCEPIECE_NAMES:
            path = os.path.join(where, name)
            if os.path.isfile(path):
                return path, None
    for name, what in UNSUPPORTED_NAMES.items():
        if os.path.isfile(os.path.join(folder, name)):
            return None, (f"vocabulary not carried: {name} in {folder} is {what}, which "
                          f"plug_jax does not read yet; pass --vocab FILE with a vocab.txt or "
                          f"SentencePiece model if the model has one")
    return None, (f"no vocabulary carried: {folder} has no vocab.txt or SentencePiece model; "
                  f"pass --vocab FILE so plug-infer and plug-train tokenize as the original")


def load(path: str, *, do_lower_case: bool = True):
    """The ``seqio.Vocabulary`` of a vocabulary file (WordPiece ``.txt`` or SentencePiece
    ``.model``)."""
    kind = kind_of(path)
    if not os.path.isfile(path):
        raise VocabularyError(f"vocabulary {path} does not exist; fix: pass an existing "
                              f"vocab.txt or SentencePiece .model file")
    try:
        if kind == "wordpiece":
            from plug_jax.data.wordpiece import WordPieceVocabulary
            return WordPieceVocabulary(path, do_lower_case=do_lower_case)
        from plug_jax.data import configure_tensorflow
        configure_tensorflow()
        import seqio
        import sentencepiece as spm
        proc = spm.SentencePieceProcessor()
        if not proc.Load(path):  # pragma: no cover - Load raises on a bad file
            raise OSError("not a SentencePiece model")
        return seqio.SentencePieceVocabulary(path)
    except VocabularyError:
        raise
    except (OSError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VocabularyError(f"cannot read vocabulary {path} ({first}); fix: pass a BERT "
                              f"vocab.txt or a SentencePiece .model file") from None


def describe(vocab_path: str, *, do_lower_case: bool = True) -> dict:
    """The metadata entry for ``vocab_path`` (``file`` relative to the checkpoint)."""
    vocab = load(vocab_path, do_lower_case=do_lower_case)
    entry = {"kind": kind_of(vocab_path),
             "file": f"{VOCAB_SUBDIR}/{os.path.basename(vocab_path)}",
             "size": int(vocab.vocab_size)}
    if entry["kind"] == "wordpiece":
        entry["do_lower_case"] = bool(do_lower_case)
    return entry


def check_fits(entry: Mapping[str, Any], vocab_path: str, embedding_rows: int | None) -> None:
    """One error line when the vocabulary has more tokens than the embedding table rows."""
    if embedding_rows is None:
        return
    if int(entry["size"]) > int(embedding_rows):
        raise VocabularyError(
            f"vocabulary {vocab_path} has {entry['size']} tokens but the checkpoint's "
            f"embedding table has {embedding_rows} rows; fix: pass the vocabulary this "
            f"checkpoint was trained with (--vocab FILE)")


def entry_of(metadata: Mapping[str, Any]) -> dict | None:
    entry = metadata.get("vocabulary")
    return dict(entry) if isinstance(entry, Mapping) and entry.get("file") else None


def carried(checkpoint_dir: str) -> tuple[str, dict] | None:
    """``(file path, metadata entry)`` of the vocabulary a plug-convert checkpoint carries,
    or ``None`` (no ``metadata.json``, or none recorded); ``metadata.json`` is read once."""
    meta_path = os.path.join(checkpoint_dir, "metadata.json")
    if not os.path.isfile(meta_path):
        return None
    with open(meta_path, encoding="utf-8") as f:
        entry = entry_of(json.load(f))
    if entry is None:
        return None
    path = os.path.join(checkpoint_dir, entry["file"])
    if not os.path.isfile(path):
        raise VocabularyError(f"{meta_path} records vocabulary {entry['file']}, but {path} is "
                              f"missing; the checkpoint is incomplete: convert it again")
    return path, entry


def carried_path(checkpoint_dir: str) -> str | None:
    """Path of the vocabulary file a plug-convert checkpoint carries, or ``None``."""
    found = carried(checkpoint_dir)
    return found[0] if found else None


def carried_vocabulary(checkpoint_dir: str):
    """The ``seqio.Vocabulary`` a plug-convert checkpoint carries, or ``None``."""
    found = carried(checkpoint_dir)
    if found is None:
        return None
    path, entry = found
    return load(path, do_lower_case=bool(entry.get("do_lower_case", True)))


def _encoder_subfolder(out_dir: str) -> str | None:
    """The ``encoder_pth`` folder a ModelScope palm_v2 ``config.json`` names, if written."""
    path = os.path.join(out_dir, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        sub = json.load(f).get("encoder_pth")
    if isinstance(sub, str) and sub and os.path.isdir(os.path.join(out_dir, sub)):
        return sub
    return None


def export_to(checkpoint_dir: str, out_dir: str, fmt: str) -> list[str]:
    """Copies the vocabulary ``checkpoint_dir`` carries into a ``--to`` output: the file under
    its own name at the top of ``out_dir`` (where ``BertTokenizer.from_pretrained`` and
    ModelScope's preprocessors look; also into the ``encoder_pth`` folder of a palm_v2
    ``config.json``, where ``PalmForTextGeneration`` reads it), plus, for ``hf`` with a
    WordPiece vocabulary, a ``tokenizer_config.json`` naming ``BertTokenizer`` so ``AutoTokenizer`` loads it. Returns
    report lines."""
    found = carried(checkpoint_dir)
    if found is None:
        return [f"no vocabulary written: {checkpoint_dir} carries none (convert with a "
                f"vocab.txt beside the weights, or --vocab FILE)"]
    path, entry = found
    name = os.path.basename(path)
    shutil.copyfile(path, os.path.join(out_dir, name))
    written = [name]
    sub = _encoder_subfolder(out_dir)
    if sub:  # ModelScope palm_v2 builds its BertTokenizer from encoder_pth
        shutil.copyfile(path, os.path.join(out_dir, sub, name))
        written.append(f"{sub}/{name}")
    if fmt == "hf" and entry["kind"] == "wordpiece":
        tok_cfg = os.path.join(out_dir, "tokenizer_config.json")
        cfg = {}
        if os.path.isfile(tok_cfg):
            with open(tok_cfg, encoding="utf-8") as f:
                cfg = json.load(f)
        cfg.update({"tokenizer_class": "BertTokenizer",
                    "do_lower_case": bool(entry.get("do_lower_case", True)),
                    "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                    "cls_token": "[CLS]", "mask_token": "[MASK]"})
        model_cfg = os.path.join(out_dir, "config.json")
        model = {}
        if os.path.isfile(model_cfg):
            with open(model_cfg, encoding="utf-8") as f:
                model = json.load(f)
        if model.get("model_type") == "gpt2":
            # GPT-2 has no token types: without this the tokenizer's token_type_ids would be
            # added as embeddings of [PAD]. The special ids are the vocabulary's, not GPT-2's
            # 50256 (outside a BERT-Chinese table).
            cfg["model_input_names"] = ["input_ids", "attention_mask"]
            tokens = load(path, do_lower_case=bool(entry.get("do_lower_case", True)))
            model.update(bos_token_id=int(tokens.cls_id), eos_token_id=int(tokens.sep_id),
                         pad_token_id=int(tokens.pad_id))
            with open(model_cfg, "w", encoding="utf-8") as f:
                json.dump(model, f, indent=2, sort_keys=True)
                f.write("\n")
            written.append("config.json special token ids")
        with open(tok_cfg, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        written.append("tokenizer_config.json")
    return [f"vocabulary: {entry['kind']} {name} ({entry['size']} tokens) -> "
            f"{', '.join(written)}"]
