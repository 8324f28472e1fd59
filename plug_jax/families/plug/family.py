"""PLUG's :class:`~plug_jax.families.spec.FamilySpec` (``plug_jax.families.plug.FAMILY``)."""
from __future__ import annotations

import os

from plug_jax.families.plug.config import PlugConfig
from plug_jax.families.spec import Converter, Experiment, FamilySpec, PlanRow


def _encdec(config, **kw):
    from plug_jax.families.plug.network import PlugModel
    return PlugModel(config, **kw)


def named(inner, name: str):
    """``inner`` as the submodule ``name`` of a wrapper module (PLUG stage 1 keeps
    PlugModel's ``structbert/`` prefix, so stage 2 restores it)."""
    from flax import linen as nn

    class _Wrap(nn.Module):
        @nn.compact
        def __call__(self, *args, **kwargs):
            return inner.clone(name=name, parent=self)(*args, **kwargs)

    return _Wrap()


def _encoder(config, **kw):
    """Stage 1: StructBERT's objectives on PLUG's encoder, under ``structbert/``."""
    from plug_jax.families.structbert.family import encoder_network
    return named(encoder_network(config.encoder, **kw), "structbert")


def _encdec_flops(config, batch: int, lengths) -> float:
    from plug_jax.families.plug.flops import training_flops_per_example
    return batch * training_flops_per_example(config, lengths["inputs"], lengths["targets"])


def _encoder_flops(config, batch: int, lengths) -> float:
    from plug_jax.families.structbert.family import encoder_flops
    return encoder_flops(config.encoder, batch, lengths)


def _preset_config(options):
    over = {"scan_layers": options["scan_layers"]}
    if options.get("vocab_size") is not None:
        over["vocab_size"] = options["vocab_size"]
    return PlugConfig.from_preset(options.get("preset") or "27B", **over)


def _import_megatron(path, options):
    from plug_jax.convert.megatron import find_megatron_shards
    from plug_jax.families.plug.convert_megatron import load_plug_checkpoint
    config = _preset_config(options)
    if os.path.isdir(path):
        find_megatron_shards(path)  # one clear line when no mp_rank files
    params = load_plug_checkpoint(
        path, config, num_ranks=options["num_ranks"],
        embedding_norm="drop" if options.get("drop_embedding_norm") else "error")
    return config, params


def _export_megatron(config, params, out, options) -> str:
    import numpy as np
    import jax

    from plug_jax.families.plug.convert_megatron import plug_to_megatron_shards, save_megatron_shards
    shards = plug_to_megatron_shards(params, config, num_shards=options["num_ranks"])
    save_megatron_shards(shards, out)
    count = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
    return f"{count:,} parameters ({len(shards)} mp_rank_XX_model_states.pt files)"


def describe(c) -> str:
    return (f"preset={c.preset} encoder_layers={c.num_encoder_layers} "
            f"decoder_layers={c.num_decoder_layers} heads={c.num_heads} "
            f"hidden={c.hidden_size} ffn={c.mlp_dim} vocab={c.vocab_size} "
            f"max_pos={c.max_position_embeddings} norm={c.norm_placement}")


_BIG_ENCDEC = ("ACTIVATION_DTYPE='bfloat16'", "REMAT_POLICY='full'",
               "TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 512}", "BATCH_SIZE=512",
               "NUM_MICROBATCHES=4")


def plan_rows() -> tuple[PlanRow, ...]:
    return (
        # Encoder-decoder; stage 2 draws encoder and decoder lengths up to 512.
        PlanRow("plug-27B / 64xH100", "models/plug/27B.gin", "fsdp:8,model:8", "h100_80gb",
                "27B [V-card]", "8 hosts x 8 H100", _BIG_ENCDEC, "partitioning/fsdp_tp.gin"),
        # PLUG-MoE 20B (defined in plug_jax/families/plug/README.md): 8 experts on 'expert'.
        PlanRow("plug-moe-20B / 64xH100", "models/plug/20B-MoE.gin", "fsdp:8,expert:8",
                "h100_80gb", "20B [NF: defined here]", "8 hosts x 8 H100", _BIG_ENCDEC,
                "partitioning/ep_fsdp_tp.gin"),
    )


def _prompt_batch(model, vocabulary, prompts, max_length: int = 128):
    from plug_jax.families.structbert.family import prompt_batch
    return prompt_batch(model, vocabulary, prompts, max_length)


_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=8", "EVAL_STEPS=1", "LOG_PERIOD=1")

FAMILY = FamilySpec(
    name="plug",
    config_cls=PlugConfig,
    listing_order=2,
    networks={"encdec_lm": _encdec, "encoder": _encoder},
    flops={"encdec_lm": _encdec_flops, "encoder": _encoder_flops},
    converters=(
        Converter("megatron", "import", _import_megatron, "PLUG's Megatron tensor-parallel "
                  "shards (mp_rank_00..07 model states)",
                  uses=("preset", "vocab_size", "num_ranks", "drop_embedding_norm"),
                  describe=describe),
        Converter("megatron", "export", _export_megatron, "mp_rank_XX_model_states.pt shards",
                  uses=("num_ranks",)),
    ),
    plan_rows=plan_rows,
    feature_converters=("encdec", "encdec_mlm", "encoder"),
    experiments=(Experiment("experiments/plug/shop_stage1_tiny.gin", _SHORT),
                 Experiment("experiments/plug/shop_stage2_tiny.gin", _SHORT,
                            needs="experiments/plug/shop_stage1_tiny.gin"),
                 Experiment("experiments/plug/shop_stage2_tiny_moe.gin", _SHORT,
                            needs="experiments/plug/shop_stage1_tiny.gin")),
    encoder_config=lambda config: config.encoder,  # the nested StructBERTConfig
    extras={"prompt_batch": _prompt_batch},  # stage 1 reads prompts as StructBERT does
)
