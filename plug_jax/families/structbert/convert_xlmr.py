"""XLM-R (and RoBERTa) checkpoints of ``transformers`` <-> the plug_jax ``structbert`` family.

XLM-R is a post-LN BERT encoder, so it converts into ``BertEncoder`` (``norm_placement='post'``)
with the machinery of :mod:`~plug_jax.families.structbert.convert_hf` (same per-layer entries
and kernel transforms, same shape checks). What differs from BERT:

* layouts: ``XLMRobertaModel`` (``embeddings.*``, ``encoder.layer.N.*``, ``pooler.dense.*``
  when saved with its pooling layer, the default) -> ``{encoder, pooler}``;
  ``XLMRobertaForSequenceClassification`` (``roberta.*`` without a pooler, plus
  ``classifier.dense`` and ``classifier.out_proj``) -> the ``{encoder, pooler, classifier}``
  params of ``StructBERTForSequenceClassification(config, num_labels=N)`` (what
  ``EncoderModel(objectives=('classify',), num_labels=N)`` trains). XLM-R's head is
  ``out_proj(dropout(tanh(dense(dropout(h[:, 0])))))`` on the ``<s>`` token and StructBERT's
  is ``classifier(dropout(tanh(pooler(h[:, 0]))))`` on position 0, so ``classifier.dense``
  is the ``pooler`` and ``classifier.out_proj`` the ``classifier``: the same function in
  inference (only the extra dropout on ``h[:, 0]`` in training differs).
  ``XLMRobertaForMaskedLM``'s ``lm_head.*`` is not converted (``drop_lm_head=True``, as
  ``plug-convert`` does, keeps the encoder and pooler).
* positions: RoBERTa numbers real tokens from ``padding_idx + 1 = 2`` (fairseq's
  ``make_positions``), so rows 0 and 1 of ``position_embeddings`` are never used by a real
  token. The import drops them (``pos_embed[i] = position_embeddings[i + 2]``) and the config
  gets ``max_position_embeddings - 2`` (514 -> 512 usable positions); the export writes them
  back as zeros (row 1 is the zero ``padding_idx`` row of real checkpoints; row 0 is unused).
* ``type_vocab_size`` 1 (feed all-zero ``token_type_ids``) and ``layer_norm_eps`` 1e-5 are
  read from the config.

Token ids and masks (the converter maps weights, not ids). The word-embedding rows keep
XLM-R's ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 (fairseq's dictionary: a
SentencePiece piece ``p`` is id ``p + 1``; ``sentencepiece.bpe.model`` alone gives the raw
piece ids, which are not these). The caller must

* feed the ids of ``XLMRobertaTokenizer`` unchanged, with an explicit ``attention_mask``
  (1 real, 0 padding) -- plug_jax's own default, pad id 0 with a mask ``ids > 0``
  (``EncoderModel.outputs``), would mask XLM-R's ``<s>`` (id 0) and attend to its pads;
* pad on the right: the default positions ``0..len-1`` then read the rows XLM-R reads as
  ``2..len+1``; for left padding pass ``positions = max(cumsum(mask) - 1, 0)`` (XLM-R
  numbers real tokens from where they start). Outputs at padded positions differ (XLM-R
  gives pads position row 1) and are meaningless in both;
* keep ``token_type_ids`` all 0 (``type_vocab_size`` 1).

With ``pad_to_zero=True`` the import swaps word-embedding rows 0 and 1 instead, so that id 0
is ``<pad>`` and id 1 is ``<s>``: then plug_jax's convention holds (``EncoderModel`` with its
``ids > 0`` mask gives XLM-R's outputs) for ids mapped with :func:`xlmr_ids_to_plug` (the
swap, its own inverse). Export with the same ``pad_to_zero`` to undo it.

``model_type 'roberta'`` checkpoints (``RobertaModel`` / ``RobertaForSequenceClassification``,
same layout) are accepted too. Files are read through :mod:`plug_jax.convert.io` only
(safetensors, or ``torch.load(weights_only=True)``); torch and transformers load lazily.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.structbert.config import StructBERTConfig
from plug_jax.families.structbert.convert_hf import (_check_encoder_config, _check_leftover,
                                                     _check_shapes, _dense, _hf_config_dict,
                                                     _hf_encoder_kwargs, _ln, _normalise_keys,
                                                     _read_checkpoint, _read_layers, _reader,
                                                     _transforms, _write_layers)

MODEL_TYPES = ("xlm-roberta", "roberta")
PADDING_IDX = 1  # XLM-R's <pad> (and RoBERTa's); positions start at PADDING_IDX + 1
_LAYOUT = "XLM-R"
_WHAT = "XLMRobertaModel / XLMRobertaForSequenceClassification"


# ------------------------------------------------------------------------------ config
def _padding_idx(c: Mapping) -> int:
    pad = c.get("pad_token_id", PADDING_IDX)
    return PADDING_IDX if pad is None else int(pad)


def config_from_xlmr(hf_config: Any, *, scan_layers: bool = True,
                     **overrides) -> StructBERTConfig:
    """``StructBERTConfig`` of a ``transformers`` ``XLMRobertaConfig`` / ``RobertaConfig`` or
    of its ``config.json`` dict: post-LN, ``max_position_embeddings`` less the
    ``pad_token_id + 1`` reserved rows, ``type_vocab_size`` and ``layer_norm_eps`` as given
    (1 and 1e-5 in the released models). ``overrides`` replace any field."""
    api = "config_from_xlmr"
    c = _hf_config_dict(hf_config)
    model_type = c.get("model_type")
    if model_type not in MODEL_TYPES:
        hint = ("; BERT / Megatron-BERT checkpoints convert with plug-convert --source hf "
                "(convert_hf.load_bert_checkpoint)"
                if model_type in (None, "bert", "megatron-bert") else "")
        raise ValueError(f"{api}: model_type {model_type!r} is not XLM-R (supported: "
                         f"{', '.join(MODEL_TYPES)}){hint}")
    act = _check_encoder_config(c, api)
    offset = _padding_idx(c) + 1
    rows = int(c.get("max_position_embeddings", 512))
    if rows <= offset:
        raise ValueError(f"{api}: max_position_embeddings {rows} leaves no position after the "
                         f"{offset} rows RoBERTa reserves (pad_token_id + 1)")
    kw = dict(
        vocab_size=int(c.get("vocab_size", 30522)),
        num_layers=int(c.get("num_hidden_layers", 12)),
        num_heads=int(c.get("num_attention_heads", 12)),
        hidden_size=int(c.get("hidden_size", 768)),
        ffn_size=int(c.get("intermediate_size", 3072)),
        max_position_embeddings=rows - offset,
        type_vocab_size=int(c.get("type_vocab_size", 2)),
        layer_norm_epsilon=float(c.get("layer_norm_eps", 1e-12)),
        activation=act,
        norm_placement="post",
        dropout_rate=float(c.get("hidden_dropout_prob", 0.1)),
        attention_dropout_rate=float(c.get("attention_probs_dropout_prob", 0.1)),
        initializer_range=float(c.get("initializer_range", 0.02)),
        scan_layers=scan_layers,
    )
    kw.update(overrides)
    return StructBERTConfig(**kw)


def to_xlmr_config(config: StructBERTConfig, num_labels: int | None = None, *,
                   padding_idx: int = PADDING_IDX):
    """The ``transformers.XLMRobertaConfig`` of a post-LN ``config`` (``max_position_embeddings``
    plus the ``padding_idx + 1`` reserved rows; ``num_labels`` for the classifier)."""
    import transformers

    if config.pre_norm:
        raise ValueError("to_xlmr_config: config.norm_placement is 'pre'; XLM-R is post-LN "
                         "(export pre-LN params with to_megatron_bert_state_dict)")
    kw = _hf_encoder_kwargs(config, "to_xlmr_config")
    kw["max_position_embeddings"] += padding_idx + 1
    if num_labels is not None:
        kw["num_labels"] = int(num_labels)
    return transformers.XLMRobertaConfig(pad_token_id=padding_idx, bos_token_id=0,
                                         eos_token_id=2, **kw)


def xlmr_ids_to_plug(ids):
    """XLM-R token ids -> the ids of a ``pad_to_zero=True`` conversion: 0 (``<s>``) and 1
    (``<pad>``) swap places, every other id stays. Its own inverse. numpy / jax int arrays."""
    return ids + (ids == 0) - (ids == 1)


# --------------------------------------------------------------------- key layouts
def _swap01(w: np.ndarray) -> np.ndarray:
    w = np.array(w, copy=True)
    w[[0, 1]] = w[[1, 0]]
    return w


def _xlmr_transforms(cfg: StructBERTConfig, padding_idx: int,
                     pad_to_zero: bool) -> dict[str, tuple[Callable, Callable]]:
    """BERT's transforms plus ``pos`` (drop / restore the reserved position rows) and
    ``words`` (the word embeddings, rows 0 and 1 swapped with ``pad_to_zero``)."""
    off = padding_idx + 1
    words = (_swap01, _swap01) if pad_to_zero else (lambda x: x, lambda x: x)
    return {**_transforms(cfg), "words": words,
            "pos": (lambda w: w[off:],
                    lambda t: np.concatenate([np.zeros((off, t.shape[-1]), t.dtype), t]))}


def _entries() -> dict[str, list[tuple[str, str, str]]]:
    """Non-layer entries by part (keys without the ``roberta.`` prefix)."""
    enc = [("embeddings.word_embeddings.weight", "encoder/word_embed/embedding", "words"),
           ("embeddings.position_embeddings.weight", "encoder/pos_embed/embedding", "pos"),
           ("embeddings.token_type_embeddings.weight", "encoder/type_embed/embedding", "copy")]
    enc += _ln("embeddings.LayerNorm", "encoder/embed_norm")
    return {"encoder": enc, "pooler": _dense("pooler.dense", "pooler"),
            "classifier": (_dense("classifier.dense", "pooler")
                           + _dense("classifier.out_proj", "classifier"))}


# ------------------------------------------------------------------------------ import
def from_xlmr_state_dict(state_dict: Mapping, config: StructBERTConfig, *, strict: bool = True,
                         padding_idx: int = PADDING_IDX, pad_to_zero: bool = False,
                         drop_lm_head: bool = False, report: list | None = None) -> dict:
    """Params from an ``XLMRobertaModel`` or ``XLMRobertaForSequenceClassification`` state
    dict (torch tensors or numpy arrays, with or without the ``roberta.`` prefix).

    Returns plain nested dicts of float32 numpy arrays: ``{encoder[, pooler]}`` for the base
    model (``params['encoder']`` alone is the ``params`` of ``BertEncoder(config)``),
    ``{encoder, pooler, classifier}`` (``StructBERTForSequenceClassification``) for the
    classifier, whose ``num_labels`` is ``params['classifier']['kernel'].shape[-1]``.
    ``config`` from :func:`config_from_xlmr` (post-LN; scanned or not per ``scan_layers``).
    ``strict``: raise on tensors that are not used. ``drop_lm_head``: skip
    ``XLMRobertaForMaskedLM``'s ``lm_head.*`` (the hub's pre-trained ``xlm-roberta-*``
    checkpoints have it) even when ``strict``, adding a line to ``report`` if given.
    ``pad_to_zero``: see the module docstring (token ids).
    """
    api = "from_xlmr_state_dict"
    if config.pre_norm:
        raise ValueError(f"{api}: config.norm_placement is 'pre'; XLM-R is post-LN: build the "
                         f"config with config_from_xlmr")
    bert = sorted(k for k in state_dict if k.startswith(("bert.", "cls.")))
    if bert:
        raise ValueError(f"{api}: {bert[0]!r} is a BERT tensor, not XLM-R's; convert BERT "
                         f"checkpoints with convert_hf.from_bert_state_dict (plug-convert "
                         f"--source hf)")
    sd = _normalise_keys(state_dict, "roberta.")
    key = "embeddings.position_embeddings.weight"
    off = padding_idx + 1
    if key in sd and int(np.shape(sd[key])[0]) != config.max_position_embeddings + off:
        rows = int(np.shape(sd[key])[0])
        raise ValueError(f"{api}: {key} has {rows} rows; XLM-R reserves the first {off} "
                         f"(padding_idx + 1), so the config needs max_position_embeddings="
                         f"{rows - off}, not {config.max_position_embeddings} (config_from_xlmr "
                         f"subtracts them; is this a BERT checkpoint?)")
    take, used = _reader(sd, _xlmr_transforms(config, padding_idx, pad_to_zero), api, _LAYOUT)
    lm_head = sorted(k for k in sd if k.startswith("lm_head."))
    if drop_lm_head and lm_head:
        used.update(lm_head)
        if report is not None:
            report.append(f"not converted: {len(lm_head)} lm_head.* tensors "
                          f"(XLMRobertaForMaskedLM's MLM head); the encoder is")
    has_cls = any(k.startswith("classifier.") for k in sd)
    if has_cls and "pooler.dense.weight" in sd:
        raise ValueError(f"{api}: the state dict has both pooler.dense and classifier.*; "
                         f"StructBERTForSequenceClassification has one pooler: drop one")
    groups = _entries()
    parts = ["encoder"] + (["classifier"] if has_cls else
                           ["pooler"] if "pooler.dense.weight" in sd else [])
    flat = {path: take(k, kind) for part in parts for k, path, kind in groups[part]}
    params = cio.unflatten_tree(flat)
    params["encoder"]["stack"] = _read_layers(take, config, False)
    _check_leftover(sd, used, api, strict, f"an {_WHAT} of this config (num_layers="
                    f"{config.num_layers})",
                    {"lm_head.": " (XLMRobertaForMaskedLM's head is not converted: "
                                 "drop_lm_head=True skips it)"})
    num_labels = flat["classifier/kernel"].shape[-1] if has_cls else None
    _check_shapes(config, params, api, num_labels)
    return params


def load_xlmr_checkpoint(path: str | os.PathLike, config: Any = None, *,
                         scan_layers: bool = True, strict: bool = True,
                         pad_to_zero: bool = False, drop_lm_head: bool = False,
                         report: list | None = None,
                         **overrides) -> tuple[StructBERTConfig, dict]:
    """``(config, params)`` from an XLM-R checkpoint on disk: a ``save_pretrained`` directory
    (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin`` / sharded index) or one
    weights file with ``config.json`` beside it. ``config``: an HF config, a dict or a JSON
    path, when it is not next to the weights. ``overrides`` go to :func:`config_from_xlmr`;
    the other keywords to :func:`from_xlmr_state_dict`."""
    api = "load_xlmr_checkpoint"
    config, sd = _read_checkpoint(path, config, api, ("config.json",), "an XLMRobertaConfig")
    c = _hf_config_dict(config)
    cfg = config_from_xlmr(c, scan_layers=scan_layers, **overrides)
    return cfg, from_xlmr_state_dict(sd, cfg, strict=strict, padding_idx=_padding_idx(c),
                                     pad_to_zero=pad_to_zero, drop_lm_head=drop_lm_head,
                                     report=report)


# ------------------------------------------------------------------------------ export
def to_xlmr_state_dict(config: StructBERTConfig, params: Mapping, *, as_numpy: bool = False,
                       strict: bool = True, padding_idx: int = PADDING_IDX,
                       pad_to_zero: bool = False) -> dict:
    """An XLM-R state dict (float32 torch tensors, or numpy with ``as_numpy``) from post-LN
    params (scanned or not, boxed or not): ``{encoder, pooler, classifier}`` gives
    ``XLMRobertaForSequenceClassification``'s (``roberta.`` prefix, ``classifier.dense`` /
    ``classifier.out_proj``), ``{encoder[, pooler]}`` (or ``BertEncoder`` params) gives
    ``XLMRobertaModel``'s. The reserved position rows are written as zeros. Other parts
    (StructBERT's ``mlm_head`` / ``sentence_head``) raise unless ``strict=False`` drops them.
    ``pad_to_zero``: as given to the import."""
    api = "to_xlmr_state_dict"
    if config.pre_norm:
        raise ValueError(f"{api}: config.norm_placement is 'pre'; XLM-R is post-LN (export "
                         f"pre-LN params with to_megatron_bert_state_dict)")
    p = cio.unbox_params(params)
    if "encoder" not in p and "word_embed" in p:  # BertEncoder(config) params
        p = {"encoder": p}
    extra = sorted(set(p) - {"encoder", "pooler", "classifier"})
    if extra and strict:
        raise ValueError(f"{api}: params have {extra[0]!r}, which {_WHAT} has no place for; "
                         f"pass strict=False to drop it (or export with to_bert_state_dict)")
    has_cls = "classifier" in p
    if has_cls and "pooler" not in p:
        raise ValueError(f"{api}: params have a classifier but no pooler (XLM-R's "
                         f"classifier.dense); they are not StructBERTForSequenceClassification's")
    flat = {k: np.asarray(v, np.float32) for k, v in cio.flatten_tree(p).items()
            if not k.startswith("encoder/stack/")}
    tf = _xlmr_transforms(config, padding_idx, pad_to_zero)
    prefix = "roberta." if has_cls else ""
    out: dict[str, np.ndarray] = {}
    groups = _entries()
    for part in ("encoder", "classifier" if has_cls else "pooler"):
        for key, path, kind in groups[part]:
            if path not in flat:
                if part == "encoder":
                    raise ValueError(f"{api}: params lack {path}")
                continue  # XLMRobertaModel saved without its pooler
            name = key if key.startswith("classifier.") else prefix + key
            out[name] = tf[kind][1](flat[path])
    out.update(_write_layers(config, p["encoder"]["stack"], prefix, False, tf, api))
    out = {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
    if as_numpy:
        return out
    import torch
    return {k: torch.from_numpy(v) for k, v in out.items()}
