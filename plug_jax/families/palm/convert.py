"""PALM checkpoints (AliceMind ``PALM`` / ModelScope ``palm_v2``) <-> the ``palm`` family.

Key layouts, read from the released code (``alibaba/AliceMind`` ``PALM/models/model_builder.py``,
``PALM/models/decoder.py``, ``PALM/models/neural.py``; ``modelscope/modelscope``
``modelscope/models/nlp/palm_v2/text_generation.py``, class ``AbsSummarizer``):

* encoder, a ``transformers`` ``BertModel`` / ``RobertaModel``: ``bert.model.*`` in AliceMind
  (its ``Bert`` wrapper holds the model as ``.model``), ``bert.*`` in ModelScope; BERT names
  below that (``embeddings.{word,position,token_type}_embeddings``, ``embeddings.LayerNorm``,
  ``encoder.layer.N.attention.self.{query,key,value}``, ``attention.output.{dense,LayerNorm}``,
  ``intermediate.dense``, ``output.{dense,LayerNorm}``, ``pooler.dense``);
* decoder (PreSumm ``TransformerDecoder``): ``decoder.embeddings.weight``,
  ``decoder.transformer_layers.N.{self_attn,context_attn}.{linear_query,linear_keys,
  linear_values,final_linear}``, ``...layer_norm_1`` (before self-attention), ``...layer_norm_2``
  (before context attention), ``...feed_forward.{layer_norm,w_1,w_2}``, ``decoder.layer_norm``;
  buffers ``decoder.pos_emb.pe`` and ``decoder.transformer_layers.N.mask`` (ignored on import,
  not written on export: both codes rebuild them and load with ``strict=False``);
* generator, tied to ``decoder.embeddings.weight`` and with a bias: AliceMind
  ``generator.0.{weight,bias}`` (``nn.Sequential(Linear, LogSoftmax)``, the default
  ``-p_gen false`` and the released ``palm.en.base``), AliceMind ``-p_gen true``
  ``generator.gen_proj.{weight,bias}`` + ``generator.prob_proj.{weight,bias}``
  (``CopyGenerator``: gate ``Linear(2 * d, 1)`` over ``[context; decoder state]``), ModelScope
  ``generator.dense.{weight,bias}`` (``PalmPointerGenerator``; no copy head).

Checkpoint files may wrap the state dict (``{'model': sd}``) or prefix it (``model.``,
``palm.``, ``module.``); both are unwrapped, as ModelScope's ``_unwrap_checkpoint`` does.

What ModelScope's trainer saves, ``torch.save(PalmForTextGeneration.state_dict())``
(``modelscope.utils.checkpoint.save_checkpoint(with_meta=False)`` through
``CheckpointProcessor.save_model_state``), holds the summarizer under ``palm.`` and, from
``PalmForTextGeneration.loss`` (``NMTLossCompute``), ``loss.generator.dense.{weight,bias}``
(the same ``PalmPointerGenerator`` module as ``palm.generator``, listed twice by
``state_dict``) and, with ``label_smoothing > 0``, ``loss.criterion.one_hot``
(``LabelSmoothingLoss``'s smoothed target row). ``AbsSummarizer`` loads such a file with
``strict=False``; here those tensors are skipped by name (:data:`TRAINING_ONLY`; the
``loss.generator`` copies must equal ``generator.dense``) and reported, as are the buffers;
any other tensor that is not part of the model is still an error.

``config.json`` (``modelscope.models.nlp.palm_v2.configuration.PalmConfig``: ``encoder``,
``encoder_pth``, ``dec_layers``, ``dec_hidden_size``, ``dec_heads``, ``dec_ff_size``,
``dec_dropout``, ``max_pos``...) and the encoder's ``config.json`` in ``encoder_pth``
(relative to the model dir, as ``PalmPreTrainedModel._from_pretrained`` joins it) give the
sizes: :func:`config_from_modelscope`. Export writes such a dir (:func:`save_modelscope_dir`,
``plug-convert --family palm --to modelscope``): ``config.json`` (``model_type`` ``palm``, the
sizes, and the loss / beam-search fields at ModelScope's defaults), ``encoder_pth`` ``"bert"``
(or ``"roberta"`` for a ``position_offset > 0`` encoder) holding the encoder's
``BertConfig`` / ``RobertaConfig`` ``config.json``, ``configuration.json`` (``palm-v2``,
``text-generation``: what ``Model.from_pretrained`` dispatches on) and ``pytorch_model.bin``;
:func:`modelscope_configs` builds the two configs and refuses, in one line, a config that
``AbsSummarizer`` would run differently. The ``vocab.txt`` ``PalmForTextGeneration`` reads
from ``encoder_pth`` is copied there by plug-convert from the vocabulary the checkpoint carries
(:mod:`plug_jax.convert.vocabulary`). tests/convert/test_palm.py loads the dir with
modelscope's own ``PalmForTextGeneration`` (reference env) and compares log-probabilities.

Mapping onto ``PalmModel``: ``nn.Linear`` ``[out, in]`` weights are transposed; attention
matrices are split into heads (``[embed, heads, kv]`` / ``[heads, kv, embed]``); decoder layers
``0 .. L-2`` go to ``decoder/`` (scanned or not, from ``config.scan_layers``) and layer ``L-1``
to ``decoder_last/``. Parts that do not match one-to-one:

* copy gate: ours may also see the decoder input embedding (``copy_gate_uses_input``); the
  released ``prob_proj`` fills the ``[context; state]`` rows and the input rows are zero
  (the same gate). A checkpoint without a copy head (``palm.en.base``, every ModelScope one)
  loaded into ``copy=True`` gets a fresh gate: zero kernel, bias ``copy_gate_bias``
  (p_gen = sigmoid(bias); the copy attention itself is the loaded last layer's
  cross-attention). For the released model's exact outputs use ``copy=False``.
* export of a ``copy=True`` model needs the AliceMind layout (ModelScope has no copy head)
  and zero input-embedding rows in the gate.
* ``share_embeddings=True`` models export the encoder table as ``decoder.embeddings.weight``;
  on import that tensor must equal the encoder's word embeddings.
* the released code's ``CopyGenerator`` applies a softmax to the scattered copy weights; ours
  uses them as they are (see ``plug_jax/families/palm/network.py``).

Weights files are read only through :mod:`plug_jax.convert.io` (safetensors or
``torch.load(weights_only=True)``). An AliceMind training checkpoint also pickles the argparse
options and optimizers (``{'model', 'opt', 'optims'}``): ``weights_only`` refuses it; re-save
``checkpoint['model']`` alone in an environment you trust.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.structbert.convert_hf import _dense, _layer_entries, _ln, _transforms
from plug_jax.families.palm.config import PalmConfig

LAYOUTS = ("alicemind", "modelscope")
# Tensors of ModelScope's PalmForTextGeneration.state_dict() that are not part of the model
# (name after unwrapping -> why); skipped and reported. loss.generator.* must equal the
# generator.* tensor named here.
TRAINING_ONLY = {
    "loss.criterion.one_hot": "label-smoothing target row of PalmForTextGeneration.loss "
                              "(NMTLossCompute's LabelSmoothingLoss), training only",
    "loss.generator.dense.weight": "generator.dense.weight",
    "loss.generator.dense.bias": "generator.dense.bias",
}
_ENC_PREFIX = {"alicemind": "bert.model.", "modelscope": "bert."}
_WRAPPERS = ("module.", "palm.", "model.")
_BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids", "pos_emb.pe")


def _is_buffer(key: str) -> bool:
    if key.endswith(_BUFFER_SUFFIXES):
        return True
    parts = key.split(".")  # decoder.transformer_layers.N.mask
    return len(parts) == 4 and parts[:2] == ["decoder", "transformer_layers"] and \
        parts[3] == "mask"


def _few(keys, n: int = 3) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


# ------------------------------------------------------------------------- entries
def _decoder_layer_entries() -> list[tuple[str, str, str]]:
    """(key relative to ``decoder.transformer_layers.N.``, path relative to the layer,
    transform)."""
    e = _ln("layer_norm_1", "self_attn_norm") + _ln("layer_norm_2", "cross_attn_norm")
    for theirs, ours in (("self_attn", "self_attn"), ("context_attn", "cross_attn")):
        for t, o in (("linear_query", "query"), ("linear_keys", "key"),
                     ("linear_values", "value")):
            e += _dense(f"{theirs}.{t}", f"{ours}/{o}", "qkv_w", "qkv_b")
        e += _dense(f"{theirs}.final_linear", f"{ours}/out", "out_w")
    e += _ln("feed_forward.layer_norm", "mlp_norm")
    e += _dense("feed_forward.w_1", "mlp/wi") + _dense("feed_forward.w_2", "mlp/wo")
    return e


def _encoder_top_entries(cfg: PalmConfig) -> list[tuple[str, str, str]]:
    """(key relative to the encoder prefix, param path, transform)."""
    e = [("embeddings.word_embeddings.weight", "encoder/word_embed/embedding", "copy"),
         ("embeddings.position_embeddings.weight", "encoder/pos_embed/embedding", "copy"),
         ("embeddings.token_type_embeddings.weight", "encoder/type_embed/embedding", "copy")]
    if cfg.norm_placement == "post":
        e += _ln("embeddings.LayerNorm", "encoder/embed_norm")
    else:  # pre-LN encoders (Megatron-BERT names)
        e += _ln("encoder.ln", "encoder/final_norm")
    if cfg.use_pooler:
        e += _dense("pooler.dense", "pooler")
    return e


def _generator_keys(layout: str, copy: bool) -> tuple[str, str]:
    if layout == "modelscope":
        return "generator.dense.weight", "generator.dense.bias"
    if copy:
        return "generator.gen_proj.weight", "generator.gen_proj.bias"
    return "generator.0.weight", "generator.0.bias"


def _check_config(config: PalmConfig, api: str) -> None:
    if not isinstance(config, PalmConfig):
        raise TypeError(f"{api}: expected a PalmConfig, got {type(config).__name__}")


# -------------------------------------------------------------------------- config
_MS_ENCODERS = ("bert", "zh_bert", "roberta")


def config_from_modelscope(model_dir: str | os.PathLike, **overrides) -> PalmConfig:
    """``PalmConfig`` of a ModelScope palm_v2 model dir: its ``config.json`` (ModelScope's
    ``PalmConfig``) and the encoder's ``config.json`` in ``encoder_pth`` (joined to the model
    dir, as ``PalmPreTrainedModel._from_pretrained`` does; a ``BertConfig`` or
    ``RobertaConfig``). The decoder's fixed parts come from ``palm_v2/text_generation.py``:
    LayerNorm epsilon 1e-6, ``gelu_new``, a separate decoder table (``share_emb`` copies the
    encoder's at initialisation), no copy head. ``overrides`` replace any field."""
    from plug_jax.families.structbert.convert_hf import HF_ACTIVATIONS

    api = "palm config_from_modelscope"
    d = os.fspath(model_dir)
    path = os.path.join(d, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{api}: no config.json in {d} (ModelScope's PalmConfig); pass "
                         f"--preset for the sizes")
    c = cio.read_json(path)
    if c.get("model_type", "palm") != "palm":
        raise ValueError(f"{api}: {path} has model_type {c['model_type']!r}, not ModelScope's "
                         f"'palm' (palm_v2 PalmConfig)")
    encoder = c.get("encoder", "roberta")  # ModelScope PalmConfig's defaults
    if encoder not in _MS_ENCODERS:
        raise ValueError(f"{api}: {path}: encoder {encoder!r} is not one of "
                         f"{', '.join(_MS_ENCODERS)}")
    enc_pth = c.get("encoder_pth", "roberta-base")
    enc_path = os.path.join(d, enc_pth, "config.json")
    if not os.path.isfile(enc_path):
        raise ValueError(f"{api}: {path} names encoder_pth {enc_pth!r}, but {enc_path} does "
                         f"not exist (AbsSummarizer reads the encoder's config there)")
    b = cio.read_json(enc_path)
    pet = b.get("position_embedding_type", "absolute") or "absolute"
    act = b.get("hidden_act", "gelu")
    if pet != "absolute" or act not in HF_ACTIVATIONS:
        raise ValueError(f"{api}: {enc_path}: position_embedding_type {pet!r} / hidden_act "
                         f"{act!r} is not supported (absolute positions; "
                         f"{', '.join(sorted(HF_ACTIVATIONS))})")
    hidden = int(b.get("hidden_size", 768))
    if int(c.get("dec_hidden_size", 768)) != hidden:
        raise ValueError(f"{api}: dec_hidden_size {c.get('dec_hidden_size', 768)} differs from "
                         f"the encoder's hidden_size {hidden}; palm_v2 needs them equal")
    roberta = encoder == "roberta"
    max_pos = int(b.get("max_position_embeddings", 514 if roberta else 512))
    if int(c.get("max_pos", 512)) > 512:  # AbsSummarizer enlarges the position table
        max_pos = int(c["max_pos"])
    kw = dict(
        vocab_size=int(b.get("vocab_size", 50265 if roberta else 30522)),
        num_encoder_layers=int(b.get("num_hidden_layers", 12)),
        num_heads=int(b.get("num_attention_heads", 12)), hidden_size=hidden,
        ffn_size=int(b.get("intermediate_size", 4 * hidden)), max_position_embeddings=max_pos,
        # RoBERTa numbers positions from padding_idx + 1, BERT from 0
        position_offset=int(b.get("pad_token_id", 1)) + 1 if roberta else 0,
        type_vocab_size=int(b.get("type_vocab_size", 1 if roberta else 2)),
        layer_norm_epsilon=float(b.get("layer_norm_eps", 1e-5 if roberta else 1e-12)),
        activation=HF_ACTIVATIONS[act],
        dropout_rate=float(b.get("hidden_dropout_prob", 0.1)),
        attention_dropout_rate=float(b.get("attention_probs_dropout_prob", 0.1)),
        initializer_range=float(b.get("initializer_range", 0.02)),
        num_decoder_layers=int(c.get("dec_layers", 12)),
        num_decoder_heads=int(c.get("dec_heads", 8)),
        decoder_ffn_size=int(c.get("dec_ff_size", 3072)),
        decoder_dropout_rate=float(c.get("dec_dropout", 0.2)),
        decoder_layer_norm_epsilon=1e-6, decoder_activation="gelu_tanh",
        share_embeddings=False, use_pooler=True, copy=False)
    kw.update(overrides)
    return PalmConfig(**kw)


# -------------------------------------------------------------------------- import
def _normalise(state_dict: Mapping, names: dict | None = None) -> tuple[dict, str]:
    """Unwraps ``{'model': sd}`` and ``model.`` / ``palm.`` / ``module.`` prefixes, maps
    ``LayerNorm.gamma/beta`` to ``weight/bias`` and detects the layout. ``names``, when
    given, gets ``{normalised name: the file's name}``."""
    sd: Any = state_dict
    for wrapper in ("model", "palm"):  # {'model': sd, 'opt': ..., 'optims': ...}
        if isinstance(sd, Mapping) and isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
    out: dict[str, Any] = {}
    for k, v in sd.items():
        original = k
        changed = True
        while changed:
            changed = False
            for w in _WRAPPERS:
                if k.startswith(w):
                    k, changed = k[len(w):], True
        if k.endswith("LayerNorm.gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith("LayerNorm.beta"):
            k = k[: -len("beta")] + "bias"
        if k in out:
            raise ValueError(f"state dict has tensor {k!r} twice (under two wrappers or as "
                             f"gamma/beta and weight/bias)")
        out[k] = v
        if names is not None:
            names[k] = original
    layout = "alicemind" if any(k.startswith("bert.model.") for k in out) else "modelscope"
    return out, layout


def palm_from_state_dict(state_dict: Mapping, config: PalmConfig, *, strict: bool = True,
                         copy_gate_bias: float = 0.0, report: list | None = None) -> dict:
    """``PalmModel(config)`` params (nested dicts of float32 numpy) from an AliceMind or
    ModelScope PALM state dict (torch tensors or numpy arrays; the layout is detected).

    ``strict``: raise one line on tensors that are not used (the buffers and the
    :data:`TRAINING_ONLY` tensors of a trainer-saved ModelScope file are skipped by name, not
    by this). Missing tensors always raise.
    ``copy_gate_bias``: bias of a fresh copy gate when ``config.copy`` and the checkpoint
    has no copy head (module docstring).
    ``report``: a list that gets one line per group of skipped tensors, by their names in the
    file.
    """
    api = "palm_from_state_dict"
    _check_config(config, api)
    names: dict[str, str] = {}
    sd, layout = _normalise(state_dict, names)
    enc = _ENC_PREFIX[layout]
    has_copy = "generator.prob_proj.weight" in sd
    if has_copy and not config.copy:
        raise ValueError(f"{api}: the checkpoint has a copy head (generator.prob_proj); "
                         f"set copy=True in the PalmConfig")
    d = config.hidden_size
    tf_enc = _transforms(config.encoder_config)
    tf_dec = _transforms(dataclasses.replace(config.encoder_config,
                                             num_heads=config.num_decoder_heads))
    used: set[str] = set()
    missing: list[str] = []

    def take(key: str, kind: str, tf) -> np.ndarray | None:
        if key not in sd:
            missing.append(key)
            return None
        used.add(key)
        return np.ascontiguousarray(tf[kind][0](cio.to_numpy(sd[key])), dtype=np.float32)

    flat: dict[str, Any] = {}
    for key, path, kind in _encoder_top_entries(config):
        flat[path] = take(enc + key, kind, tf_enc)
    enc_layers = []
    for i in range(config.num_encoder_layers):
        enc_layers.append({path: take(f"{enc}encoder.layer.{i}.{key}", kind, tf_enc)
                           for key, path, kind in _layer_entries(config.norm_placement == "pre")})
    dec_layers = []
    for i in range(config.num_decoder_layers):
        dec_layers.append({path: take(f"decoder.transformer_layers.{i}.{key}", kind, tf_dec)
                           for key, path, kind in _decoder_layer_entries()})
    flat["decoder_final_norm/scale"] = take("decoder.layer_norm.weight", "copy", tf_dec)
    flat["decoder_final_norm/bias"] = take("decoder.layer_norm.bias", "copy", tf_dec)
    dec_table = take("decoder.embeddings.weight", "copy", tf_dec)
    gen_w, gen_b = _generator_keys(layout, has_copy)
    flat["output_bias"] = take(gen_b, "copy", tf_dec)
    tied = take(gen_w, "copy", tf_dec)
    if missing:
        raise ValueError(f"{api}: missing {len(missing)} tensor(s) {_few(missing)} for a "
                         f"{layout} PALM checkpoint of this config (num_encoder_layers="
                         f"{config.num_encoder_layers}, num_decoder_layers="
                         f"{config.num_decoder_layers}); state dict keys look like "
                         f"{_few(sd)}")
    if not np.array_equal(tied, dec_table):
        raise ValueError(f"{api}: {gen_w} differs from decoder.embeddings.weight; an untied "
                         f"output projection is not supported by PalmModel")
    if config.share_embeddings:
        if not np.array_equal(dec_table, flat["encoder/word_embed/embedding"]):
            raise ValueError(f"{api}: decoder.embeddings.weight differs from the encoder word "
                             f"embeddings; set share_embeddings=False")
    else:
        flat["decoder_embed/embedding"] = dec_table
    if config.copy:
        kernel = np.zeros((config.copy_gate_inputs, 1), np.float32)
        bias = np.full((1,), copy_gate_bias, np.float32)
        if has_copy:
            w = cio.to_numpy(sd["generator.prob_proj.weight"])
            if w.shape != (1, 2 * d):
                raise ValueError(f"{api}: generator.prob_proj.weight has shape {w.shape}, "
                                 f"expected (1, {2 * d})")
            kernel[: 2 * d] = w.T
            bias = cio.to_numpy(sd["generator.prob_proj.bias"]).reshape(1)
            used.update(("generator.prob_proj.weight", "generator.prob_proj.bias"))
        flat["copy_gate/kernel"], flat["copy_gate/bias"] = kernel, bias
    skipped: dict[str, list[str]] = {}
    for k in sd:
        if k in used:
            continue
        if k in TRAINING_ONLY:
            twin = TRAINING_ONLY[k]
            if twin in sd:  # loss.generator.*: the generator module, listed a second time
                if not np.array_equal(cio.to_numpy(sd[k]), cio.to_numpy(sd[twin])):
                    raise ValueError(f"{api}: {names[k]} differs from {names[twin]}; in "
                                     f"PalmForTextGeneration they are one module")
                why = ("PalmForTextGeneration.loss.generator is the generator module, listed "
                       "twice by state_dict: equal to the generator's tensors (checked)")
            elif k.startswith("loss.generator."):
                raise ValueError(f"{api}: {names[k]} without {twin}; is this a "
                                 f"PalmForTextGeneration state dict?")
            else:
                why = twin
            skipped.setdefault(why, []).append(names[k])
        elif _is_buffer(k):
            skipped.setdefault("buffers, rebuilt by the model", []).append(names[k])
    if report is not None:
        for why, keys in skipped.items():
            report.append(f"skipped {', '.join(keys)}: {why}")
    leftover = [k for k in sd if k not in used and not _is_buffer(k) and k not in TRAINING_ONLY]
    if strict and leftover:
        raise ValueError(f"{api}: {len(leftover)} unexpected tensor(s) "
                         f"{_few(names[k] for k in leftover)} are not "
                         f"part of PalmModel(config) ({layout} layout); pass strict=False to "
                         f"ignore them")
    params = cio.unflatten_tree(flat)
    params["encoder"]["stack"] = cio.assemble_decoder(
        [cio.unflatten_tree(x) for x in enc_layers], config.scan_layers)
    dec = [cio.unflatten_tree(x) for x in dec_layers]
    if len(dec) > 1:
        params["decoder"] = cio.assemble_decoder(dec[:-1], config.scan_layers)
    params["decoder_last"] = dec[-1]
    _check_shapes(config, params, api)
    return params


@functools.lru_cache(maxsize=16)
def _param_shapes(config: PalmConfig) -> dict[str, tuple]:
    from flax import linen as nn

    from plug_jax.families.palm.network import abstract_params

    return {k: tuple(v.shape)
            for k, v in cio.flatten_tree(nn.unbox(abstract_params(config))).items()}


def _check_shapes(config: PalmConfig, params: Mapping, api: str) -> None:
    want = _param_shapes(config)
    got = {k: tuple(np.shape(v)) for k, v in cio.flatten_tree(params).items()}
    extra, lack = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    if extra or lack:
        raise ValueError(f"{api}: params do not match PalmModel(config): missing {_few(lack)}; "
                         f"unexpected {_few(extra)}")
    for k in sorted(want):
        if want[k] != got[k]:
            raise ValueError(f"{api}: {k} has shape {got[k]}, PalmModel(config) expects "
                             f"{want[k]}; is the config the checkpoint's?")


# -------------------------------------------------------------------------- export
def palm_to_state_dict(params: Mapping, config: PalmConfig, *, layout: str = "alicemind",
                       as_torch: bool = False) -> dict:
    """The state dict of ``layout`` (``'alicemind'`` or ``'modelscope'``) from ``PalmModel``
    params (scanned or not, boxed or not): float32 numpy arrays, or torch tensors with
    ``as_torch``. The tied generator weight is written as a copy of
    ``decoder.embeddings.weight``; buffers are not written."""
    api = "palm_to_state_dict"
    _check_config(config, api)
    if layout not in LAYOUTS:
        raise ValueError(f"{api}: unknown layout {layout!r}; choose one of {LAYOUTS}")
    if config.copy and layout == "modelscope":
        raise ValueError(f"{api}: ModelScope palm_v2 has no copy head; export with "
                         f"layout='alicemind' or use a copy=False config")
    p = cio.unbox_params(params)
    flat = {k: np.asarray(v, np.float32) for k, v in cio.flatten_tree(p).items()}
    enc = _ENC_PREFIX[layout]
    d = config.hidden_size
    tf_enc = _transforms(config.encoder_config)
    tf_dec = _transforms(dataclasses.replace(config.encoder_config,
                                             num_heads=config.num_decoder_heads))

    def get(path: str) -> np.ndarray:
        if path not in flat:
            raise ValueError(f"{api}: params lack {path}; are they PalmModel(config) params?")
        return flat[path]

    out: dict[str, np.ndarray] = {}
    for key, path, kind in _encoder_top_entries(config):
        out[enc + key] = tf_enc[kind][1](get(path))
    for i, layer in enumerate(cio.split_layers(p["encoder"]["stack"],
                                               config.num_encoder_layers, api)):
        lf = cio.flatten_tree(layer)
        for key, path, kind in _layer_entries(config.norm_placement == "pre"):
            out[f"{enc}encoder.layer.{i}.{key}"] = tf_enc[kind][1](np.asarray(lf[path],
                                                                              np.float32))
    dec_layers = []
    if config.num_decoder_layers > 1:
        if "decoder" not in p:
            raise ValueError(f"{api}: params lack decoder/ (the first "
                             f"{config.num_decoder_layers - 1} decoder layers)")
        dec_layers = cio.split_layers(p["decoder"], config.num_decoder_layers - 1, api)
    if "decoder_last" not in p:
        raise ValueError(f"{api}: params lack decoder_last/; are they PalmModel params?")
    dec_layers = list(dec_layers) + [p["decoder_last"]]
    for i, layer in enumerate(dec_layers):
        lf = cio.flatten_tree(layer)
        for key, path, kind in _decoder_layer_entries():
            out[f"decoder.transformer_layers.{i}.{key}"] = tf_dec[kind][1](
                np.asarray(lf[path], np.float32))
    out["decoder.layer_norm.weight"] = get("decoder_final_norm/scale")
    out["decoder.layer_norm.bias"] = get("decoder_final_norm/bias")
    table = get("encoder/word_embed/embedding" if config.share_embeddings
                else "decoder_embed/embedding")
    out["decoder.embeddings.weight"] = table
    gen_w, gen_b = _generator_keys(layout, config.copy)
    out[gen_w] = table.copy()
    out[gen_b] = get("output_bias")
    if config.copy:
        kernel = get("copy_gate/kernel")
        if np.any(kernel[2 * d:] != 0):
            raise ValueError(f"{api}: the copy gate uses the decoder input embedding (nonzero "
                             f"copy_gate/kernel rows {2 * d}:), which the released "
                             f"CopyGenerator cannot express; train with "
                             f"copy_gate_uses_input=False")
        out["generator.prob_proj.weight"] = np.ascontiguousarray(kernel[: 2 * d].T)
        out["generator.prob_proj.bias"] = get("copy_gate/bias").reshape(1)
    out = {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
    if not as_torch:
        return out
    import torch
    return {k: torch.from_numpy(v) for k, v in out.items()}


# ------------------------------------------------------- export: a ModelScope palm_v2 dir
# PalmConfig fields of modelscope's palm_v2 that are not sizes: the loss and beam-search
# settings, written with modelscope's defaults (configuration.py) as its save_pretrained does.
_MS_GENERATION = dict(use_bert_emb=True, label_smoothing=0.1, alpha=0.95, beam_size=5,
                      min_length=40, max_length=130, sample_topk=False, block_trigram=False)
# configuration.json: what routes Model.from_pretrained to PalmForTextGeneration
# (modelscope.metainfo Models.palm = 'palm-v2', Tasks.text_generation).
MS_CONFIGURATION = {"framework": "pytorch", "task": "text-generation",
                    "model": {"type": "palm-v2"}, "pipeline": {"type": "text-generation"}}


def modelscope_configs(config: PalmConfig) -> tuple[dict, dict]:
    """``(config.json, encoder config.json)`` of a ModelScope palm_v2 dir for ``config``: the
    inverse of :func:`config_from_modelscope`. The first holds ModelScope's ``PalmConfig``
    fields (``model_type`` ``palm``; the loss / beam-search fields at their defaults), its
    ``encoder_pth`` names the subfolder (relative to the model dir, as
    ``PalmPreTrainedModel._from_pretrained`` joins it) for the second, a ``BertConfig`` (``bert``
    / ``"bert"``; ``position_offset`` 0) or ``RobertaConfig`` (``roberta`` / ``"roberta"``;
    ``pad_token_id`` = ``position_offset - 1``) as ``transformers`` 4.x writes it.

    A config that ``AbsSummarizer`` would run differently is one line of ValueError: a copy
    head, a pre-LN encoder or one without the embedding LayerNorm, no pooler, an encoder
    activation without a ``transformers`` name, and a decoder other than palm_v2's fixed one
    (pre-LN, ``gelu_new``, LayerNorm epsilon 1e-6). Not stored, so not read back: the decoder
    attention dropout when it differs from ``decoder_dropout_rate`` (``dec_dropout`` sets both),
    ``share_embeddings`` (ModelScope's ``share_emb`` only copies the table at initialisation;
    the file holds the decoder table) and the dtypes / layer layout."""
    from plug_jax.families.structbert.convert_hf import TO_HF_ACTIVATIONS

    api = "palm modelscope_configs"
    _check_config(config, api)
    enc, dec = config.encoder_config, config.decoder_config
    problems = []
    if config.copy:
        problems.append("copy=True: ModelScope palm_v2 has no copy head (export with --to "
                        "alicemind or use a copy=False config)")
    if enc.norm_placement != "post" or not enc.use_embedding_norm:
        problems.append("the encoder is not BERT's post-LN with an embedding LayerNorm")
    if not config.use_pooler:
        problems.append("use_pooler=False: palm_v2's BertModel has a pooler")
    if enc.activation not in TO_HF_ACTIVATIONS:
        problems.append(f"encoder activation {enc.activation!r} has no transformers name")
    if (dec.norm_placement, dec.activation, dec.layer_norm_epsilon) != ("pre", "gelu_tanh",
                                                                        1e-6):
        problems.append(f"the decoder (norm {dec.norm_placement!r}, activation "
                        f"{dec.activation!r}, LayerNorm epsilon {dec.layer_norm_epsilon:g}) is "
                        f"not palm_v2's fixed one ('pre', 'gelu_tanh', 1e-6)")
    if problems:
        raise ValueError(f"{api}: cannot write a ModelScope palm_v2 dir: {'; '.join(problems)}")
    roberta = config.position_offset > 0  # RoBERTa numbers positions from pad_token_id + 1
    name = "roberta" if roberta else "bert"
    encoder = {
        "architectures": ["RobertaModel" if roberta else "BertModel"],
        "model_type": name, "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_encoder_layers,
        "num_attention_heads": config.num_heads, "intermediate_size": config.mlp_dim,
        "hidden_act": TO_HF_ACTIVATIONS[enc.activation],
        "hidden_dropout_prob": enc.dropout_rate,
        "attention_probs_dropout_prob": enc.attention_dropout_rate,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size, "initializer_range": enc.initializer_range,
        "layer_norm_eps": config.layer_norm_epsilon,
        "pad_token_id": config.position_offset - 1 if roberta else 0,
        "position_embedding_type": "absolute", "use_cache": True, "classifier_dropout": None}
    if roberta:
        encoder.update(bos_token_id=0, eos_token_id=2)
    # max_pos > 512 makes AbsSummarizer rebuild the position table; the encoder's own
    # max_position_embeddings carries the size instead.
    usable = config.max_position_embeddings - config.position_offset
    palm = {"model_type": "palm", "encoder": name, "encoder_pth": name,
            "max_pos": min(512, usable), "share_emb": bool(config.share_embeddings),
            "dec_layers": config.num_decoder_layers, "dec_hidden_size": config.hidden_size,
            "dec_heads": config.num_decoder_heads, "dec_ff_size": dec.ffn_size,
            "dec_dropout": dec.dropout_rate, **_MS_GENERATION}
    return palm, encoder


def save_modelscope_dir(config: PalmConfig, params: Mapping, out: str | os.PathLike) -> str:
    """Writes a ModelScope palm_v2 model dir into ``out``: ``config.json`` and
    ``<encoder_pth>/config.json`` (:func:`modelscope_configs`), ``configuration.json``
    (``palm-v2``, ``text-generation``) and ``pytorch_model.bin`` (``torch.save`` of the
    ``AbsSummarizer`` state dict, :func:`palm_to_state_dict`). Nothing is written when the
    config does not fit. ``PalmForTextGeneration`` also reads a tokenizer from
    ``<encoder_pth>/`` (``vocab.txt`` for BERT, ``vocab.json`` + ``merges.txt`` for RoBERTa):
    plug-convert copies the carried ``vocab.txt`` there (:mod:`plug_jax.convert.vocabulary`). Returns a one-line summary."""
    import json

    import torch

    sd = palm_to_state_dict(params, config, layout="modelscope")  # a copy head: its error
    palm, encoder = modelscope_configs(config)
    d = os.fspath(out)
    enc_dir = os.path.join(d, palm["encoder_pth"])
    os.makedirs(enc_dir, exist_ok=True)
    for path, obj in ((os.path.join(d, "config.json"), palm),
                      (os.path.join(enc_dir, "config.json"), encoder),
                      (os.path.join(d, "configuration.json"), MS_CONFIGURATION)):
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
               os.path.join(d, "pytorch_model.bin"))
    count = int(sum(np.size(v) for k, v in sd.items() if not k.startswith("generator.")))
    notes = []
    dec = config.decoder_config
    if dec.attention_dropout_rate != dec.dropout_rate:
        notes.append(f"decoder attention dropout {dec.attention_dropout_rate:g} is not stored "
                     f"(dec_dropout {dec.dropout_rate:g} sets both)")
    if config.share_embeddings:
        notes.append("share_embeddings: the encoder table is written as the decoder's own "
                     "(ModelScope keeps a separate copy); it imports back with "
                     "share_embeddings=False")
    note = "".join(f"; note: {n}" for n in notes)
    return (f"{count:,} parameters (ModelScope palm_v2, encoder {palm['encoder']}: config.json, "
            f"{palm['encoder_pth']}/config.json, configuration.json, pytorch_model.bin with "
            f"{len(sd)} tensors){note}")


def load_palm_checkpoint(path: str | os.PathLike, config: PalmConfig, *, strict: bool = True,
                         copy_gate_bias: float = 0.0, report: list | None = None) -> dict:
    """``PalmModel(config)`` params from a PALM weights file (``.safetensors``, or
    ``.bin`` / ``.pt`` / ``.pth`` through ``torch.load(weights_only=True)``), or from a
    directory holding ``pytorch_model.bin`` / ``model.safetensors`` (ModelScope)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        files = cio.find_hf_weights(p)
    else:
        files = [p]
    sd = cio.load_weights_files(files)
    return palm_from_state_dict(sd, config, strict=strict, copy_gate_bias=copy_gate_bias,
                                report=report)
