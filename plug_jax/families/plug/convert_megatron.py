"""PLUG's merged Megatron state dict <-> ``PlugModel`` params.

:func:`plug_jax.convert.megatron.merge_plug_checkpoint` turns the 8 published
``mp_rank_0X_model_states.pt`` files into one unsplit state dict with PLUG's own names
(AliceMind ``PLUG/model/modeling.py: PalmForPreTraining``, ModelScope
``nlp/plug/backbone.py``). This module maps that dict onto the params of
:class:`plug_jax.families.plug.network.PlugModel` and back:

Merged key (``{i}`` encoder layer, ``{j}`` decoder layer) -> ``PlugModel`` param:

* ``bert.embeddings.{word,position,token_type}_embeddings.weight`` ->
  ``structbert/encoder/{word,pos,type}_embed/embedding``
* ``bert.encoder.layer.{i}.``: ``attention.LayerNorm`` -> ``attn_norm``;
  ``attention.self.query_key_value`` ``[3d, d]`` (blockwise Q | K | V) ->
  ``attn/{query,key,value}``; ``attention.output.dense`` -> ``attn/out``;
  ``LayerNorm`` -> ``mlp_norm``; ``{intermediate,output}.dense`` -> ``mlp/{wi,wo}``
  (under ``structbert/encoder/stack/layers``)
* ``bert.encoder.LayerNorm`` -> ``structbert/encoder/final_norm``;
  ``bert.pooler.dense`` -> ``structbert/pooler``
* ``cls.predictions.transform.{dense,LayerNorm}``, ``cls.predictions.bias`` ->
  ``structbert/mlm_head/{transform,norm,output_bias}``; ``cls.seq_relationship`` ``[3, d]``
  -> ``structbert/sentence_head``
* ``decoder.decoder.layer.{j}.``: ``input_layernorm`` -> ``self_attn_norm``;
  ``attention.{query_key_value,dense}`` -> ``self_attn/{query,key,value,out}``;
  ``post_attention_layernorm`` -> ``cross_attn_norm``; ``cross_attention.query`` ->
  ``cross_attn/query``; ``cross_attention.key_value`` ``[2d, d]`` (blockwise K | V) ->
  ``cross_attn/{key,value}``; ``cross_attention.dense`` -> ``cross_attn/out``;
  ``post_cross_attention_layernorm`` -> ``mlp_norm``; ``{intermediate,output}`` ->
  ``mlp/{wi,wo}`` (under ``decoder/layers``)
* ``decoder.decoder.final_layernorm`` -> ``decoder_final_norm``

``nn.Linear`` / Megatron linear weights are ``[out, in]`` and become ``[in, out]`` kernels
(per-head ``[d, heads, head_dim]`` / ``[heads, head_dim, d]`` for attention); LayerNorm
``weight`` is ``scale``. The MLM and decoder outputs are tied to the word embeddings in
PLUG too (``decoder_weight`` is not a parameter), so there is no separate output matrix.
The encoder may also use ModelScope's ``attn_separate`` names
(``attention.self.{query,key,value}``) instead of the fused matrix.

**The embedding LayerNorm.** PLUG's ``BertEmbeddings`` normalises ``word + position +
token_type`` with ``bert.embeddings.LayerNorm`` (also in its pre-LN configuration), for the
encoder *and* for the decoder inputs (which also add ``token_type_embeddings[0]``).
``PlugModel`` does the same when ``config.embedding_norm`` is true (the default and every
PLUG preset): the tensor maps onto ``structbert/encoder/embed_norm``. A config with
``embedding_norm=False`` (a Megatron-BERT-style encoder) has no place for it: by default
(``embedding_norm='error'``) that is a one-line error; ``embedding_norm='drop'`` converts
everything else (the outputs then differ from PLUG's). The export writes
``bert.embeddings.LayerNorm`` only when the params have that norm.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from plug_jax.convert import io as cio

ENC_PREFIX = "bert.encoder.layer."
DEC_PREFIX = "decoder.decoder.layer."
EMBED_NORM_KEYS = ("bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias")
EMBEDDING_NORM_POLICIES = ("error", "drop")


# ------------------------------------------------------------------------------ tables
def _dense(key: str, path: str, w: str = "linear", b: str = "copy") -> list[tuple[str, str, str]]:
    return [(f"{key}.weight", f"{path}/kernel", w), (f"{key}.bias", f"{path}/bias", b)]


def _ln(key: str, path: str) -> list[tuple[str, str, str]]:
    return [(f"{key}.weight", f"{path}/scale", "copy"), (f"{key}.bias", f"{path}/bias", "copy")]


# (key, param path, transform); "qkv3"/"kv2" are fused: one key -> several param paths.
TOP_ENTRIES: list[tuple[str, str, str]] = (
    [("bert.embeddings.word_embeddings.weight", "structbert/encoder/word_embed/embedding",
      "copy"),
     ("bert.embeddings.position_embeddings.weight", "structbert/encoder/pos_embed/embedding",
      "copy"),
     ("bert.embeddings.token_type_embeddings.weight", "structbert/encoder/type_embed/embedding",
      "copy")]
    + _ln("bert.encoder.LayerNorm", "structbert/encoder/final_norm")
    + _dense("bert.pooler.dense", "structbert/pooler")
    + _dense("cls.predictions.transform.dense", "structbert/mlm_head/transform")
    + _ln("cls.predictions.transform.LayerNorm", "structbert/mlm_head/norm")
    + [("cls.predictions.bias", "structbert/mlm_head/output_bias", "copy")]
    + _dense("cls.seq_relationship", "structbert/sentence_head")
    + _ln("decoder.decoder.final_layernorm", "decoder_final_norm"))
EMBED_NORM_ENTRIES = _ln("bert.embeddings.LayerNorm", "structbert/encoder/embed_norm")

ENC_LAYER_ENTRIES: list[tuple[str, str, str]] = (
    _ln("attention.LayerNorm", "attn_norm")
    + _dense("attention.self.query_key_value", "attn/{}", "qkv3_w", "qkv3_b")
    + _dense("attention.output.dense", "attn/out", "out_w")
    + _ln("LayerNorm", "mlp_norm")
    + _dense("intermediate.dense", "mlp/wi") + _dense("output.dense", "mlp/wo"))
# ModelScope attn_separate=True: plain query / key / value instead of the fused matrix.
ENC_SEPARATE_QKV: list[tuple[str, str, str]] = [
    e for n in ("query", "key", "value")
    for e in _dense(f"attention.self.{n}", f"attn/{n}", "qkv_w", "qkv_b")]

DEC_LAYER_ENTRIES: list[tuple[str, str, str]] = (
    _ln("input_layernorm", "self_attn_norm")
    + _dense("attention.query_key_value", "self_attn/{}", "qkv3_w", "qkv3_b")
    + _dense("attention.dense", "self_attn/out", "out_w")
    + _ln("post_attention_layernorm", "cross_attn_norm")
    + _dense("cross_attention.query", "cross_attn/query", "qkv_w", "qkv_b")
    + _dense("cross_attention.key_value", "cross_attn/{}", "kv2_w", "kv2_b")
    + _dense("cross_attention.dense", "cross_attn/out", "out_w")
    + _ln("post_cross_attention_layernorm", "mlp_norm")
    + _dense("intermediate", "mlp/wi") + _dense("output", "mlp/wo"))

_FUSED = {"qkv3_w": ("query", "key", "value"), "qkv3_b": ("query", "key", "value"),
          "kv2_w": ("key", "value"), "kv2_b": ("key", "value")}


def _to_params(kind: str, x: np.ndarray, d: int, h: int, hd: int) -> Any:
    """Merged tensor -> param value (or ``{name: value}`` for a fused matrix)."""
    if kind == "copy":
        return x
    if kind == "linear":
        return np.ascontiguousarray(x.T)
    if kind == "qkv_w":
        return np.ascontiguousarray(x.T).reshape(d, h, hd)
    if kind == "qkv_b":
        return x.reshape(h, hd)
    if kind == "out_w":
        return np.ascontiguousarray(x.T).reshape(h, hd, d)
    names = _FUSED[kind]
    parts = np.split(x, len(names), axis=0)
    sub = "qkv_w" if kind.endswith("_w") else "qkv_b"
    return {n: _to_params(sub, p, d, h, hd) for n, p in zip(names, parts)}


def _to_merged(kind: str, v: Any, d: int, h: int, hd: int) -> np.ndarray:
    """Param value (or ``{name: value}`` for a fused matrix) -> merged tensor."""
    if kind in _FUSED:
        sub = "qkv_w" if kind.endswith("_w") else "qkv_b"
        return np.concatenate([_to_merged(sub, v[n], d, h, hd) for n in _FUSED[kind]], axis=0)
    x = np.asarray(v, np.float32)
    if kind == "copy":
        return x
    if kind == "linear":
        return np.ascontiguousarray(x.T)
    if kind == "qkv_w":
        return np.ascontiguousarray(x.reshape(d, h * hd).T)
    if kind == "qkv_b":
        return x.reshape(h * hd)
    if kind == "out_w":
        return np.ascontiguousarray(x.reshape(h * hd, d).T)
    raise AssertionError(kind)


def _check_config(config: Any, api: str) -> None:
    from plug_jax.families.plug.config import PlugConfig

    if not isinstance(config, PlugConfig):
        raise TypeError(f"{api}: config must be a PlugConfig, got {type(config).__name__}")
    if config.norm_placement != "pre":
        raise ValueError(f"{api}: config.norm_placement is {config.norm_placement!r}; the "
                         f"released PLUG layout is pre-LN: use norm_placement='pre'")
    if getattr(config, "num_experts", 0):
        raise ValueError(f"{api}: config has num_experts={config.num_experts}; the released "
                         f"PLUG checkpoint is dense: use a dense preset such as '27B'")


def _expected(config: Any) -> dict[str, tuple]:
    """``{param path: shape}`` of ``PlugModel(config)`` (unscanned names), from abstract shapes."""
    import dataclasses

    from flax import linen as nn

    from plug_jax.families.plug.network import abstract_params

    flat = cio.flatten_tree(nn.unbox(abstract_params(
        dataclasses.replace(config, scan_layers=False))))
    return {k: tuple(v.shape) for k, v in flat.items()}


# ------------------------------------------------------------------------------ import
def plug_from_merged_state_dict(state_dict: Mapping[str, Any], config: Any, *,
                                embedding_norm: str = "error", strict: bool = True,
                                dtype: Any = np.float32) -> dict:
    """``PlugModel(config)`` params from PLUG's merged (unsplit) Megatron state dict.

    Args:
      state_dict: ``{name: array}`` as :func:`~plug_jax.convert.megatron.merge_plug_checkpoint`
        returns it (numpy or torch; a ``module.`` prefix is not expected).
      config: a pre-LN, dense :class:`~plug_jax.families.plug.config.PlugConfig` (``27B``
        for the release: vocab 21504 = 21128 padded). ``config.scan_layers`` picks the
        scanned (``layers`` with a leading axis) or unrolled (``layers_0``..) layout.
      embedding_norm: what to do with ``bert.embeddings.LayerNorm`` when ``PlugModel`` has
        no embedding norm: ``'error'`` (default) or ``'drop'`` (module docstring).
      strict: raise on tensors this mapping does not use.
      dtype: numpy dtype of the returned arrays.

    Returns plain nested dicts of numpy arrays. Missing / unexpected tensors and shape
    mismatches raise one ``ValueError`` line naming the tensor and the fix.
    """
    api = "plug_from_merged_state_dict"
    _check_config(config, api)
    if embedding_norm not in EMBEDDING_NORM_POLICIES:
        raise ValueError(f"{api}: embedding_norm must be one of "
                         f"{', '.join(EMBEDDING_NORM_POLICIES)}, got {embedding_norm!r}")
    want = _expected(config)
    d, h, hd = config.hidden_size, config.num_heads, config.head_dim
    sd = dict(state_dict)
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in sd:
            near = sorted(k for k in sd if k.split(".")[:2] == key.split(".")[:2])[:2]
            raise ValueError(f"{api}: missing tensor {key!r} (found e.g. {near or sorted(sd)[:2]});"
                             f" is this a merged PLUG checkpoint of this config (encoder layers="
                             f"{config.num_encoder_layers}, decoder layers="
                             f"{config.num_decoder_layers})?")
        used.add(key)
        return cio.to_numpy(sd[key], dtype)

    flat: dict[str, np.ndarray] = {}

    def put(path: str, kind: str, x: np.ndarray, key: str, shape_path: str) -> None:
        value = _to_params(kind, x, d, h, hd)
        items = ({path.format(n): v for n, v in value.items()} if isinstance(value, dict)
                 else {path: value})
        for p, v in items.items():
            full = shape_path.format(p)
            if full not in want:
                raise ValueError(f"{api}: tensor {key!r} maps to {full}, which PlugModel(config) "
                                 f"does not have")
            if tuple(v.shape) != want[full]:
                hint = ""
                if "word_embed" in full or "output_bias" in full:
                    hint = (f"; set vocab_size={v.shape[0]} (PLUG pads 21128 to 21504) or use "
                            f"the preset the checkpoint was trained with")
                elif "type_embed" in full:
                    hint = f"; set type_vocab_size={v.shape[0]}"
                elif "pos_embed" in full:
                    hint = f"; set max_position_embeddings={v.shape[0]}"
                elif "sentence_head" in full:
                    hint = f"; set num_sentence_classes={v.shape[-1]}"
                else:
                    hint = "; the checkpoint has another hidden / ffn / head size than the config"
                raise ValueError(f"{api}: tensor {key!r} has shape {tuple(x.shape)}, which gives "
                                 f"{full} shape {tuple(v.shape)} but the config expects "
                                 f"{want[full]}{hint}")
            flat[full] = np.ascontiguousarray(v, dtype)

    for key, path, kind in TOP_ENTRIES:
        put(path, kind, take(key), key, "{}")
    has_embed_norm = "structbert/encoder/embed_norm/scale" in want
    present = [k for k in EMBED_NORM_KEYS if k in sd]
    if has_embed_norm:
        for key, path, kind in EMBED_NORM_ENTRIES:
            put(path, kind, take(key), key, "{}")
    elif present:
        used.update(present)
        if embedding_norm == "error":
            raise ValueError(
                f"{api}: tensor {present[0]!r} has no place in PlugModel: PLUG normalises the "
                f"summed embeddings (encoder and decoder inputs) with it, this config has "
                f"embedding_norm=False; use embedding_norm=True (the PLUG presets) or pass "
                f"embedding_norm='drop' (CLI: --drop_embedding_norm) to convert the rest "
                f"anyway, knowing the outputs will differ from PLUG's")

    for i in range(config.num_encoder_layers):
        pre = f"{ENC_PREFIX}{i}."
        fused = pre + "attention.self.query_key_value.weight" in sd
        entries = [e for e in ENC_LAYER_ENTRIES if fused or "query_key_value" not in e[0]]
        if not fused and pre + "attention.self.query.weight" in sd:
            entries += ENC_SEPARATE_QKV
        elif not fused:
            entries = ENC_LAYER_ENTRIES  # reports the fused key as missing
        for key, path, kind in entries:
            put(path, kind, take(pre + key), pre + key,
                f"structbert/encoder/stack/layers_{i}/{{}}")
    for j in range(config.num_decoder_layers):
        pre = f"{DEC_PREFIX}{j}."
        for key, path, kind in DEC_LAYER_ENTRIES:
            put(path, kind, take(pre + key), pre + key, f"decoder/layers_{j}/{{}}")

    leftover = sorted(k for k in sd if k not in used)
    if strict and leftover:
        more = f" (and {len(leftover) - 1} more)" if len(leftover) > 1 else ""
        raise ValueError(f"{api}: unexpected tensor {leftover[0]!r}{more} is not part of PLUG "
                         f"with this config (encoder layers={config.num_encoder_layers}, decoder "
                         f"layers={config.num_decoder_layers}); fix the config or pass "
                         f"strict=False to ignore it")
    lacking = sorted(k for k in want if k not in flat)
    if lacking:
        raise ValueError(f"{api}: converted params lack {lacking[0]} that PlugModel(config) "
                         f"expects")
    return _assemble(flat, config)


def _assemble(flat: dict[str, np.ndarray], config: Any) -> dict:
    """Unscanned flat paths -> the nested tree in ``config.scan_layers``' layout."""
    tree = cio.unflatten_tree(flat)
    stack = tree["structbert"]["encoder"]["stack"]
    enc = [stack[f"layers_{i}"] for i in range(config.num_encoder_layers)]
    tree["structbert"]["encoder"]["stack"] = cio.assemble_decoder(enc, config.scan_layers)
    dec = [tree["decoder"][f"layers_{j}"] for j in range(config.num_decoder_layers)]
    tree["decoder"] = cio.assemble_decoder(dec, config.scan_layers)
    return tree


