"""BERT-layout checkpoints <-> the plug_jax ``structbert`` family.

Two key layouts of ``transformers`` are understood:

* ``BertForPreTraining`` / ``BertModel`` (post-LN; StructBERT's released checkpoints use the
  same names): ``bert.embeddings.*`` (with ``embeddings.LayerNorm``),
  ``bert.encoder.layer.N.attention.self.{query,key,value}``,
  ``...attention.output.{dense,LayerNorm}``, ``...intermediate.dense``,
  ``...output.{dense,LayerNorm}``, ``bert.pooler.dense``, ``cls.predictions.*``,
  ``cls.seq_relationship``. Old ``LayerNorm.gamma`` / ``LayerNorm.beta`` names are accepted.
* ``MegatronBertForPreTraining`` / ``MegatronBertModel`` (pre-LN, PLUG's encoder layout): no
  embedding LayerNorm, ``...attention.ln`` before self-attention, ``...ln`` before the FFN,
  and a final ``bert.encoder.ln``; the heads are named as in BERT.

``nn.Linear`` weights are ``[out, in]`` and are transposed into ``[in, out]`` kernels; the
``[hidden, hidden]`` query / key / value / output matrices are reshaped to the per-head
``[embed, heads, kv]`` / ``[heads, kv, embed]`` kernels of ``MultiHeadAttention``. The MLM
decoder is tied to the word embeddings (``cls.predictions.decoder.weight`` is the same tensor
as ``bert.embeddings.word_embeddings.weight``) and its bias to ``cls.predictions.bias``.

The sentence head converts with any number of classes (2 for HF's NSP head, 3 for
StructBERT's next / previous / random head); ``config_from_bert(..., state_dict=sd)`` reads it
from the checkpoint.

Weights files are read only through :mod:`plug_jax.convert.io` (safetensors, or
``torch.load(weights_only=True)``). torch and transformers are imported lazily.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.structbert.config import StructBERTConfig

# HF hidden_act -> StructBERTConfig.activation
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu",
                  "quick_gelu": "quick_gelu"}
TO_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu",
                     "quick_gelu": "quick_gelu"}
MODEL_TYPES = {"bert": "post", "megatron-bert": "pre"}
# Non-persistent buffers that older checkpoints sometimes saved.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


# ------------------------------------------------------------------------------ config
def _hf_config_dict(hf_config: Any) -> dict:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"expected a BertConfig / MegatronBertConfig or a config.json dict, got "
                    f"{type(hf_config).__name__}")


def _check_encoder_config(c: Mapping, api: str) -> str:
    """One error line for BERT-like config options the structbert encoder cannot express;
    returns the ``StructBERTConfig.activation`` of ``hidden_act``."""
    if c.get("is_decoder", False) or c.get("add_cross_attention", False):
        raise ValueError(f"{api}: is_decoder / add_cross_attention models are not supported; "
                         f"the structbert family is a bidirectional encoder")
    pet = c.get("position_embedding_type", "absolute") or "absolute"
    if pet != "absolute":
        raise ValueError(f"{api}: position_embedding_type {pet!r} is not supported (only "
                         f"learned absolute positions)")
    act = c.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"{api}: hidden_act {act!r} is not supported; supported: "
                         f"{', '.join(sorted(HF_ACTIVATIONS))}")
    return HF_ACTIVATIONS[act]


def config_from_bert(hf_config: Any, state_dict: Mapping | None = None, *,
                     scan_layers: bool = True, **overrides) -> StructBERTConfig:
    """``StructBERTConfig`` of a ``transformers`` ``BertConfig`` / ``MegatronBertConfig``, or of
    a ``config.json`` dict (StructBERT's ``bert_config.json`` files have no ``model_type`` and
    are read as BERT).

    ``model_type 'megatron-bert'`` gives ``norm_placement='pre'``. The number of sentence
    classes is read from ``cls.seq_relationship.weight`` in ``state_dict`` when given, else 2
    (the HF NSP head). ``overrides`` replace any field.
    """
    api = "config_from_bert"
    c = _hf_config_dict(hf_config)
    model_type = c.get("model_type") or "bert"
    if model_type not in MODEL_TYPES:
        hint = ("; a ModelScope SbertConfig dir converts with plug-convert --source modelscope"
                " (convert_modelscope.config_from_modelscope)"
                if model_type == "structbert" else
                "; XLM-R / RoBERTa converts with plug-convert --source xlmr "
                "(convert_xlmr.load_xlmr_checkpoint)"
                if model_type in ("xlm-roberta", "roberta") else "")
        raise ValueError(f"{api}: model_type {model_type!r} cannot be converted to family "
                         f"'structbert' (supported: {', '.join(MODEL_TYPES)}){hint}")
    act = _check_encoder_config(c, api)
    classes = 2
    if state_dict is not None:
        for k in ("cls.seq_relationship.weight", "seq_relationship.weight"):
            if k in state_dict:
                classes = int(np.shape(state_dict[k])[0])
                break
    kw = dict(
        vocab_size=int(c.get("vocab_size", 30522)),
        num_layers=int(c.get("num_hidden_layers", 12)),
        num_heads=int(c.get("num_attention_heads", 12)),
        hidden_size=int(c.get("hidden_size", 768)),
        ffn_size=int(c.get("intermediate_size", 3072)),
        max_position_embeddings=int(c.get("max_position_embeddings", 512)),
        type_vocab_size=int(c.get("type_vocab_size", 2)),
        layer_norm_epsilon=float(c.get("layer_norm_eps", 1e-12)),
        activation=act,
        norm_placement=MODEL_TYPES[model_type],
        num_sentence_classes=classes,
        dropout_rate=float(c.get("hidden_dropout_prob", 0.1)),
        attention_dropout_rate=float(c.get("attention_probs_dropout_prob", 0.1)),
        initializer_range=float(c.get("initializer_range", 0.02)),
        scan_layers=scan_layers,
    )
    kw.update(overrides)
    return StructBERTConfig(**kw)


def to_bert_config(config: StructBERTConfig):
    """The ``transformers`` config of ``config``: ``BertConfig`` (post-LN) or
    ``MegatronBertConfig`` (pre-LN). HF's pre-training heads always have 2 sentence classes."""
    import transformers

    cls = transformers.MegatronBertConfig if config.pre_norm else transformers.BertConfig
    return cls(**_hf_encoder_kwargs(config, "to_bert_config"))


