"""ModelScope StructBERT directories <-> the plug_jax ``structbert`` family.

What the ``modelscope`` package's own classes write (read from modelscope 1.40's source):

* ``config.json``: ``modelscope.models.nlp.structbert.configuration.SbertConfig``
  (``"model_type": "structbert"``, BERT's field names, plus ``adv_grad_factor`` / ``sigma``
  / ``adv_bound`` / ``classifier_dropout``, which are training-only and ignored here).
* fill-mask, ``modelscope.models.nlp.structbert.fill_mask.SbertForMaskedLM``:
  ``bert.*`` (``SbertModel``, base_model_prefix ``bert``: BERT's names, its pooler, the
  persistent ``bert.embeddings.position_ids`` buffer) and
  ``cls.predictions.transform.{dense,LayerNorm}.*`` + ``cls.predictions.decoder.{weight,bias}``:
  the decoder weight is tied to the word embeddings and the decoder's own bias is the output
  bias (no separate ``cls.predictions.bias``), and there is **no** ``cls.seq_relationship``.
* classification, ``modelscope.models.nlp.structbert.text_classification.
  SbertForSequenceClassification``: ``bert.*`` + ``classifier.{weight,bias}`` with
  ``config.num_labels`` rows (dropout, then a linear map of the pooled vector).
* backbone, ``modelscope.models.nlp.structbert.backbone.SbertModel``: the encoder and pooler
  without prefix.
* weights: ``pytorch_model.bin``, ``torch.save(model.state_dict())`` (``TorchModel.
  save_pretrained`` with ``modelscope.utils.checkpoint.save_checkpoint(with_meta=False)``,
  also what the trainer's ``CheckpointProcessor`` writes), or ``*.safetensors``.
* labels (classification): found in modelscope's own order
  (``modelscope.utils.hub.parse_label_mapping`` then the transformers config):
  ``label_mapping.json``, ``configuration.json`` (``model.label2id`` / ``model.id2label`` /
  ``preprocessor.label2id`` / ``preprocessor.id2label``), ``config.json``
  (``label2id`` / ``id2label`` / ``num_labels``; none of them: transformers' default 2).

Import targets (from what the file holds): ``classifier.*`` ->
``StructBERTForSequenceClassification`` params ``{encoder, pooler, classifier}``;
``cls.*`` -> ``StructBERTForPreTraining`` params (every head); neither -> ``{encoder,
pooler}``. A tensor the target needs and the file lacks is an error, unless its name starts
with a prefix of ``allow_missing`` (``--allow_missing=cls.seq_relationship``): then it is
initialised fresh (kernels / embeddings normal(``initializer_range``), biases 0, LayerNorm
scales 1; numpy seed 0) and reported. A fresh sentence head gets StructBERT's 3 classes
(next / previous / random). Tensors of the file that are not part of the model are skipped
by name from a fixed list (buffers, the tied decoder weight) and reported; any other is an
error.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.structbert.config import StructBERTConfig
from plug_jax.families.structbert.convert_hf import (_dense, _layer_entries, _ln,
                                                     _to_state_dict, _transforms,
                                                     config_from_bert, TO_HF_ACTIVATIONS)

MODEL_TYPES = ("structbert", "bert")
# Tensors of modelscope's files that are not parameters of ours: (name relative to the
# encoder prefix, why). Skipped and reported.
_SKIP_ENCODER = {"embeddings.position_ids": "buffer (position ids 0..n-1, rebuilt here)",
                 "embeddings.token_type_ids": "buffer (zeros, rebuilt here)"}
_DECODER_W = "cls.predictions.decoder.weight"
_SB_FIELDS = ("adv_grad_factor", "sigma", "adv_bound")  # SbertConfig's own defaults
FRESH_SENTENCE_CLASSES = 3  # StructBERT's next / previous / random sentence head


# ------------------------------------------------------------------------------ config
def config_from_modelscope(config_json: Mapping, state_dict: Mapping | None = None, *,
                           scan_layers: bool = True, **overrides) -> StructBERTConfig:
    """``StructBERTConfig`` of a ModelScope ``SbertConfig`` ``config.json`` dict.

    ``model_type`` must be ``structbert`` (or ``bert``: the fields are BERT's). The number of
    sentence classes comes from ``cls.seq_relationship.weight`` in ``state_dict`` when the
    file has one, else StructBERT's 3 (a fresh head)."""
    c = dict(config_json)
    model_type = c.get("model_type") or "structbert"
    if model_type not in MODEL_TYPES:
        hint = "; use --source hf" if model_type == "megatron-bert" else ""
        raise ValueError(f"config_from_modelscope: model_type {model_type!r} is not a "
                         f"ModelScope StructBERT config (expected {' or '.join(MODEL_TYPES)})"
                         f"{hint}")
    c["model_type"] = "bert"
    classes = None
    if state_dict is not None:
        for k, v in state_dict.items():
            if k.endswith("cls.seq_relationship.weight"):
                classes = int(np.shape(v)[0])
    over = {"num_sentence_classes": classes or FRESH_SENTENCE_CLASSES, **overrides}
    return config_from_bert(c, scan_layers=scan_layers, **over)


def read_labels(model_dir: str, config_json: Mapping | None = None
                ) -> tuple[int, tuple[str, ...], str]:
    """``(num_labels, names, where)`` of a classification dir, looked up in modelscope's order
    (module docstring). ``names`` is empty when only a count is given."""
    def ordered(label2id: Mapping) -> tuple[str, ...]:
        return tuple(name for name, _ in sorted(label2id.items(), key=lambda kv: int(kv[1])))

    def from_id2label(id2label: Mapping) -> tuple[str, ...]:
        return tuple(v for _, v in sorted(id2label.items(), key=lambda kv: int(kv[0])))

    path = os.path.join(model_dir, "label_mapping.json")
    if os.path.isfile(path):
        names = ordered(cio.read_json(path))
        return len(names), names, "label_mapping.json"
    path = os.path.join(model_dir, "configuration.json")
    if os.path.isfile(path):
        ms = cio.read_json(path)
        for section in ("model", "preprocessor"):
            part = ms.get(section)
            if not isinstance(part, Mapping):
                continue
            if isinstance(part.get("label2id"), Mapping):
                names = ordered(part["label2id"])
                return len(names), names, f"configuration.json {section}.label2id"
            if isinstance(part.get("id2label"), Mapping):
                names = from_id2label(part["id2label"])
                return len(names), names, f"configuration.json {section}.id2label"
    c = dict(config_json or {})
    if c.get("num_labels") is not None:
        n = int(c["num_labels"])
        names = from_id2label(c["id2label"]) if isinstance(c.get("id2label"), Mapping) and \
            len(c["id2label"]) == n else ()
        return n, names, "config.json num_labels"
    if isinstance(c.get("id2label"), Mapping):
        names = from_id2label(c["id2label"])
        return len(names), names, "config.json id2label"
    if isinstance(c.get("label2id"), Mapping):
        names = ordered(c["label2id"])
        return len(names), names, "config.json label2id"
    return 2, (), "transformers' default (config.json has no id2label)"


# --------------------------------------------------------------------- key layouts
def _encoder_prefix(sd: Mapping, config_json: Mapping | None) -> str:
    prefixes = ["bert."]
    custom = (config_json or {}).get("base_model_prefix")
    if custom and custom + "." not in prefixes:
        prefixes.insert(0, custom + ".")
    for p in prefixes:
        if any(k.startswith(p + "embeddings.") for k in sd):
            return p
    return ""  # SbertModel (backbone): no prefix


def _entries(config: StructBERTConfig, prefix: str, target: str) -> list[tuple[str, str, str]]:
    """(file key, our param path, transform) of every tensor ``target`` needs:
    ``'backbone'``, ``'fill_mask'`` (every pre-training head) or ``'classification'``."""
    e = [(prefix + "embeddings.word_embeddings.weight", "encoder/word_embed/embedding", "copy"),
         (prefix + "embeddings.position_embeddings.weight", "encoder/pos_embed/embedding",
          "copy"),
         (prefix + "embeddings.token_type_embeddings.weight", "encoder/type_embed/embedding",
          "copy")]
    e += _ln(prefix + "embeddings.LayerNorm", "encoder/embed_norm")
    for i in range(config.num_layers):
        for key, path, kind in _layer_entries(False):
            e.append((f"{prefix}encoder.layer.{i}.{key}", f"encoder/stack/{i}/{path}", kind))
    e += _dense(prefix + "pooler.dense", "pooler")
    if target == "fill_mask":
        e += (_dense("cls.predictions.transform.dense", "mlm_head/transform")
              + _ln("cls.predictions.transform.LayerNorm", "mlm_head/norm")
              + [("cls.predictions.decoder.bias", "mlm_head/output_bias", "copy")]
              + _dense("cls.seq_relationship", "sentence_head"))
    elif target == "classification":
        e += _dense("classifier", "classifier")
    return e


def _alias(sd: Mapping, key: str) -> str | None:
    """The file's name for ``key``: itself, or the old ``LayerNorm.gamma`` / ``.beta``."""
    if key in sd:
        return key
    for new, old in (("LayerNorm.weight", "LayerNorm.gamma"), ("LayerNorm.bias", "LayerNorm.beta")):
        if key.endswith(new) and key[: -len(new)] + old in sd:
            return key[: -len(new)] + old
    return None


def _module(key: str) -> str:
    for end in (".weight", ".bias", ".gamma", ".beta"):
        if key.endswith(end):
            return key[: -len(end)]
    return key


def _few(names, n: int = 4) -> str:
    names = list(names)
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _target_shapes(config: StructBERTConfig, target: str, num_labels: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from plug_jax.families.structbert.network import (StructBERTForPreTraining,
                                                      StructBERTForSequenceClassification)
    unscanned = dataclasses.replace(config, scan_layers=False)
    if target == "classification":
        model = StructBERTForSequenceClassification(unscanned, num_labels=num_labels)
    else:
        model = StructBERTForPreTraining(unscanned)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    tree = jax.eval_shape(lambda r, x: model.init(r, x), jax.random.PRNGKey(0), ids)["params"]
    flat = {k: tuple(v.shape) for k, v in cio.flatten_tree(nn.unbox(tree)).items()}
    if target == "backbone":
        flat = {k: v for k, v in flat.items() if k.startswith(("encoder/", "pooler/"))}
    # encoder/stack/layers_N/... -> encoder/stack/N/... (the entries' names)
    return {k.replace("/stack/layers_", "/stack/"): v for k, v in flat.items()}


def _fresh(path: str, shape: tuple, config: StructBERTConfig, rng) -> np.ndarray:
    leaf = path.rsplit("/", 1)[-1]
    if leaf in ("kernel", "embedding"):
        return (rng.standard_normal(shape) * config.initializer_range).astype(np.float32)
    if leaf == "scale":
        return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)


# ------------------------------------------------------------------------------ import
def from_modelscope_state_dict(state_dict: Mapping, config: StructBERTConfig, *,
                               num_labels: int | None = None, allow_missing=(),
                               report: list | None = None,
                               config_json: Mapping | None = None) -> dict:
    """Params from a ModelScope StructBERT state dict (torch tensors or numpy arrays).

    The target follows the file (module docstring). ``num_labels``: the label count of a
    classification file (from its config; checked against ``classifier.weight``).
    ``allow_missing``: name prefixes of tensors that may be absent and are initialised fresh.
    ``report``: a list that gets one line per skipped / freshly initialised group.
    """
    api = "from_modelscope_state_dict"
    if config.pre_norm:
        raise ValueError(f"{api}: ModelScope StructBERT is post-LN; config.norm_placement is "
                         f"{config.norm_placement!r}")
    report = report if report is not None else []
    allow = tuple(p for p in allow_missing if p)
    sd = dict(state_dict)
    prefix = _encoder_prefix(sd, config_json)
    if any(k.startswith("classifier.") for k in sd):
        target = "classification"
    elif any(k.startswith("cls.") for k in sd):
        target = "fill_mask"
    else:
        target = "backbone"
    if target == "classification":
        rows = int(np.shape(sd["classifier.weight"])[0]) if "classifier.weight" in sd else None
        if num_labels is None:
            num_labels = rows
        elif rows is not None and rows != num_labels:
            raise ValueError(f"{api}: classifier.weight has {rows} rows but the config gives "
                             f"{num_labels} labels; fix num_labels / id2label in the config")
    entries = _entries(config, prefix, target)
    if target == "backbone" and prefix + "pooler.dense.weight" not in sd and not any(
            (prefix + "pooler").startswith(a) for a in allow):
        entries = [e for e in entries if not e[1].startswith("pooler/")]  # as the hf reader
    tf = _transforms(config)
    used: set[str] = set()
    flat: dict[str, np.ndarray] = {}
    missing: list[tuple[str, str]] = []
    for key, path, kind in entries:
        name = _alias(sd, key)
        if name is None and key == "cls.predictions.decoder.bias" and \
                "cls.predictions.bias" in sd:  # a transformers-style head: the separate bias
            name = "cls.predictions.bias"
        if name is None:
            missing.append((key, path))
            continue
        used.add(name)
        flat[path] = np.ascontiguousarray(tf[kind][0](cio.to_numpy(sd[name])), np.float32)

    # The tied MLM decoder: checked, not stored twice.
    word = flat.get("encoder/word_embed/embedding")
    if _DECODER_W in sd:
        used.add(_DECODER_W)
        if word is not None and not np.array_equal(cio.to_numpy(sd[_DECODER_W]), word):
            raise ValueError(f"{api}: {_DECODER_W} differs from {prefix}embeddings."
                             f"word_embeddings.weight; an untied MLM decoder is not supported "
                             f"by StructBERTForPreTraining (modelscope ties them on load)")
        report.append(f"skipped {_DECODER_W}: the tied MLM decoder, equal to {prefix}"
                      f"embeddings.word_embeddings.weight (checked)")
    if "cls.predictions.bias" in sd and "cls.predictions.bias" not in used and \
            target == "fill_mask":  # transformers' separate copy of the decoder bias
        used.add("cls.predictions.bias")
        if not np.array_equal(cio.to_numpy(sd["cls.predictions.bias"]),
                              flat.get("mlm_head/output_bias")):
            raise ValueError(f"{api}: cls.predictions.bias differs from "
                             f"cls.predictions.decoder.bias; which one is the output bias?")
        report.append("skipped cls.predictions.bias: equal to cls.predictions.decoder.bias "
                      "(checked)")
    skipped = {}
    for rel, why in _SKIP_ENCODER.items():
        if prefix + rel in sd:
            used.add(prefix + rel)
            skipped[prefix + rel] = why
    for name, why in skipped.items():
        report.append(f"skipped {name}: {why}")
    unknown = sorted(k for k in sd if k not in used)
    if unknown:
        raise ValueError(f"{api}: {len(unknown)} tensor(s) {_few(unknown)} are not part of a "
                         f"ModelScope StructBERT {target} model of this config (num_layers="
                         f"{config.num_layers}); is the config the checkpoint's?")

    if missing:
        fresh = [(k, p) for k, p in missing if any(k.startswith(a) for a in allow)]
        refused = [k for k, p in missing if not any(k.startswith(a) for a in allow)]
        if refused:
            modules = list(dict.fromkeys(_module(k) for k in refused))
            body = all(not k.startswith((prefix + "embeddings.", prefix + "encoder."))
                       for k in refused)
            fix = (f"pass --allow_missing={','.join(modules)} to initialise "
                   f"{'it' if len(modules) == 1 else 'them'} fresh" if body else
                   "is the config the checkpoint's?")
            why = (" (SbertForMaskedLM has no sentence head)"
                   if any(k.startswith("cls.seq_relationship") for k in refused) else "")
            raise ValueError(f"missing tensor(s) {_few(refused)} in the ModelScope StructBERT "
                             f"{target.replace('_', '-')} checkpoint{why}; {fix}")
        shapes = _target_shapes(config, target, num_labels or 2)
        rng = np.random.default_rng(0)
        by_prefix: dict[str, list[str]] = {}
        kinds = {k: kind for k, _, kind in entries}
        for key, path in fresh:
            flat[path] = _fresh(path, shapes[path], config, rng)
            a = next(a for a in allow if key.startswith(a))
            theirs = np.shape(tf[kinds[key]][1](flat[path]))  # the file's layout
            by_prefix.setdefault(a, []).append(f"{key} {list(theirs)}")
        for a, names in by_prefix.items():
            extra = ""
            if a.startswith("cls.seq_relationship"):
                extra = f"; {config.num_sentence_classes} sentence classes"
            report.append(f"initialised fresh (--allow_missing={a}): {', '.join(names)} "
                          f"(normal({config.initializer_range}) kernels, zero biases, seed 0"
                          f"{extra})")
    for a in allow:
        if not any(k.startswith(a) for k, _ in missing):
            report.append(f"--allow_missing={a}: nothing under it is missing")

    # encoder/stack/N/... -> the scanned or unscanned layer stack
    layers = [{} for _ in range(config.num_layers)]
    top = {}
    for path, v in flat.items():
        if path.startswith("encoder/stack/"):
            i, rest = path[len("encoder/stack/"):].split("/", 1)
            layers[int(i)][rest] = v
        else:
            top[path] = v
    params = cio.unflatten_tree(top)
    params["encoder"]["stack"] = cio.assemble_decoder([cio.unflatten_tree(x) for x in layers],
                                                      config.scan_layers)
    _check_shapes(config, params, target, num_labels or 2, api)
    return params


def _check_shapes(config, params, target, num_labels, api) -> None:
    want = _target_shapes(config, target, num_labels)
    got = {}
    for k, v in cio.flatten_tree(params).items():
        if k.startswith("encoder/stack/layers/"):
            for i in range(config.num_layers):
                got[f"encoder/stack/{i}/" + k[len("encoder/stack/layers/"):]] = \
                    tuple(np.shape(v)[1:])
        else:
            got[k.replace("/stack/layers_", "/stack/")] = tuple(np.shape(v))
    for k in sorted(got):
        if k in want and want[k] != got[k]:
            hint = ""
            if k.startswith("encoder/stack/") and "mlp" in k:
                hint = " (intermediate_size in config.json?)"
            raise ValueError(f"{api}: {k} has shape {got[k]} in the checkpoint, the config "
                             f"expects {want[k]}{hint}; is the config the checkpoint's?")
    lack = sorted(set(want) - set(got))
    if target != "backbone" and lack:
        raise ValueError(f"{api}: converted params lack {_few(lack)}")


def load_modelscope_checkpoint(path: str | os.PathLike, *, scan_layers: bool = True,
                               allow_missing=(), report: list | None = None,
                               **overrides) -> tuple[StructBERTConfig, dict]:
    """``(config, params)`` from a ModelScope StructBERT model dir (``config.json`` +
    ``pytorch_model.bin`` / ``model.safetensors``; ``configuration.json`` /
    ``label_mapping.json`` for the labels), or one weights file with ``config.json`` beside
    it. Files are read with safetensors or ``torch.load(weights_only=True)`` only."""
    api = "load_modelscope_checkpoint"
    config_json, sd = cio.read_checkpoint(
        path, api=api, fix="it holds ModelScope's SbertConfig; a transformers BERT dir "
                           "converts with --source hf")
    p = os.fspath(path)
    model_dir = p if os.path.isdir(p) else (os.path.dirname(p) or ".")
    report = report if report is not None else []
    config = config_from_modelscope(config_json, sd, scan_layers=scan_layers, **overrides)
    num_labels = None
    if any(k.startswith("classifier.") for k in sd):
        num_labels, names, where = read_labels(model_dir, config_json)
        rows = int(np.shape(sd["classifier.weight"])[0]) if "classifier.weight" in sd else None
        if rows is not None and rows != num_labels:
            raise ValueError(f"{api}: classifier.weight has {rows} rows but {where} gives "
                             f"{num_labels} labels; fix the label mapping (modelscope would "
                             f"not load this dir either)")
        shown = f" ({', '.join(names)})" if names else ""
        report.append(f"classifier: {num_labels} labels{shown} from {where}; fine-tune / infer "
                      f"with models.EncoderModel.objectives=('classify',) and num_labels="
                      f"{num_labels}")
    params = from_modelscope_state_dict(sd, config, num_labels=num_labels,
                                        allow_missing=allow_missing, report=report,
                                        config_json=config_json)
    return config, params


# ------------------------------------------------------------------------------ export
def to_modelscope_state_dict(config: StructBERTConfig, params: Mapping) -> dict:
    """ModelScope names (numpy float32) for ``StructBERTForPreTraining`` params
    (``SbertForMaskedLM``'s keys plus ``cls.seq_relationship.*``, which that class does not
    have) or ``StructBERTForSequenceClassification`` params (``SbertForSequenceClassification``'s
    keys)."""
    api = "to_modelscope_state_dict"
    if config.pre_norm:
        raise ValueError(f"{api}: ModelScope StructBERT is post-LN; a pre-LN config "
                         f"exports with --to hf (MegatronBertForPreTraining)")
    p = cio.unbox_params(params)
    if "classifier" in p:
        body = _to_state_dict(config, {"encoder": p["encoder"], "pooler": p["pooler"]}, "bert",
                              api, True)
        out = {"bert." + k: v for k, v in body.items()}
        out["classifier.weight"] = np.ascontiguousarray(np.asarray(p["classifier"]["kernel"],
                                                                   np.float32).T)
        out["classifier.bias"] = np.asarray(p["classifier"]["bias"], np.float32)
        return out
    if "mlm_head" not in p:
        raise ValueError(f"{api}: params have neither the pre-training heads nor a classifier; "
                         f"ModelScope has no encoder-only StructBERT dir to write")
    out = _to_state_dict(config, p, "bert", api, True)
    out.pop("cls.predictions.bias")  # the decoder's own bias carries it in modelscope
    return out


def save_modelscope(config: StructBERTConfig, params: Mapping, out: str,
                    label_names=()) -> str:
    """Writes a ModelScope StructBERT dir: ``config.json`` (SbertConfig's fields),
    ``configuration.json`` and ``pytorch_model.bin`` (``torch.save`` of the state dict)."""
    import json

    import torch

    if config.activation not in TO_HF_ACTIVATIONS:
        raise ValueError(f"save_modelscope: activation {config.activation!r} has no "
                         f"transformers equivalent")
    sd = to_modelscope_state_dict(config, params)
    classify = "classifier.weight" in sd
    c = {"architectures": ["SbertForSequenceClassification" if classify else "SbertForMaskedLM"],
         "model_type": "structbert", "vocab_size": config.vocab_size,
         "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
         "num_attention_heads": config.num_heads, "intermediate_size": config.mlp_dim,
         "hidden_act": TO_HF_ACTIVATIONS[config.activation],
         "hidden_dropout_prob": config.dropout_rate,
         "attention_probs_dropout_prob": config.attention_dropout_rate,
         "max_position_embeddings": config.max_position_embeddings,
         "type_vocab_size": config.type_vocab_size,
         "initializer_range": config.initializer_range,
         "layer_norm_eps": config.layer_norm_epsilon, "pad_token_id": 0,
         "position_embedding_type": "absolute", "classifier_dropout": None,
         "adv_grad_factor": 5e-5, "sigma": 5e-6, "adv_bound": 1e-5}
    task = "fill-mask"
    if classify:
        n = int(sd["classifier.weight"].shape[0])
        names = list(label_names) or [f"LABEL_{i}" for i in range(n)]
        c["id2label"] = {str(i): name for i, name in enumerate(names)}
        c["label2id"] = {name: i for i, name in enumerate(names)}
        task = "text-classification"
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    with open(os.path.join(out, "configuration.json"), "w") as f:
        json.dump({"framework": "pytorch", "task": task, "model": {"type": "structbert"},
                   "pipeline": {"type": task}}, f, indent=4)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
               os.path.join(out, "pytorch_model.bin"))
    count = int(sum(v.size for k, v in sd.items() if k != _DECODER_W))
    what = "SbertForSequenceClassification" if classify else "SbertForMaskedLM"
    note = ""
    if "cls.seq_relationship.weight" in sd:
        note = (f"; cls.seq_relationship ({config.num_sentence_classes} classes) is written "
                f"too: SbertForMaskedLM has no such head and ignores it on load")
    return (f"{count:,} parameters ({what}: config.json + configuration.json + "
            f"pytorch_model.bin){note}")
