"""M6's :class:`~plug_jax.families.spec.FamilySpec` (``plug_jax.families.m6.FAMILY``).

M6 (arXiv 2103.00823) is one transformer over image patches and text with a prefix-LM mask
(``network.py``). As a family it offers the ``image_to_text`` kind
(:class:`plug_jax.models.ImageTextLM`: image -> title / description, image + text -> text;
the prefix computed once per decode, the target over a KV cache) and the ``encdec_lm`` kind
(:class:`plug_jax.models.EncoderDecoderLM`: text denoising) on one parameter tree, and the
``text_to_image`` kind (:class:`plug_jax.models.TextToImageLM`: a title -> VQGAN codes, the
same network with the codes appended to its vocabulary). Presets
``tiny``, ``base``, ``10B``, ``100B`` (M6-T expert prototyping) and ``1T``. No M6 checkpoint
was released, so there is no converter.
"""
from __future__ import annotations

from plug_jax.families.m6.config import M6Config
from plug_jax.families.spec import Experiment, FamilySpec, PlanRow


def _network(config, **kw):
    from plug_jax.families.m6.network import M6
    return M6(config, **kw)


def _text_network(config, **kw):
    from plug_jax.families.m6.network import M6Text
    return M6Text(config, **kw)


def _flops(config, batch: int, lengths) -> float:
    from plug_jax.families.m6.flops import training_flops
    return training_flops(config, batch, lengths)


# Pre-training as M6 reads it: a 256 px image (256 patches) + 64 source + 64 target tokens,
# bf16 activations, full remat.
BIG = ("ACTIVATION_DTYPE='bfloat16'", "REMAT_POLICY='full'", "ENCODER_TEXT=True",
       "TASK_FEATURE_LENGTHS={'image': (256, 256, 3), 'inputs': 64, 'targets': 64}")


def plan_rows() -> tuple[PlanRow, ...]:
    """docs/scaling.md rows, "M6-scale sharding": 10B dense with FSDP on one 8xH100 host and on
    a TPU v4-32; 100B M6-T with expert parallelism (experts over the ``expert`` axis, the rest
    FSDP) on 16 hosts of 8 H100 and on a TPU v4-256; the 1T M6-T on a TPU v5p-1024."""
    ep = "partitioning/ep_fsdp_tp.gin"
    return (
        PlanRow("m6-10B pre-training / 8xH100", "models/m6/10B.gin", "fsdp:8", "h100_80gb",
                "10B [V-card]", "1 host x 8 H100",
                BIG + ("BATCH_SIZE=256", "NUM_MICROBATCHES=8")),
        PlanRow("m6-10B pre-training / v4-32", "models/m6/10B.gin", "fsdp:16", "tpu_v4",
                "10B [V-card]", "TPU v4-32 = 16 chips",
                BIG + ("BATCH_SIZE=256", "NUM_MICROBATCHES=4")),
        PlanRow("m6-100B M6-T pre-training / 128xH100", "models/m6/100B.gin",
                "fsdp:8,expert:16", "h100_80gb", "100B [V-card]", "16 hosts x 8 H100",
                BIG + ("BATCH_SIZE=1024", "NUM_MICROBATCHES=8"), ep),
        PlanRow("m6-100B M6-T pre-training / v4-256", "models/m6/100B.gin",
                "fsdp:8,expert:16", "tpu_v4", "100B [V-card]", "TPU v4-256 = 128 chips",
                BIG + ("BATCH_SIZE=1024", "NUM_MICROBATCHES=8"), ep),
        PlanRow("m6-T 1T pre-training / v5p-1024", "models/m6/1T.gin", "fsdp:8,expert:64",
                "tpu_v5p", ">1T (M6-T) [S]", "TPU v5p-1024 = 512 chips",
                BIG + ("BATCH_SIZE=2048", "NUM_MICROBATCHES=4"), ep),
    )


_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=4", "EVAL_STEPS=1", "LOG_PERIOD=1", "EVAL_PERIOD=2",
          "CHECKPOINT_PERIOD=2", "MAX_NEW_TOKENS=4")

FAMILY = FamilySpec(
    name="m6",
    config_cls=M6Config,
    listing_order=7,
    networks={"image_to_text": _network, "encdec_lm": _text_network,
              "text_to_image": _text_network},
    flops={"image_to_text": _flops, "encdec_lm": _flops, "text_to_image": _flops},
    plan_rows=plan_rows,
    feature_converters=("image_text", "encdec"),
    experiments=(Experiment("experiments/m6/shop_title_tiny.gin", _SHORT),
                 Experiment("experiments/m6/shop_denoise_tiny.gin", _SHORT),
                 # reads an image-code corpus (image_codes.py); the contract test parses it
                 # (kinds, snapshot), tests/families/m6/test_text_to_image.py runs it
                 Experiment("experiments/m6/shop_t2i_tiny.gin", _SHORT)),
)