def _hf_encoder_kwargs(config: StructBERTConfig, api: str) -> dict:
    """The ``BertConfig``-style keyword arguments (shared by BERT and XLM-R) of ``config``."""
    if config.activation not in TO_HF_ACTIVATIONS:
        raise ValueError(f"{api}: activation {config.activation!r} has no HF equivalent")
    return dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                intermediate_size=config.mlp_dim,
                hidden_act=TO_HF_ACTIVATIONS[config.activation],
                hidden_dropout_prob=config.dropout_rate,
                attention_probs_dropout_prob=config.attention_dropout_rate,
                max_position_embeddings=config.max_position_embeddings,
                type_vocab_size=config.type_vocab_size,
                initializer_range=config.initializer_range,
                layer_norm_eps=config.layer_norm_epsilon)


# --------------------------------------------------------------------- key layouts
# A transform is (to_plug, to_hf) over numpy arrays; "qkv"/"out" need the head split.
def _transforms(cfg: StructBERTConfig) -> dict[str, tuple[Callable, Callable]]:
    d, h, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    return {
        "copy": (lambda x: x, lambda x: x),
        "linear": (lambda w: np.ascontiguousarray(w.T), lambda k: np.ascontiguousarray(k.T)),
        "qkv_w": (lambda w: np.ascontiguousarray(w.T).reshape(d, h, hd),
                  lambda k: np.ascontiguousarray(k.reshape(d, h * hd).T)),
        "qkv_b": (lambda b: b.reshape(h, hd), lambda b: b.reshape(h * hd)),
        "out_w": (lambda w: np.ascontiguousarray(w.T).reshape(h, hd, d),
                  lambda k: np.ascontiguousarray(k.reshape(h * hd, d).T)),
    }


