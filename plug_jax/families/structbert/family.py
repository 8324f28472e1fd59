"""StructBERT's :class:`~plug_jax.families.spec.FamilySpec` (``plug_jax.families.structbert.FAMILY``)."""
from __future__ import annotations

import os

from plug_jax.families.spec import Converter, Experiment, FamilySpec, PlanRow
from plug_jax.families.structbert.config import StructBERTConfig


def encoder_network(config, *, classify: bool = False, num_labels: int = 2):
    """``StructBERTForSequenceClassification`` (``classify``) or ``StructBERTForPreTraining``."""
    from plug_jax.families.structbert.network import (StructBERTForPreTraining,
                                                      StructBERTForSequenceClassification)
    if classify:
        return StructBERTForSequenceClassification(config, num_labels=num_labels)
    return StructBERTForPreTraining(config)


def encoder_flops(config, batch: int, lengths) -> float:
    """6 N per token for the weights (embeddings excluded) + the attention term."""
    from plug_jax.families.structbert.network import param_count
    n = lengths["inputs"]
    att = 12 * config.num_layers * config.hidden_size * n
    return batch * n * (6.0 * param_count(config, encoder_only=True) + att)


def preset_config(options, default: str | None = None):
    """``StructBERTConfig`` from ``--preset`` (and ``--vocab_size``), or None."""
    name = options.get("preset") or default
    if name is None:
        return None
    over = {"scan_layers": options["scan_layers"]}
    if options.get("vocab_size") is not None:
        over["vocab_size"] = options["vocab_size"]
    return StructBERTConfig.from_preset(name, **over)


def _import_hf(path, options):
    from plug_jax.families.structbert.convert_hf import load_bert_checkpoint, to_bert_config
    if options.get("vocab_size") is not None and not options.get("preset"):
        raise ValueError("--vocab_size needs --preset for family 'structbert' (otherwise the "
                         "input's config.json gives the vocabulary)")
    config = preset_config(options)
    hf_cfg = to_bert_config(config).to_dict() if config is not None else None
    over = {"preset": config.preset} if config is not None else {}
    return load_bert_checkpoint(path, hf_cfg, scan_layers=options["scan_layers"], **over)


def _export_hf(config, params, out, options) -> str:
    from safetensors.numpy import save_file

    from plug_jax.families.structbert.convert_hf import (to_bert_config, to_bert_state_dict,
                                          to_megatron_bert_state_dict)
    fn = to_megatron_bert_state_dict if config.pre_norm else to_bert_state_dict
    sd = fn(config, params, as_numpy=True)
    hf_cfg = to_bert_config(config)
    hf_cfg.architectures = [("MegatronBert" if config.pre_norm else "Bert") + "ForPreTraining"]
    hf_cfg.save_pretrained(out)
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    count = int(sum(v.size for k, v in sd.items() if not k.startswith("cls.predictions.dec")))
    note = ""
    if config.num_sentence_classes != 2:
        note = (f"; note: cls.seq_relationship has {config.num_sentence_classes} classes, "
                f"HF's pre-training head 2: load with BertModel or "
                f"ignore_mismatched_sizes=True")
    return f"{count:,} parameters (model.safetensors + config.json){note}"


def _import_xlmr(path, options):
    from plug_jax.families.structbert.convert_xlmr import load_xlmr_checkpoint
    report = options.get("report")
    report = report if isinstance(report, list) else None
    config, params = load_xlmr_checkpoint(path, scan_layers=options["scan_layers"],
                                          drop_lm_head=True, report=report)
    if report is not None:
        if "classifier" in params:
            n = int(params["classifier"]["kernel"].shape[-1])
            report.append(f"classifier: {n} labels (XLM-R classifier.dense -> pooler, "
                          f"out_proj -> classifier); use models.EncoderModel.objectives="
                          f"('classify',) and num_labels={n}")
        report.append("token ids are XLM-R's (<s>=0, <pad>=1, </s>=2; a SentencePiece piece p "
                      "is id p+1): feed XLMRobertaTokenizer ids with an explicit attention "
                      "mask (plug_jax's ids > 0 mask would drop <s>), or convert in Python "
                      "with pad_to_zero=True and xlmr_ids_to_plug (convert_xlmr)")
    return config, params