# ------------------------------------------------------------------------------ export
def plug_to_merged_state_dict(params: Mapping, config: Any) -> dict[str, np.ndarray]:
    """PLUG's merged (unsplit) Megatron state dict of ``PlugModel`` params (scanned or not,
    boxed or not): float32 numpy arrays with the names of :func:`plug_from_merged_state_dict`
    (fused ``query_key_value`` / ``key_value``). ``bert.embeddings.LayerNorm`` is written only
    if the params have ``structbert/encoder/embed_norm``."""
    api = "plug_to_merged_state_dict"
    _check_config(config, api)
    d, h, hd = config.hidden_size, config.num_heads, config.head_dim
    p = cio.unbox_params(params)
    for part in ("structbert", "decoder", "decoder_final_norm"):
        if part not in p:
            raise ValueError(f"{api}: params lack {part!r}; pass the params of PlugModel(config)")
    flat = cio.flatten_tree({k: v for k, v in p.items() if k != "decoder"})
    flat = {k: v for k, v in flat.items() if not k.startswith("structbert/encoder/stack/")}
    out: dict[str, np.ndarray] = {}

    def get(layer_flat: Mapping, path: str, kind: str, where: str):
        if kind in _FUSED:
            return {n: get(layer_flat, path.format(n), "qkv_w", where) for n in _FUSED[kind]}
        if path not in layer_flat:
            raise ValueError(f"{api}: params lack {where}{path}; pass the params of "
                             f"PlugModel(config)")
        return layer_flat[path]

    entries = TOP_ENTRIES + (EMBED_NORM_ENTRIES if "structbert/encoder/embed_norm/scale" in flat
                             else [])
    for key, path, kind in entries:
        out[key] = _to_merged(kind, get(flat, path, kind, ""), d, h, hd)
    enc = cio.split_layers(p["structbert"]["encoder"]["stack"], config.num_encoder_layers, api)
    for i, layer in enumerate(enc):
        lf = cio.flatten_tree(layer)
        for key, path, kind in ENC_LAYER_ENTRIES:
            out[f"{ENC_PREFIX}{i}.{key}"] = _to_merged(
                kind, get(lf, path, kind, f"structbert/encoder/stack/layers_{i}/"), d, h, hd)
    dec = cio.split_layers(p["decoder"], config.num_decoder_layers, api)
    for j, layer in enumerate(dec):
        lf = cio.flatten_tree(layer)
        for key, path, kind in DEC_LAYER_ENTRIES:
            out[f"{DEC_PREFIX}{j}.{key}"] = _to_merged(
                kind, get(lf, path, kind, f"decoder/layers_{j}/"), d, h, hd)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def plug_to_megatron_shards(params: Mapping, config: Any, num_shards: int = 8
                            ) -> list[dict[str, np.ndarray]]:
    """``num_shards`` Megatron tensor-parallel rank state dicts (rank 0 first) of ``PlugModel``
    params: :func:`plug_to_merged_state_dict` split with
    :func:`~plug_jax.convert.megatron.split_tensor_parallel` and :data:`PLUG_RULES` (the
    inverse of :func:`~plug_jax.convert.megatron.merge_plug_checkpoint`)."""
    from plug_jax.convert.megatron import PLUG_RULES, split_tensor_parallel

    return split_tensor_parallel(plug_to_merged_state_dict(params, config), num_shards,
                                 PLUG_RULES)