def _dense(hf: str, path: str, w: str = "linear", b: str = "copy") -> list[tuple[str, str, str]]:
    return [(f"{hf}.weight", f"{path}/kernel", w), (f"{hf}.bias", f"{path}/bias", b)]


def _ln(hf: str, path: str) -> list[tuple[str, str, str]]:
    return [(f"{hf}.weight", f"{path}/scale", "copy"), (f"{hf}.bias", f"{path}/bias", "copy")]


def _layer_entries(pre_norm: bool) -> list[tuple[str, str, str]]:
    """(hf key relative to ``encoder.layer.N.``, param path relative to the layer, transform)."""
    e = []
    for n in ("query", "key", "value"):
        e += _dense(f"attention.self.{n}", f"attn/{n}", "qkv_w", "qkv_b")
    e += _dense("attention.output.dense", "attn/out", "out_w")
    e += _dense("intermediate.dense", "mlp/wi")
    e += _dense("output.dense", "mlp/wo")
    if pre_norm:
        e += _ln("attention.ln", "attn_norm") + _ln("ln", "mlp_norm")
    else:
        e += _ln("attention.output.LayerNorm", "attn_norm") + _ln("output.LayerNorm", "mlp_norm")
    return e


def _top_entries(pre_norm: bool) -> dict[str, list[tuple[str, str, str]]]:
    """Non-layer entries grouped by part: hf keys here are *without* the ``bert.`` prefix for
    the encoder / pooler and with ``cls.`` for the heads."""
    enc = [("embeddings.word_embeddings.weight", "encoder/word_embed/embedding", "copy"),
           ("embeddings.position_embeddings.weight", "encoder/pos_embed/embedding", "copy"),
           ("embeddings.token_type_embeddings.weight", "encoder/type_embed/embedding", "copy")]
    enc += _ln("encoder.ln", "encoder/final_norm") if pre_norm else \
        _ln("embeddings.LayerNorm", "encoder/embed_norm")
    heads = (_dense("cls.predictions.transform.dense", "mlm_head/transform")
             + _ln("cls.predictions.transform.LayerNorm", "mlm_head/norm")
             + [("cls.predictions.bias", "mlm_head/output_bias", "copy")]
             + _dense("cls.seq_relationship", "sentence_head"))
    return {"encoder": enc, "pooler": _dense("pooler.dense", "pooler"), "heads": heads}


