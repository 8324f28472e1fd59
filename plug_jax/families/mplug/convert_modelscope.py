"""modelscope mPLUG model dirs <-> :class:`plug_jax.families.mplug.network.MPlug` params.

A released modelscope mPLUG dir holds ``config.yaml`` (``MPlugConfig`` keyword arguments),
``config_bert.json`` (the shared BERT config plus mPLUG's ``text_encoder_layers``,
``fusion_layers``, ``stride_layer``, ``text_decode_layers``) and ``pytorch_model.bin`` (the
``MPlugFor*`` state dict). The tensor names and where each goes are tabled in
:mod:`plug_jax.families.mplug.network`'s docstring; this module implements that table.

* :func:`config_from_modelscope` -- our :class:`MPlugConfig` of a dir.
* :func:`from_modelscope` -- ``(config, params)`` of a dir or a state dict. The weights file
  is read only through :mod:`plug_jax.convert.io` (``torch.load(weights_only=True)``; no
  pickle code runs). ``model.`` / ``module.`` wrappers are stripped. Tensors mPLUG never runs
  are skipped *by name group* and each group is named in ``report``: the CLIP text tower in
  ``visual_encoder.*``, the fusion layers below the start layer, the ALBEF momentum copies
  (``*_m``), the queues, the ``position_ids`` buffers and the tied decoder copies
  (``cls.predictions.decoder.{weight,bias}``, checked equal to what they are tied to). Any
  other unknown tensor, and any missing one, is a one-line ``ValueError`` naming it.
* :func:`to_modelscope` -- the inverse: a state dict in the released names (plus the tied
  decoder copies and ``position_ids`` buffers modelscope's classes carry), so that
  ``from_modelscope(to_modelscope(config, params), config)`` gives ``params`` back exactly.

Task heads: a released dir holds only the heads its task uses. VQA and caption dirs have no
``vision_proj`` / ``text_proj`` / ``itm_head`` / ``temp`` (:data:`RETRIEVAL_HEADS`); retrieval
dirs have no ``text_decoder`` (:data:`DECODER`). By default a missing tensor is an error; pass
``allow_missing=RETRIEVAL_HEADS`` (or ``DECODER``, or any prefixes of our parameter paths) to
initialise those parts freshly (``MPlug``'s own initialisers, ``seed``); ``report`` names them.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.mplug.config import MPlugConfig
from plug_jax.layers.clip import CLIPVisionConfig

# Prefixes of our parameter paths that a released dir may lack (see the module docstring).
RETRIEVAL_HEADS = ("vision_proj", "text_proj", "itm_head", "temp")
DECODER = ("decoder",)

# OpenAI CLIP vision towers by modelscope's clip_name: (width, layers, patch, embed_dim).
_CLIP_NAMES = {"ViT-B-16": (768, 12, 16, 512), "ViT-L-14": (1024, 24, 14, 768),
               "ViT-L-14-336": (1024, 24, 14, 768)}
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu", "silu": "silu"}
_QUEUES = ("image_queue", "text_queue", "idx_queue", "queue_ptr")
_TIED_W = "text_decoder.cls.predictions.decoder.weight"
_TIED_B = "text_decoder.cls.predictions.decoder.bias"
_WORD = "text_decoder.bert.embeddings.word_embeddings.weight"
_OUT_BIAS = "text_decoder.cls.predictions.bias"
_POSITION_IDS = ("text_encoder.embeddings.position_ids",
                 "text_decoder.bert.embeddings.position_ids")
_CLIP_TEXT = re.compile(r"visual_encoder\.(token_embedding|positional_embedding|transformer|"
                        r"ln_final|text_projection|logit_scale)(\.|$)")


# ------------------------------------------------------------------------------ config
def _read_yaml(path: str) -> dict:
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - PyYAML is in the dev env
        raise cio.WeightsLoadError(f"reading {path} needs PyYAML (pip install pyyaml)") from e
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise cio.WeightsLoadError(f"{path} does not exist (a modelscope mPLUG dir has "
                                   f"config.yaml)") from None
    except (OSError, yaml.YAMLError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise cio.WeightsLoadError(f"cannot parse {path} as YAML ({first})") from None
    if not isinstance(data, dict):
        raise cio.WeightsLoadError(f"{path} must hold a mapping, found {type(data).__name__}")
    return data


def config_from_modelscope(model_dir: str | os.PathLike, **overrides) -> MPlugConfig:
    """Our :class:`MPlugConfig` of a modelscope mPLUG dir (``config.yaml`` +
    ``config_bert.json``, or the file ``config.yaml`` names in ``bert_config``).

    The vision tower is OpenAI CLIP's ``VisionTransformer``: ``clip_vision_{width,layers,
    patch_size}`` (defaults from ``clip_name``), heads = width // 64, MLP 4 x width, QuickGELU,
    LayerNorm eps 1e-5, at ``image_res`` (checkpoints hold the resized position table).
    ``visn_fc`` exists iff ``vision_width != hidden_size`` (as in ``MPlug.module_setting``).
    ``overrides`` (``dtype``, ``scan_layers``, ...) go to :class:`MPlugConfig`.
    """
    api = "config_from_modelscope"
    d = os.fspath(model_dir)
    y = _read_yaml(os.path.join(d, "config.yaml"))
    b = cio.read_json(os.path.join(d, os.path.basename(str(y.get("bert_config") or
                                                           "config_bert.json"))))
    name = y.get("clip_name", "ViT-B-16")
    width, layers, patch, embed = _CLIP_NAMES.get(name, (None, None, None, None))
    width = int(y.get("clip_vision_width") or width or 0)
    layers = int(y.get("clip_vision_layers") or layers or 0)
    patch = int(y.get("clip_vision_patch_size") or patch or 0)
    if not (width and layers and patch):
        raise ValueError(f"{api}: clip_name {name!r} is not one of {sorted(_CLIP_NAMES)} and "
                         f"config.yaml lacks clip_vision_width/layers/patch_size")
    vision = CLIPVisionConfig(
        image_size=int(y.get("image_res", 224)), patch_size=patch, width=width, layers=layers,
        heads=width // 64, mlp_dim=4 * width,
        projection_dim=int(y.get("clip_embed_dim") or embed or 512),
        **{k: v for k, v in overrides.items()
           if k in ("dtype", "param_dtype", "scan_layers", "remat_policy")})
    act = b.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"{api}: config_bert.json hidden_act {act!r} is not supported; "
                         f"supported: {', '.join(sorted(_ACTIVATIONS))}")
    hidden = int(b["hidden_size"])
    total = int(b.get("num_hidden_layers", 12))
    kw = dict(
        vision=vision, vocab_size=int(b["vocab_size"]), hidden_size=hidden,
        num_heads=int(b["num_attention_heads"]), ffn_size=int(b["intermediate_size"]),
        max_position_embeddings=int(b.get("max_position_embeddings", 512)),
        type_vocab_size=int(b.get("type_vocab_size", 2)),
        layer_norm_epsilon=float(b.get("layer_norm_eps", 1e-12)),
        activation=_ACTIVATIONS[act],
        text_layers=int(b.get("text_encoder_layers", 6)),
        fusion_layers=int(b.get("fusion_layers", 6)), stride=int(b.get("stride_layer", 3)),
        decoder_layers=int(b.get("text_decode_layers", 12)), fusion_total_layers=total,
        vision_proj_to_text=int(y.get("vision_width", width)) != hidden,
        embed_dim=int(y.get("embed_dim", 256)), temp_init=float(y.get("temp", 0.07)),
        dropout_rate=float(b.get("hidden_dropout_prob", 0.1)),
        attention_dropout_rate=float(b.get("attention_probs_dropout_prob", 0.1)),
        initializer_range=float(b.get("initializer_range", 0.02)))
    kw.update(overrides)
    return MPlugConfig(**kw)


# --------------------------------------------------------------------- key layout
Entry = tuple[str, str, str]  # (modelscope key, our param path, transform)


def _transforms(width: int, heads: int) -> dict[str, tuple[Callable, Callable]]:
    """(import, export) array transforms for a stack of ``width`` / ``heads``."""
    hd = width // heads

    def c(x):  # np.ascontiguousarray would turn the 0-d temp into shape (1,)
        return np.require(x, requirements="C")

    return {
        "copy": (lambda x: c(x), lambda x: c(x)),
        "linear": (lambda w: c(w.T), lambda k: c(k.T)),
        "qkv_w": (lambda w: c(w.T).reshape(width, heads, hd),
                  lambda k: c(k.reshape(width, heads * hd).T)),
        "qkv_b": (lambda b: c(b).reshape(heads, hd), lambda b: c(b).reshape(heads * hd)),
        "out_w": (lambda w: c(w.T).reshape(heads, hd, width),
                  lambda k: c(k.reshape(heads * hd, width).T)),
        "conv": (lambda w: c(w.transpose(2, 3, 1, 0)), lambda k: c(k.transpose(3, 2, 0, 1))),
    }


def _dense(key: str, path: str, w: str = "linear", b: str = "copy") -> list[Entry]:
    return [(f"{key}.weight", f"{path}/kernel", w), (f"{key}.bias", f"{path}/bias", b)]


def _ln(key: str, path: str) -> list[Entry]:
    return [(f"{key}.weight", f"{path}/scale", "copy"), (f"{key}.bias", f"{path}/bias", "copy")]


# CLIP resblock; ``attn.{q,k,v}_part`` are the three thirds of ``attn.in_proj_{weight,bias}``.
_VISION_LAYER: list[Entry] = (
    [e for n, p in (("q", "query"), ("k", "key"), ("v", "value"))
     for e in _dense(f"attn.{n}_part", f"attn/{p}", "qkv_w", "qkv_b")]
    + _dense("attn.out_proj", "attn/out", "out_w") + _ln("ln_1", "attn_norm")
    + _dense("mlp.c_fc", "mlp/wi") + _dense("mlp.c_proj", "mlp/wo") + _ln("ln_2", "mlp_norm"))
_VISION_TOP: list[Entry] = (
    [("class_embedding", "class_embed/embedding", "copy"),
     ("positional_embedding", "pos_embed/embedding", "copy"),
     ("conv1.weight", "patch_embed/kernel", "conv"), ("proj", "projection/kernel", "copy")]
    + _ln("ln_pre", "pre_norm") + _ln("ln_post", "post_norm"))


def _bert_layer(cross: bool) -> list[Entry]:
    e = [x for n in ("query", "key", "value")
         for x in _dense(f"attention.self.{n}", f"attn/{n}", "qkv_w", "qkv_b")]
    e += _dense("attention.output.dense", "attn/out", "out_w")
    e += _ln("attention.output.LayerNorm", "attn_norm")
    if cross:
        e += [x for n in ("query", "key", "value")
              for x in _dense(f"crossattention.self.{n}", f"cross_attn/{n}", "qkv_w", "qkv_b")]
        e += _dense("crossattention.output.dense", "cross_attn/out", "out_w")
        e += _ln("crossattention.output.LayerNorm", "cross_attn_norm")
    e += _dense("intermediate.dense", "mlp/wi") + _dense("output.dense", "mlp/wo")
    e += _ln("output.LayerNorm", "mlp_norm")
    return e


_BERT_EMBED: list[Entry] = (
    [("embeddings.word_embeddings.weight", "word_embed/embedding", "copy"),
     ("embeddings.position_embeddings.weight", "pos_embed/embedding", "copy"),
     ("embeddings.token_type_embeddings.weight", "type_embed/embedding", "copy")]
    + _ln("embeddings.LayerNorm", "embed_norm"))
_LM_HEAD: list[Entry] = (
    _dense("text_decoder.cls.predictions.transform.dense", "decoder/lm_head/transform")
    + _ln("text_decoder.cls.predictions.transform.LayerNorm", "decoder/lm_head/norm")
    + [(_OUT_BIAS, "decoder/lm_head/output_bias", "copy")])


def _layout(config: MPlugConfig) -> list[tuple[list[Entry], str, int, str | None]]:
    """Groups ``(entries, transform key, width or 0, stack)``: ``stack`` is the param path of
    a layer stack whose entries are per layer (``{i}`` in keys and ``(i)`` in paths)."""
    from plug_jax.layers.clip import check_released_stem
    v = config.vision
    check_released_stem(v, "the modelscope mPLUG layout")
    groups = []
    vis = "visual_encoder.visual."
    groups.append(([(vis + k, "vision/" + p, t) for k, p, t in _VISION_TOP], "vision", 0, None))
    groups.append(([(f"{vis}transformer.resblocks.{{i}}.{k}", p, t) for k, p, t in _VISION_LAYER],
                   "vision", v.layers, "vision/stack"))
    if config.vision_proj_to_text:
        groups.append((_dense("visn_fc", "vision_to_text/fc") +
                       _ln("visn_layer_norm", "vision_to_text/norm"), "bert", 0, None))
    groups.append(([("text_encoder." + k, "text_encoder/" + p, t) for k, p, t in _BERT_EMBED],
                   "bert", 0, None))
    groups.append(([(f"text_encoder.encoder.layer.{{i}}.{k}", p, t)
                    for k, p, t in _bert_layer(False)], "bert", config.text_layers,
                   "text_encoder/stack"))
    s = config.fusion_start_layer
    groups.append(([(f"fusion_encoder.encoder.layer.{s + j}.{k}", f"fusion/layers_{j}/{p}", t)
                    for j in range(config.fusion_layers) for k, p, t in _bert_layer(True)],
                   "bert", 0, None))
    groups.append(([("text_decoder.bert." + k, "decoder/bert/" + p, t) for k, p, t in _BERT_EMBED]
                   + _LM_HEAD, "bert", 0, None))
    if not config.tie_decoder_embeddings:
        groups.append(([(_TIED_W, "decoder/output_embedding", "copy")], "bert", 0, None))
    groups.append(([(f"text_decoder.bert.encoder.layer.{{i}}.{k}", p, t)
                    for k, p, t in _bert_layer(True)], "bert", config.decoder_layers,
                   "decoder/bert/stack"))
    groups.append((_dense("vision_proj", "vision_proj") + _dense("text_proj", "text_proj")
                   + _dense("itm_head", "itm_head") + [("temp", "temp", "copy")], "bert", 0,
                   None))
    return groups


def _entries(config: MPlugConfig) -> list[tuple[str, str, str, str, int | None]]:
    """``(key, path, transform, tf family, layer index or None, stack or None)``; ``path`` is
    relative to the layer for stack entries, else our flat param path."""
    out = []
    for entries, fam, n, stack in _layout(config):
        if stack is None:
            out += [(k, p, t, fam, None, None) for k, p, t in entries]
        else:
            out += [(k.format(i=i), p, t, fam, i, stack) for i in range(n) for k, p, t in entries]
    return out


def _tf(config: MPlugConfig) -> dict[str, dict]:
    return {"vision": _transforms(config.vision.width, config.vision.heads),
            "bert": _transforms(config.hidden_size, config.num_heads)}


# ------------------------------------------------------------------------------ import
def _strip(sd: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in sd.items():
        key = k
        while key.startswith(("model.", "module.")):
            key = key.split(".", 1)[1]
        if key in out:
            raise ValueError(f"from_modelscope: tensor {k!r} repeats {key!r} after stripping the "
                             f"model./module. wrappers")
        out[key] = v
    return out


def _split_in_proj(sd: dict[str, Any], width: int) -> None:
    """``attn.in_proj_{weight,bias}`` -> ``attn.{q,k,v}_part.{weight,bias}`` (in place)."""
    for k in [k for k in sd if k.startswith("visual_encoder.visual.")
              and k.endswith((".attn.in_proj_weight", ".attn.in_proj_bias"))]:
        x = cio.to_numpy(sd.pop(k))
        if x.shape[0] != 3 * width:
            raise ValueError(f"from_modelscope: tensor {k!r} has shape {x.shape}, expected "
                             f"[{3 * width}, ...] for vision width {width}")
        stem, kind = k.rsplit(".in_proj_", 1)
        for n, part in zip("qkv", np.split(x, 3, axis=0)):
            sd[f"{stem}.{n}_part.{kind}"] = part


def _skip_groups(keys: Sequence[str], config: MPlugConfig) -> dict[str, list[str]]:
    """Known tensors mPLUG does not run, by group (each group named in the report)."""
    s = config.fusion_start_layer
    lower = re.compile(r"fusion_encoder\.encoder\.layer\.(\d+)\.")
    groups: dict[str, list[str]] = {}
    for k in keys:
        top = k.split(".", 1)[0]
        m = lower.match(k)
        if top.endswith("_m"):
            g = "momentum copies (*_m, ALBEF distillation)"
        elif k in _QUEUES:
            g = "queues (image_queue, text_queue, idx_queue, queue_ptr)"
        elif k.endswith(".position_ids"):
            g = "position_ids buffers"
        elif _CLIP_TEXT.match(k):
            g = "unused CLIP text tower (visual_encoder.{token_embedding, positional_embedding, " \
                "transformer, ln_final, text_projection, logit_scale})"
        elif m and int(m.group(1)) < s:
            g = f"fusion layers below the start layer {s} (never run)"
        elif config.tie_decoder_embeddings and k in (_TIED_W, _TIED_B):
            g = "tied decoder copies (cls.predictions.decoder.{weight,bias})"
        elif not config.tie_decoder_embeddings and k == _TIED_B:
            g = "tied decoder copies (cls.predictions.decoder.bias)"
        else:
            continue
        groups.setdefault(g, []).append(k)
    return groups


def _init_missing(config: MPlugConfig, paths: Sequence[str], seed: int) -> dict[str, np.ndarray]:
    """Fresh values (MPlug's initialisers) of ``paths``; XLA drops the rest of the init."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from plug_jax.families.mplug.network import MPlug

    v = config.vision
    images = jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
    ids = jnp.zeros((1, 4), jnp.int32)

    def init():
        p = cio.flatten_tree(nn.unbox(MPlug(config).init(jax.random.PRNGKey(seed), images,
                                                         ids)["params"]))
        return {k: p[k] for k in paths}

    return {k: np.asarray(x, np.float32) for k, x in jax.jit(init)().items()}


def _abstract_flat(config: MPlugConfig) -> dict[str, tuple]:
    from flax import linen as nn

    from plug_jax.families.mplug.network import abstract_params
    flat = cio.flatten_tree(nn.unbox(abstract_params(config)))
    return {k: tuple(x.shape) for k, x in flat.items()}


def from_modelscope(model_dir_or_state_dict: Any, config: MPlugConfig | None = None, *,
                    report: list | None = None, allow_missing: Sequence[str] = (),
                    seed: int = 0) -> tuple[MPlugConfig, dict]:
    """``(config, params)`` (plain nested dicts of float32 numpy) of ``MPlug(config)``.

    ``model_dir_or_state_dict``: a modelscope mPLUG dir (``pytorch_model.bin`` read safely,
    config from :func:`config_from_modelscope` unless ``config`` is given) or a state dict
    (torch tensors or numpy; ``config`` required). ``report``: a list that gets one line per
    group of skipped or freshly initialised tensors. ``allow_missing``: prefixes of our param
    paths (e.g. :data:`RETRIEVAL_HEADS`, :data:`DECODER`) that may be absent and are then
    initialised with ``seed``; anything else absent is an error.
    """
    api = "from_modelscope"
    if isinstance(model_dir_or_state_dict, (str, os.PathLike)):
        d = os.fspath(model_dir_or_state_dict)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{api}: {d} is not a modelscope model dir")
        config = config if config is not None else config_from_modelscope(d)
        sd = cio.load_weights_files(cio.find_hf_weights(d))
    elif isinstance(model_dir_or_state_dict, Mapping):
        if config is None:
            raise ValueError(f"{api}: a state dict needs config= (config_from_modelscope reads "
                             f"one from a model dir)")
        sd = dict(model_dir_or_state_dict)
    else:
        raise TypeError(f"{api}: expected a model dir or a state dict, got "
                        f"{type(model_dir_or_state_dict).__name__}")
    sd = _strip(sd)
    _split_in_proj(sd, config.vision.width)
    entries = _entries(config)
    wanted = {e[0] for e in entries}
    skipped = _skip_groups([k for k in sd if k not in wanted], config)
    skipped_keys = {k for ks in skipped.values() for k in ks}
    unknown = sorted(k for k in sd if k not in wanted and k not in skipped_keys)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ValueError(f"{api}: unexpected tensor {unknown[0]!r}{more} is not part of an mPLUG "
                         f"checkpoint of this config (text_layers={config.text_layers}, fusion "
                         f"layers {config.fusion_start_layer}..{config.fusion_total_layers - 1}, "
                         f"decoder_layers={config.decoder_layers})")
    allow = tuple(allow_missing)

    def allowed(path: str) -> bool:
        return any(path == a or path.startswith(a.rstrip("/") + "/") for a in allow)

    missing = [(k, f"{stack}/{p}" if stack else p) for k, p, _, _, _, stack in entries
               if k not in sd]
    fatal = [(k, p) for k, p in missing if not allowed(p)]
    if fatal:
        k, p = fatal[0]
        more = f" (and {len(fatal) - 1} more)" if len(fatal) > 1 else ""
        raise ValueError(f"{api}: missing tensor {k!r}{more} (our {p}); a VQA/caption dir lacks "
                         f"the retrieval heads, a retrieval dir the decoder: pass allow_missing="
                         f"RETRIEVAL_HEADS / DECODER to initialise them freshly")
    tfs = _tf(config)
    flat: dict[str, np.ndarray] = {}
    stacks: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    missing_keys = {k for k, _ in missing}
    for key, path, kind, fam, i, stack in entries:
        if key in missing_keys:
            continue
        raw = sd[key]
        x = cio.to_numpy(raw).reshape(tuple(np.shape(raw)))
        try:
            val = np.require(tfs[fam][kind][0](x), np.float32, "C")
        except ValueError:
            raise ValueError(f"{api}: tensor {key!r} has shape {x.shape}, which does not fit the "
                             f"config; does the config match the checkpoint?") from None
        if stack is None:
            flat[path] = val
        else:
            stacks.setdefault(stack, {}).setdefault(i, {})[path] = val
    # checks on the tied copies
    if config.tie_decoder_embeddings and _TIED_W in sd and _WORD in sd:
        if not np.array_equal(cio.to_numpy(sd[_TIED_W]), cio.to_numpy(sd[_WORD])):
            raise ValueError(f"{api}: {_TIED_W!r} differs from {_WORD!r} but the config ties "
                             f"them; pass a config with tie_decoder_embeddings=False")
    if _TIED_B in sd and _OUT_BIAS in sd:
        if not np.array_equal(cio.to_numpy(sd[_TIED_B]), cio.to_numpy(sd[_OUT_BIAS])):
            raise ValueError(f"{api}: {_TIED_B!r} differs from {_OUT_BIAS!r}; mPLUG's LM head "
                             f"has one output bias")
    # stacks (only complete ones; a missing stack is initialised below)
    shapes = _abstract_flat(config)
    for stack, layers in stacks.items():
        n = {"vision/stack": config.vision.layers, "text_encoder/stack": config.text_layers,
             "decoder/bert/stack": config.decoder_layers}[stack]
        if len(layers) != n or len({len(v) for v in layers.values()}) != 1:
            raise ValueError(f"{api}: {stack} is only partly in the checkpoint; give all of its "
                             f"layers or none (with allow_missing)")
        assembled = cio.assemble_decoder([cio.unflatten_tree(layers[i]) for i in range(n)],
                                         config.scan_layers)
        flat.update({f"{stack}/{k}": v for k, v in cio.flatten_tree(assembled).items()})
    absent = sorted(k for k in shapes if k not in flat)
    if absent:
        bad = [k for k in absent if not allowed(k)]
        if bad:  # pragma: no cover - guarded by the missing-tensor check above
            raise ValueError(f"{api}: params lack {bad[0]}")
        flat.update(_init_missing(config, absent, seed))
        if report is not None:
            tops = sorted({a for a in allow for k in absent if allowed(k) and
                           (k == a or k.startswith(a.rstrip("/") + "/"))})
            report.append(f"freshly initialised (absent from the checkpoint, allowed): "
                          f"{', '.join(tops)} ({len(absent)} params, seed {seed})")
    for k, v in flat.items():
        if k not in shapes:
            raise ValueError(f"{api}: converted {k} is not a parameter of MPlug(config)")
        if tuple(v.shape) != shapes[k]:
            raise ValueError(f"{api}: converted {k} has shape {tuple(v.shape)}, MPlug(config) "
                             f"expects {shapes[k]}; does the config match the checkpoint?")
    if report is not None:
        for g, ks in skipped.items():
            report.append(f"skipped {len(ks)} tensors: {g}")
    return config, cio.unflatten_tree(flat)


# ---------------------------------------------------------------- momentum state (ALBEF)
# released momentum copy prefix -> the online prefix whose layout it repeats
_MOMENTUM_PREFIXES = {"visual_encoder_m.": "visual_encoder.", "text_encoder_m.": "text_encoder.",
                      "vision_proj_m.": "vision_proj.", "text_proj_m.": "text_proj.",
                      "visn_fc_m.": "visn_fc.", "visn_layer_norm_m.": "visn_layer_norm."}
# our top-level groups with momentum copies (models.image_text_pretrain.MOMENTUM_KEYS)
_GROUP_PREFIX = {"vision": "visual_encoder.", "vision_to_text": "visn_",
                 "text_encoder": "text_encoder.", "vision_proj": "vision_proj.",
                 "text_proj": "text_proj."}
MODEL_STATE_FILE = "model_state.npz"  # = plug_jax.trainer.checkpointing.MODEL_STATE_FILE


def momentum_state_from_modelscope(model_dir_or_state_dict: Any,
                                   config: MPlugConfig | None = None) -> dict | None:
    """The released ALBEF momentum state in the layout of
    ``models.ImageTextPretrain(momentum_distillation=True).init_state`` (numpy), or ``None``
    when the checkpoint has no momentum copies (VQA / caption dirs save none).

    ``params_m``: the ``*_m`` copies (``visual_encoder_m``, ``text_encoder_m``,
    ``vision_proj_m``, ``text_proj_m``; large also ``visn_fc_m`` / ``visn_layer_norm_m``),
    converted exactly as their online tensors are. ``image_queue`` / ``text_queue``: the
    released ``[embed_dim, queue_size]`` buffers transposed to ``[queue_size, embed_dim]``;
    ``queue_ptr`` as saved. ``idx_queue`` is reset to -1 (nobody's positive): the released
    one holds image ids, ours keys positives by a caption hash, so the saved ids would not
    match ours."""
    if isinstance(model_dir_or_state_dict, (str, os.PathLike)):
        d = os.fspath(model_dir_or_state_dict)
        config = config if config is not None else config_from_modelscope(d)
        sd = cio.load_weights_files(cio.find_hf_weights(d))
    else:
        if config is None:
            raise ValueError("momentum_state_from_modelscope: a state dict needs config=")
        sd = dict(model_dir_or_state_dict)
    sd = _strip(sd)
    online = {}
    for k, v in sd.items():
        for m, o in _MOMENTUM_PREFIXES.items():
            if k.startswith(m):
                online[o + k[len(m):]] = v
    if not online:
        return None
    missing = [k for k in _QUEUES if k not in sd]
    if missing:
        raise ValueError(f"momentum_state_from_modelscope: the checkpoint has momentum copies "
                         f"but not {missing}; fix: pass the whole retrieval / pre-training "
                         f"state dict")
    # the copies through the online conversion; every other group is absent and allowed
    allow = ("fusion", "decoder", "itm_head", "temp") + tuple(
        g for g, pre in _GROUP_PREFIX.items() if not any(k.startswith(pre) for k in online))
    _, params = from_modelscope(online, config, allow_missing=allow)
    params_m = {g: params[g] for g in _GROUP_PREFIX if g in params and g not in allow}
    queue = lambda k: np.ascontiguousarray(cio.to_numpy(sd[k]), np.float32).T  # noqa: E731
    image_q, text_q = queue("image_queue"), queue("text_queue")
    return {"params_m": params_m, "image_queue": image_q, "text_queue": text_q,
            "idx_queue": np.full((image_q.shape[0],), -1, np.int32),
            "queue_ptr": np.asarray(int(np.ravel(cio.to_numpy(sd["queue_ptr"]))[0])
                                    % image_q.shape[0], np.int32)}


def save_model_state(state: Mapping, path: str) -> None:
    """``state`` (nested dicts of arrays) as one ``.npz`` of ``'a/b/c'`` keys (no pickle)."""
    flat = cio.flatten_tree(dict(state))
    np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


# ------------------------------------------------------------------------------ export
def to_modelscope(config: MPlugConfig, params: Mapping, *, as_torch: bool = False) -> dict:
    """A modelscope ``MPlugFor*`` state dict (float32 numpy; torch tensors with ``as_torch``)
    from ``MPlug(config)`` params (scanned or not as ``config.scan_layers`` says; boxed or
    not). Includes the tied decoder copies and the ``position_ids`` buffers; not the CLIP text
    tower, the lower fusion layers, momentum copies or queues (modelscope loads with
    ``strict=False`` and never runs them)."""
    api = "to_modelscope"
    p = cio.flatten_tree(cio.unbox_params(params))
    tfs = _tf(config)
    out: dict[str, Any] = {}
    split: dict[str, list] = {}
    for key, path, kind, fam, i, stack in _entries(config):
        if stack is None:
            if path not in p:
                raise ValueError(f"{api}: params lack {path}")
            x = np.asarray(p[path], np.float32)
        else:
            if stack not in split:
                sub = cio.unflatten_tree({k[len(stack) + 1:]: v for k, v in p.items()
                                          if k.startswith(stack + "/")})
                if not sub:
                    raise ValueError(f"{api}: params lack {stack}")
                n = {"vision/stack": config.vision.layers,
                     "text_encoder/stack": config.text_layers,
                     "decoder/bert/stack": config.decoder_layers}[stack]
                split[stack] = [cio.flatten_tree(layer)
                                for layer in cio.split_layers(sub, n, api)]
            layer = split[stack][i]
            if path not in layer:
                raise ValueError(f"{api}: params lack {stack} layer {i} {path}")
            x = np.asarray(layer[path], np.float32)
        out[key] = np.require(tfs[fam][kind][1](x), np.float32, "C")
    # re-fuse the CLIP in_proj thirds
    for k in [k for k in out if k.endswith(".attn.q_part.weight") or
              k.endswith(".attn.q_part.bias")]:
        stem, kind = k.rsplit(".q_part.", 1)
        parts = [out.pop(f"{stem}.{n}_part.{kind}") for n in "qkv"]
        out[f"{stem}.in_proj_{kind}"] = np.ascontiguousarray(np.concatenate(parts, 0))
    if config.tie_decoder_embeddings:
        out[_TIED_W] = out[_WORD].copy()
    out[_TIED_B] = out[_OUT_BIAS].copy()
    for k in _POSITION_IDS:
        out[k] = np.arange(config.max_position_embeddings, dtype=np.int64)[None]
    if not as_torch:
        return out
    import torch
    return {k: torch.from_numpy(v) for k, v in out.items()}


# ------------------------------------------------------------------------------ writing
_ACTIVATION_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def modelscope_configs(config: MPlugConfig) -> tuple[dict, dict]:
    """``(config.yaml mapping, config_bert.json mapping)`` of ``config``: what
    :func:`config_from_modelscope` reads back to ``config`` (dtype, scan and ``preset``
    aside). The layout fixes the CLIP vision heads (``width // 64``), MLP (``4 x width``),
    activation (QuickGELU) and LayerNorm eps (1e-5); a config that differs is refused in one
    line naming the field."""
    api = "to modelscope"
    v = config.vision
    fixed = {"heads": v.width // 64, "mlp_dim": 4 * v.width, "activation": "quick_gelu",
             "layer_norm_eps": 1e-5}
    for field, want in fixed.items():
        if getattr(v, field) != want:
            raise ValueError(f"{api}: the modelscope mPLUG layout has CLIP vision {field} = "
                             f"{want} for width {v.width}; this config has "
                             f"{getattr(v, field)} (fix: vision.{field}={want!r})")
    if config.activation not in _ACTIVATION_NAMES:
        raise ValueError(f"{api}: activation {config.activation!r} has no config_bert.json "
                         f"hidden_act; use one of {sorted(_ACTIVATION_NAMES)}")
    if (config.vision.width != config.hidden_size) != config.vision_proj_to_text:
        raise ValueError(f"{api}: modelscope adds visn_fc exactly when the vision width "
                         f"{v.width} differs from hidden_size {config.hidden_size}; this config "
                         f"has vision_proj_to_text={config.vision_proj_to_text}")
    clip_name = {768: "ViT-B-16", 1024: "ViT-L-14"}.get(v.width, "ViT-B-16")
    yml = {"bert_config": "config_bert.json", "image_res": v.image_size,
           "vision_width": v.width, "distill": False, "clip_name": clip_name,
           "clip_embed_dim": v.projection_dim, "clip_vision_layers": v.layers,
           "clip_vision_width": v.width, "clip_vision_patch_size": v.patch_size,
           "embed_dim": config.embed_dim, "temp": float(config.temp_init)}
    bert = {"architectures": ["BertForMaskedLM"], "model_type": "bert",
            "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
            "num_hidden_layers": config.fusion_total_layers,
            "num_attention_heads": config.num_heads, "intermediate_size": config.ffn_size,
            "hidden_act": _ACTIVATION_NAMES[config.activation],
            "hidden_dropout_prob": config.dropout_rate,
            "attention_probs_dropout_prob": config.attention_dropout_rate,
            "max_position_embeddings": config.max_position_embeddings,
            "type_vocab_size": config.type_vocab_size,
            "initializer_range": config.initializer_range,
            "layer_norm_eps": config.layer_norm_epsilon, "pad_token_id": 0,
            "text_encoder_layers": config.text_layers,
            "text_decode_layers": config.decoder_layers,
            "fusion_layers": config.fusion_layers, "stride_layer": config.stride,
            "encoder_width": config.hidden_size, "fusion_layer": 0}
    return yml, bert


def save_modelscope(config: MPlugConfig, params: Mapping, out_dir: str,
                    task: str = "visual-question-answering") -> str:
    """Writes a modelscope mPLUG dir of ``params``: ``config.yaml``, ``config_bert.json``,
    ``configuration.json`` (``task``) and ``pytorch_model.bin`` (``torch.save`` of
    :func:`to_modelscope`). ``plug-convert --family mplug --to modelscope``. Returns a short
    description."""
    import json

    import torch
    import yaml

    yml, bert = modelscope_configs(config)  # refuses what the layout cannot hold, first
    sd = to_modelscope(config, params, as_torch=True)
    os.makedirs(out_dir, exist_ok=True)
    torch.save(sd, os.path.join(out_dir, "pytorch_model.bin"))
    with open(os.path.join(out_dir, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(dict(yml, task=task), f, sort_keys=True)
    with open(os.path.join(out_dir, "config_bert.json"), "w", encoding="utf-8") as f:
        json.dump(bert, f, indent=2, sort_keys=True)
    with open(os.path.join(out_dir, "configuration.json"), "w", encoding="utf-8") as f:
        json.dump({"framework": "pytorch", "task": task, "model": {"type": "mplug"}}, f,
                  indent=2)
    return (f"modelscope mPLUG config.yaml + config_bert.json + configuration.json + "
            f"pytorch_model.bin ({len(sd)} tensors, task {task})")