def save_megatron_shards(shards: list[Mapping[str, Any]], directory: str | os.PathLike, *,
                         dtype: Any = None) -> list[str]:
    """Writes ``mp_rank_XX_model_states.pt`` files (``{'module': {name: tensor}}``, the
    DeepSpeed layout PLUG's loaders read). ``dtype``: a torch dtype (e.g. ``torch.float16``,
    the published precision); ``None`` keeps float32. Returns the file paths."""
    import torch

    d = os.fspath(directory)
    os.makedirs(d, exist_ok=True)
    files = []
    for r, sd in enumerate(shards):
        tensors = {}
        for k, v in sd.items():
            t = torch.from_numpy(np.ascontiguousarray(v))
            tensors[k] = t.to(dtype) if dtype is not None else t
        path = os.path.join(d, f"mp_rank_{r:02d}_model_states.pt")
        torch.save({"module": tensors}, path)
        files.append(path)
    return files


def load_plug_checkpoint(directory: str | os.PathLike, config: Any, *,
                         num_ranks: int | None = None, embedding_norm: str = "error",
                         strict: bool = True, dtype: Any = np.float32) -> dict:
    """``PlugModel(config)`` params from PLUG's tensor-parallel files: merge the
    ``mp_rank_XX_model_states.pt`` shards of ``directory`` (see
    :func:`~plug_jax.convert.megatron.merge_plug_checkpoint`; ``num_ranks=None`` accepts any
    count, 8 for the release) and map them with :func:`plug_from_merged_state_dict`."""
    from plug_jax.convert.megatron import merge_plug_checkpoint

    _check_config(config, "load_plug_checkpoint")
    merged = merge_plug_checkpoint(directory, num_ranks=num_ranks, dtype=dtype)
    return plug_from_merged_state_dict(merged, config, embedding_norm=embedding_norm,
                                       strict=strict, dtype=dtype)


__all__ = ["load_plug_checkpoint", "plug_from_merged_state_dict", "plug_to_megatron_shards",
           "plug_to_merged_state_dict", "save_megatron_shards"]
