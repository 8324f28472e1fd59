"""mPLUG's :class:`~plug_jax.families.spec.FamilySpec` (``plug_jax.families.mplug.FAMILY``).

mPLUG (arXiv 2205.12005) is CLIP ViT + a BERT text encoder + a fusion module with
cross-modal skip connections + a BERT decoder. As a family it offers the
``image_to_text`` kind (:class:`plug_jax.models.ImageTextLM`: VQA and captioning, encoded
once and decoded over a KV cache), trains on Shop World images (``tasks/mplug.py``) and
converts modelscope mPLUG dirs both ways.
"""
from __future__ import annotations

from plug_jax.families.mplug.config import MPlugConfig
from plug_jax.families.spec import Converter, Experiment, FamilySpec, PlanRow


def _network(config, **kw):
    from plug_jax.families.mplug.network import MPlug
    return MPlug(config, **kw)


def _flops(config, batch: int, lengths) -> float:
    from plug_jax.families.mplug.flops import training_flops
    return training_flops(config, batch, lengths)


def _pretrain_flops(config, batch: int, lengths) -> float:
    from plug_jax.families.mplug.flops import pretraining_flops
    return pretraining_flops(config, batch, lengths)


def _import_modelscope(path, options):
    import os

    from plug_jax.families.mplug import convert_modelscope as ms
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a folder; fix: pass the modelscope mPLUG model dir "
                         f"(config.yaml + config_bert.json + pytorch_model.bin)")
    report: list = []
    config = ms.config_from_modelscope(path, scan_layers=options["scan_layers"])
    from plug_jax.convert import io as cio
    sd = cio.load_weights_files(cio.find_hf_weights(path))
    # a VQA / caption dir has no retrieval heads, a retrieval dir no decoder: fresh ones
    decoder = any(k.split(".", 1)[-1].startswith("text_decoder.") or
                  k.startswith("text_decoder.") for k in sd)
    config, params = ms.from_modelscope(sd, config, report=report, allow_missing=(
        ms.RETRIEVAL_HEADS if decoder else ms.DECODER))
    momentum = ms.momentum_state_from_modelscope(sd, config)
    if momentum is not None:  # ALBEF copies and queues: kept for momentum distillation
        import tempfile
        tmp = os.path.join(tempfile.mkdtemp(prefix="plug-convert-"), ms.MODEL_STATE_FILE)
        ms.save_model_state(momentum, tmp)
        options.setdefault("extra_files", {})[ms.MODEL_STATE_FILE] = tmp
        report.append(f"momentum copies and queues (queue size "
                      f"{momentum['image_queue'].shape[0]}) -> {ms.MODEL_STATE_FILE}, loaded "
                      f"into the momentum state when MOMENTUM_DISTILLATION is on")
    for line in report:
        print(f"  {line}", flush=True)
    return config, params


def _export_modelscope(config, params, out, options):
    from plug_jax.families.mplug.convert_modelscope import save_modelscope
    return save_modelscope(config, params, out)


def _modelscope_representable(config):
    """The tiny preset with the CLIP vision shape the modelscope layout fixes (heads =
    width // 64, MLP 4 x width)."""
    v = config.vision
    return config.replace(vision=v.replace(heads=max(1, v.width // 64), mlp_dim=4 * v.width))


def _describe(c) -> str:
    v = c.vision
    return (f"vision: {v.image_size}px patch {v.patch_size} width {v.width} layers {v.layers}; "
            f"BERT hidden {c.hidden_size} heads {c.num_heads} vocab {c.vocab_size}; text "
            f"{c.text_layers}, fusion {c.fusion_layers} (stride {c.stride}), decoder "
            f"{c.decoder_layers} layers" + ("; visn_fc" if c.vision_proj_to_text else ""))


def plan_rows() -> tuple[PlanRow, ...]:
    """docs/scaling.md rows: large VQA fine-tuning on one 8xH100 host (336 px, as the
    released VQA fine-tune) and base pre-training (ITC + ITM + MLM + prefix LM, the released
    recipe without momentum distillation) on a TPU v4 pod at 256 px."""
    bf16 = ("ACTIVATION_DTYPE='bfloat16'",)
    return (
        PlanRow("mplug-large VQA / 8xH100", "models/mplug/large.gin", "data:8", "h100_80gb",
                "600M [V-code]", "1 host x 8 H100",
                bf16 + ("IMAGE_SIZE=336", "BATCH_SIZE=128", "REMAT_POLICY='full'",
                        "TASK_FEATURE_LENGTHS={'image': (336, 336, 3), 'inputs': 40, "
                        "'targets': 10}")),
        PlanRow("mplug-base pre-training (ITC+ITM+MLM+prefix LM) / v4-64",
                "models/mplug/base.gin", "data:32", "tpu_v4", "350M [V-code]",
                "TPU v4-64 = 32 chips",
                bf16 + ("IMAGE_SIZE=256", "BATCH_SIZE=1024", "REMAT_POLICY='full'",
                        "TASK_FEATURE_LENGTHS={'image': (256, 256, 3), 'targets': 32}"),
                extra_gin=("models/mplug/pretrain.gin",)),
    )


_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=4", "EVAL_STEPS=1", "LOG_PERIOD=1", "EVAL_PERIOD=2",
          "CHECKPOINT_PERIOD=2", "MAX_NEW_TOKENS=4")

FAMILY = FamilySpec(
    name="mplug",
    config_cls=MPlugConfig,
    listing_order=5,
    networks={"image_to_text": _network, "image_text_pretrain": _network},
    flops={"image_to_text": _flops, "image_text_pretrain": _pretrain_flops},
    converters=(
        Converter("modelscope", "import", _import_modelscope, "modelscope mPLUG model dir "
                  "(config.yaml + config_bert.json + pytorch_model.bin; VQA, caption or "
                  "retrieval)", describe=_describe, round_trip_config=_modelscope_representable),
        Converter("modelscope", "export", _export_modelscope, "modelscope mPLUG model dir "
                  "(config.yaml + config_bert.json + configuration.json + pytorch_model.bin)",
                  round_trip_config=_modelscope_representable),
    ),
    plan_rows=plan_rows,
    feature_converters=("image_text",),
    experiments=(Experiment("experiments/mplug/shop_vqa_tiny.gin", _SHORT),
                 Experiment("experiments/mplug/shop_caption_tiny.gin", _SHORT),
                 Experiment("experiments/mplug/shop_pretrain_tiny.gin", _SHORT),
                 Experiment("experiments/mplug/shop_retrieval_tiny.gin", _SHORT)),
)