def _export_xlmr(config, params, out, options) -> str:
    from safetensors.numpy import save_file

    from plug_jax.families.structbert.convert_xlmr import to_xlmr_config, to_xlmr_state_dict
    sd = to_xlmr_state_dict(config, params, as_numpy=True, strict=False)
    has_cls = "classifier.out_proj.weight" in sd
    labels = int(sd["classifier.out_proj.weight"].shape[0]) if has_cls else None
    hf_cfg = to_xlmr_config(config, labels)
    hf_cfg.architectures = ["XLMRobertaForSequenceClassification" if has_cls
                            else "XLMRobertaModel"]
    hf_cfg.save_pretrained(out)
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    count = int(sum(v.size for v in sd.values()))
    dropped = sorted(set(params) - {"encoder", "pooler", "classifier"})
    note = (f"; not written (XLM-R has no place for them): {', '.join(dropped)}"
            if dropped else "")
    return (f"{count:,} parameters (model.safetensors + config.json, "
            f"{hf_cfg.architectures[0]}){note}")


def _import_modelscope(path, options):
    from plug_jax.families.structbert.convert_modelscope import load_modelscope_checkpoint
    report = options.get("report")
    return load_modelscope_checkpoint(path, scan_layers=options["scan_layers"],
                                      allow_missing=options.get("allow_missing") or (),
                                      report=report if isinstance(report, list) else None)


def _export_modelscope(config, params, out, options) -> str:
    from plug_jax.families.structbert.convert_modelscope import save_modelscope
    return save_modelscope(config, params, out)


def describe(c) -> str:
    return (f"preset={c.preset} layers={c.num_layers} heads={c.num_heads} "
            f"hidden={c.hidden_size} ffn={c.mlp_dim} vocab={c.vocab_size} "
            f"max_pos={c.max_position_embeddings} norm={c.norm_placement}")


def plan_rows() -> tuple[PlanRow, ...]:
    # StructBERT large (encoder only, 512-token pairs), BERT-large's pre-training batch 256.
    return (PlanRow("structbert-large-zh / 8xH100", "models/structbert/large-zh.gin", "data:8",
                    "h100_80gb", "330M [V-card]", "1 host x 8 H100",
                    ("ACTIVATION_DTYPE='bfloat16'", "TASK_FEATURE_LENGTHS={'inputs': 512}",
                     "BATCH_SIZE=256", "NUM_MICROBATCHES=4"), "partitioning/dp.gin"),)


def prompt_batch(model, vocabulary, prompts, max_length: int = 128):
    from plug_jax.families.structbert.prompts import prompt_batch as build
    return build(vocabulary, prompts, classify=model.classify, max_length=max_length)


_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=8", "EVAL_STEPS=1", "LOG_PERIOD=1")

FAMILY = FamilySpec(
    name="structbert",
    config_cls=StructBERTConfig,
    listing_order=1,
    networks={"encoder": encoder_network},
    flops={"encoder": encoder_flops},
    converters=(
        Converter("hf", "import", _import_hf, "transformers BERT / Megatron-BERT folder "
                  "(config.json + weights)", uses=("preset", "vocab_size"), describe=describe),
        Converter("hf", "export", _export_hf, "config.json + model.safetensors "
                  "(BertForPreTraining, or MegatronBertForPreTraining for pre-LN)"),
        Converter("xlmr", "import", _import_xlmr, "transformers XLM-R / RoBERTa folder "
                  "(config.json + weights: XLMRobertaModel or "
                  "XLMRobertaForSequenceClassification)", describe=describe),
        Converter("xlmr", "export", _export_xlmr, "config.json + model.safetensors "
                  "(XLMRobertaForSequenceClassification for classifier params, else "
                  "XLMRobertaModel)",
                  # XLM-R holds no pre-training heads: the encoder and pooler round-trip
                  round_trip_params=lambda p: {k: p[k] for k in ("encoder", "pooler")}),
        Converter("modelscope", "import", _import_modelscope, "ModelScope StructBERT dir "
                  "(SbertConfig config.json + pytorch_model.bin: SbertForMaskedLM fill-mask, "
                  "SbertForSequenceClassification, SbertModel)", uses=("allow_missing",),
                  describe=describe),
        Converter("modelscope", "export", _export_modelscope, "config.json + "
                  "configuration.json + pytorch_model.bin (SbertForMaskedLM, or "
                  "SbertForSequenceClassification for classifier params)"),
    ),
    plan_rows=plan_rows,
    feature_converters=("encoder",),
    experiments=(Experiment("experiments/structbert/shop_pretrain_tiny.gin", _SHORT),
                 Experiment("experiments/structbert/shop_sentiment_tiny.gin", _SHORT,
                            needs="experiments/structbert/shop_pretrain_tiny.gin")),
    encoder_config=lambda config: config,
    extras={"prompt_batch": prompt_batch},
)