def _normalise_keys(sd: Mapping[str, Any], prefix: str = "bert.") -> dict[str, Any]:
    """``sd`` without ``prefix`` (the base model's name in a task model) and with old
    ``LayerNorm.gamma`` / ``beta`` names as ``weight`` / ``bias``."""
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            k = k[len(prefix):]
        if k.endswith("LayerNorm.gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith("LayerNorm.beta"):
            k = k[: -len("beta")] + "bias"
        if k in out:
            raise ValueError(f"state dict has tensor {k!r} twice (with and without the "
                             f"{prefix!r} prefix or as gamma/beta and weight/bias)")
        out[k] = v
    return out


# ------------------------------------------------------------------------------ import
def _reader(sd: Mapping, tf: Mapping[str, tuple[Callable, Callable]], api: str,
            layout: str) -> tuple[Callable[[str, str], np.ndarray], set]:
    """``(take, used)``: ``take(key, kind)`` is ``sd[key]`` through ``tf[kind]``'s import side
    as float32 (one error line naming a missing key); ``used`` collects the keys taken."""
    used: set[str] = set()

    def take(key: str, kind: str) -> np.ndarray:
        if key not in sd:
            raise ValueError(f"{api}: missing tensor {key!r} (state dict keys look like "
                             f"{sorted(sd)[:3]}); is this a {layout} checkpoint of this config?")
        used.add(key)
        x = cio.to_numpy(sd[key])
        return np.ascontiguousarray(tf[kind][0](x), dtype=np.float32)

    return take, used


def _read_layers(take: Callable, config: StructBERTConfig, pre_norm: bool) -> dict:
    """``params['encoder']['stack']`` from ``encoder.layer.N.*`` (scanned per the config)."""
    layers = []
    for i in range(config.num_layers):
        layer = {path: take(f"encoder.layer.{i}.{key}", kind)
                 for key, path, kind in _layer_entries(pre_norm)}
        layers.append(cio.unflatten_tree(layer))
    return cio.assemble_decoder(layers, config.scan_layers)


def _check_leftover(sd: Mapping, used: set, api: str, strict: bool, what: str,
                    hints: Mapping[str, str] | None = None) -> None:
    """With ``strict``, one error line naming the first tensor of ``sd`` not ``used`` (the
    non-persistent buffers excepted); ``hints`` maps key prefixes to extra advice."""
    leftover = sorted(k for k in sd if k not in used and k not in _BUFFERS)
    if strict and leftover:
        more = f" (and {len(leftover) - 1} more)" if len(leftover) > 1 else ""
        hint = next((h for pre, h in (hints or {}).items() if leftover[0].startswith(pre)), "")
        raise ValueError(f"{api}: unexpected tensor {leftover[0]!r}{more} is not part of "
                         f"{what}{hint}; pass strict=False to ignore it")


def _from_state_dict(state_dict: Mapping, config: StructBERTConfig, layout: str, api: str,
                     strict: bool) -> dict:
    want_pre = layout == "megatron-bert"
    if config.pre_norm != want_pre:
        fix = "from_megatron_bert_state_dict" if config.pre_norm else "from_bert_state_dict"
        raise ValueError(f"{api}: config.norm_placement is {config.norm_placement!r} but this "
                         f"reads the {layout} layout; use {fix} or fix the config")
    sd = _normalise_keys(state_dict)
    take, used = _reader(sd, _transforms(config), api, layout)
    flat: dict[str, np.ndarray] = {}
    groups = _top_entries(want_pre)
    parts = ["encoder"]
    if "pooler.dense.weight" in sd:
        parts.append("pooler")
    if any(k.startswith("cls.") for k in sd if k not in _TIED):
        parts.append("heads")
    for part in parts:
        for key, path, kind in groups[part]:
            if key == "cls.predictions.bias" and key not in sd and _TIED[1] in sd:
                key = _TIED[1]  # some exports keep only the decoder's copy of the bias
            flat[path] = take(key, kind)
    params = cio.unflatten_tree(flat)
    params["encoder"]["stack"] = _read_layers(take, config, want_pre)

    # The tied MLM decoder must really be tied: plug_jax has no separate output matrix.
    if _TIED[0] in sd:
        used.add(_TIED[0])
        if not np.array_equal(cio.to_numpy(sd[_TIED[0]]), flat["encoder/word_embed/embedding"]):
            raise ValueError(f"{api}: {_TIED[0]} differs from the word embeddings; an untied "
                             f"MLM decoder is not supported by StructBERTForPreTraining")
    if _TIED[1] in sd:
        used.add(_TIED[1])
        if "mlm_head/output_bias" in flat and not np.array_equal(
                cio.to_numpy(sd[_TIED[1]]), flat["mlm_head/output_bias"]):
            raise ValueError(f"{api}: {_TIED[1]} differs from cls.predictions.bias; an untied "
                             f"MLM decoder bias is not supported")
    _check_leftover(sd, used, api, strict, f"a {layout} pre-training model of this config "
                    f"(num_layers={config.num_layers})")
    _check_shapes(config, params, api)
    return params


def _check_shapes(config: StructBERTConfig, params: Mapping, api: str,
                  num_labels: int | None = None) -> None:
    """One line if ``params`` differ in names or shapes from ``StructBERTForPreTraining``
    (only the parts present: an encoder-only checkpoint gives an encoder-only tree), or, with
    ``num_labels``, from ``StructBERTForSequenceClassification``."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from plug_jax.families.structbert.network import (StructBERTForSequenceClassification,
                                                      abstract_params)

    if num_labels is None:
        tree, model = abstract_params(config), "StructBERTForPreTraining"
    else:
        net = StructBERTForSequenceClassification(config, num_labels=num_labels)
        ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
        tree = jax.eval_shape(lambda r, x: net.init(r, x), jax.random.PRNGKey(0), ids)["params"]
        model = "StructBERTForSequenceClassification"
    want = {k: tuple(v.shape) for k, v in cio.flatten_tree(nn.unbox(tree)).items()}
    got = {k: tuple(np.shape(v)) for k, v in cio.flatten_tree(params).items()}
    for k in sorted(got):
        if k not in want:
            raise ValueError(f"{api}: converted params have {k} that {model}(config) does "
                             f"not use")
        if want[k] != got[k]:
            hint = ""
            if k.startswith("sentence_head/"):
                hint = (f"; the checkpoint's sentence head has {got[k][-1]} classes: set "
                        f"num_sentence_classes={got[k][-1]} (config_from_bert(..., state_dict=sd)"
                        f" does this)")
            raise ValueError(f"{api}: converted {k} has shape {got[k]}, the config expects "
                             f"{want[k]}{hint}")
    enc_missing = sorted(k for k in want if k.startswith("encoder/") and k not in got)
    if enc_missing:
        raise ValueError(f"{api}: converted params lack {enc_missing[0]} that the config expects")


def from_bert_state_dict(state_dict: Mapping, config: StructBERTConfig, *,
                         strict: bool = True) -> dict:
    """Params of ``StructBERTForPreTraining(config)`` from a ``BertForPreTraining`` state dict.

    ``state_dict``: torch tensors or numpy arrays; with or without the ``bert.`` prefix (a
    ``BertModel`` state dict gives the encoder, and the pooler if present, only).
    ``config.norm_placement`` must be ``'post'``; the layout (scanned or not) follows
    ``config.scan_layers``. Returns plain nested dicts of float32 numpy arrays;
    ``params['encoder']`` alone is the ``params`` of ``BertEncoder(config)``.
    ``strict``: raise on tensors that are not used (e.g. a fine-tuning classifier).
    """
    return _from_state_dict(state_dict, config, "bert", "from_bert_state_dict", strict)


def from_megatron_bert_state_dict(state_dict: Mapping, config: StructBERTConfig, *,
                                  strict: bool = True) -> dict:
    """Like :func:`from_bert_state_dict` for the pre-LN ``MegatronBertForPreTraining`` /
    ``MegatronBertModel`` layout (``config.norm_placement`` must be ``'pre'``)."""
    return _from_state_dict(state_dict, config, "megatron-bert",
                            "from_megatron_bert_state_dict", strict)


def _read_checkpoint(path: str | os.PathLike, config: Any, api: str, config_names: tuple,
                     config_kind: str) -> tuple[Any, dict]:
    """``(config, state_dict)`` of a ``save_pretrained`` directory or one weights file; the
    config (when None) is the first of ``config_names`` beside the weights, read as a dict."""
    return cio.read_checkpoint(path, config, api=api, config_names=config_names,
                               fix=f"pass config= ({config_kind}, a dict or a JSON path)")


def load_bert_checkpoint(path: str | os.PathLike, config: Any = None, *,
                         scan_layers: bool = True, strict: bool = True,
                         **overrides) -> tuple[StructBERTConfig, dict]:
    """``(config, params)`` from a BERT / Megatron-BERT / StructBERT checkpoint on disk.

    ``path``: a ``save_pretrained`` directory (``config.json`` + ``model.safetensors`` /
    ``pytorch_model.bin`` / sharded index) or one weights file (``.safetensors``, ``.bin``,
    ``.pt``) with ``config.json`` or ``bert_config.json`` beside it. ``config``: an HF config,
    a config dict or a JSON path, when it cannot be found next to the weights. Files are read
    with safetensors or ``torch.load(weights_only=True)`` only.
    """
    config, sd = _read_checkpoint(path, config, "load_bert_checkpoint",
                                  ("config.json", "bert_config.json"), "a BertConfig")
    cfg = config_from_bert(config, sd, scan_layers=scan_layers, **overrides)
    fn = from_megatron_bert_state_dict if cfg.pre_norm else from_bert_state_dict
    return cfg, fn(sd, cfg, strict=strict)


# ------------------------------------------------------------------------------ export
def _write_layers(config: StructBERTConfig, stack: Mapping, prefix: str, pre_norm: bool,
                  tf: Mapping[str, tuple[Callable, Callable]], api: str) -> dict:
    """``{prefix}encoder.layer.N.*`` tensors of ``params['encoder']['stack']``."""
    out = {}
    for i, layer in enumerate(cio.split_layers(stack, config.num_layers, api)):
        lf = cio.flatten_tree(layer)
        for key, path, kind in _layer_entries(pre_norm):
            out[f"{prefix}encoder.layer.{i}.{key}"] = tf[kind][1](np.asarray(lf[path], np.float32))
    return out


def _to_state_dict(config: StructBERTConfig, params: Mapping, layout: str, api: str,
                   as_numpy: bool) -> dict:
    want_pre = layout == "megatron-bert"
    if config.pre_norm != want_pre:
        fix = "to_megatron_bert_state_dict" if config.pre_norm else "to_bert_state_dict"
        raise ValueError(f"{api}: config.norm_placement is {config.norm_placement!r}; the "
                         f"{layout} layout cannot express it: use {fix}")
    p = cio.unbox_params(params)
    if "encoder" not in p and "word_embed" in p:  # BertEncoder(config) params
        p = {"encoder": p}
    flat = {k: np.asarray(v, np.float32) for k, v in cio.flatten_tree(p).items()
            if not k.startswith("encoder/stack/")}
    tf = _transforms(config)
    out: dict[str, np.ndarray] = {}
    groups = _top_entries(want_pre)
    has_heads = "mlm_head/output_bias" in flat
    prefix = "bert." if has_heads else ""
    for part in ("encoder", "pooler", "heads"):
        for key, path, kind in groups[part]:
            if path not in flat:
                if part == "encoder" or (part == "heads" and has_heads):
                    raise ValueError(f"{api}: params lack {path}")
                continue
            name = key if key.startswith("cls.") else prefix + key
            out[name] = tf[kind][1](flat[path])
    out.update(_write_layers(config, p["encoder"]["stack"], prefix, want_pre, tf, api))
    if has_heads:  # the tied copies, as in BertForPreTraining.state_dict()
        out[_TIED[0]] = out[prefix + "embeddings.word_embeddings.weight"].copy()
        out[_TIED[1]] = out["cls.predictions.bias"].copy()
    out = {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
    if as_numpy:
        return out
    import torch
    return {k: torch.from_numpy(v) for k, v in out.items()}


def to_bert_state_dict(config: StructBERTConfig, params: Mapping, *,
                       as_numpy: bool = False) -> dict:
    """A ``BertForPreTraining`` state dict (float32 torch tensors, or numpy with
    ``as_numpy``) from post-LN ``StructBERTForPreTraining`` params (scanned or not, boxed or
    not). Params without the heads (``{'encoder': ..., ['pooler': ...]}``) give a
    ``BertModel`` state dict (no ``bert.`` prefix). The tied
    ``cls.predictions.decoder.{weight,bias}`` are written as copies, as
    ``BertForPreTraining.state_dict()`` lists them."""
    return _to_state_dict(config, params, "bert", "to_bert_state_dict", as_numpy)


def to_megatron_bert_state_dict(config: StructBERTConfig, params: Mapping, *,
                                as_numpy: bool = False) -> dict:
    """Like :func:`to_bert_state_dict` for pre-LN params (``MegatronBertForPreTraining``
    layout)."""
    return _to_state_dict(config, params, "megatron-bert", "to_megatron_bert_state_dict",
                          as_numpy)
