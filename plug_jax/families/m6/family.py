"""M6's :class:`~plug_jax.families.spec.FamilySpec` (``plug_jax.families.m6.FAMILY``).

M6 (arXiv 2103.00823) is one transformer over image patches and text with a prefix-LM mask
(``network.py``). As a family it offers the ``image_to_text`` kind
(:class:`plug_jax.models.ImageTextLM`: image -> title / description, image + text -> text;
the prefix computed once per decode, the target over a KV cache) and the ``encdec_lm`` kind
(:class:`plug_jax.models.EncoderDecoderLM`: text denoising) on one parameter tree. Presets
``tiny``, ``base``, ``10B``, ``100B`` (M6-T expert prototyping) and ``1T``. No M6 checkpoint
was released, so there is no converter.
"""
from __future__ import annotations

from plug_jax.families.m6.config import M6Config
from plug_jax.families.spec import Experiment, FamilySpec


def _network(config, **kw):
    from plug_jax.families.m6.network import M6
    return M6(config, **kw)


def _text_network(config, **kw):
    from plug_jax.families.m6.network import M6Text
    return M6Text(config, **kw)


def _flops(config, batch: int, lengths) -> float:
    from plug_jax.families.m6.flops import training_flops
    return training_flops(config, batch, lengths)


_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=4", "EVAL_STEPS=1", "LOG_PERIOD=1", "EVAL_PERIOD=2",
          "CHECKPOINT_PERIOD=2", "MAX_NEW_TOKENS=4")

FAMILY = FamilySpec(
    name="m6",
    config_cls=M6Config,
    listing_order=7,
    networks={"image_to_text": _network, "encdec_lm": _text_network},
    flops={"image_to_text": _flops, "encdec_lm": _flops},
    feature_converters=("image_text", "encdec"),
    experiments=(Experiment("experiments/m6/shop_title_tiny.gin", _SHORT),
                 Experiment("experiments/m6/shop_denoise_tiny.gin", _SHORT)),
)
