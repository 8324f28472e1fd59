"""GPT-3's :class:`~plug_jax.families.spec.FamilySpec` (exported as ``plug_jax.families.gpt3.FAMILY``)."""
from __future__ import annotations

from plug_jax.families.gpt3.config import GPT3Config
from plug_jax.families.spec import Converter, Experiment, FamilySpec, PlanRow


def _network(config, **kw):
    from plug_jax.families.gpt3.network import GPT3LM
    return GPT3LM(config, **kw)


def _flops(config, batch: int, lengths) -> float:
    from plug_jax.families.gpt3.flops import training_flops_per_token
    length = lengths["targets"]
    return float(training_flops_per_token(config, length)) * batch * length


def _import(fmt: str):
    def run(path, options):
        from plug_jax.families.gpt3.convert_hf import from_transformers
        from plug_jax.families.gpt3.convert_modelscope import from_modelscope
        fn = from_transformers if fmt == "hf" else from_modelscope
        return fn(path, scan_layers=options["scan_layers"])
    return run


def _export_modelscope(config, params, out_dir, options) -> str:
    from plug_jax.families.gpt3.convert_modelscope import save_modelscope
    return save_modelscope(config, params, out_dir)


def _export_hf(config, params, out_dir, options) -> str:
    from plug_jax.families.gpt3.convert_hf import save_transformers
    return save_transformers(config, params, out_dir)


def _describe(c) -> str:
    return (f"layers={c.num_layers} heads={c.num_heads} hidden={c.hidden_size} ffn={c.mlp_dim} "
            f"vocab={c.vocab_size} max_pos={c.max_position_embeddings} "
            f"activation={c.activation} eps={c.layer_norm_epsilon:g} "
            f"tied={c.tie_word_embeddings}")


# What a real large run sets: bf16 activations, full remat, 2048-token sequences.
BIG = ("ACTIVATION_DTYPE='bfloat16'", "REMAT_POLICY='full'",
       "TASK_FEATURE_LENGTHS={'targets': 2048}")


def plan_rows() -> tuple[PlanRow, ...]:
    tp = "partitioning/fsdp_tp.gin"
    return (
        PlanRow("gpt3-13B / 64xH100", "models/gpt3/13B.gin", "data:8,fsdp:8", "h100_80gb",
                "13B [V-card]", "8 hosts x 8 H100", BIG + ("BATCH_SIZE=256",
                                                          "NUM_MICROBATCHES=2")),
        PlanRow("gpt3-30B / 64xH100", "models/gpt3/30B.gin", "data:4,fsdp:16", "h100_80gb",
                "30B [V-card]", "8 hosts x 8 H100", BIG + ("BATCH_SIZE=256",
                                                          "NUM_MICROBATCHES=4")),
        PlanRow("gpt3-30B / v4-128", "models/gpt3/30B.gin", "fsdp:64", "tpu_v4",
                "30B [V-card]", "TPU v4-128 = 64 chips", BIG + ("BATCH_SIZE=256",
                                                               "NUM_MICROBATCHES=4")),
        PlanRow("gpt3-175B / 64xH100", "models/gpt3/175B.gin", "fsdp:8,model:8", "h100_80gb",
                "175B [V-card, WIP]", "8 hosts x 8 H100",
                BIG + ("BATCH_SIZE=512", "NUM_MICROBATCHES=64"), tp),
        PlanRow("gpt3-175B / 256xH100", "models/gpt3/175B.gin", "fsdp:32,model:8", "h100_80gb",
                "175B [V-card, WIP]", "32 hosts x 8 H100",
                BIG + ("BATCH_SIZE=512", "NUM_MICROBATCHES=16"), tp),
        PlanRow("gpt3-175B / v4-512", "models/gpt3/175B.gin", "fsdp:64,model:4", "tpu_v4",
                "175B [V-card, WIP]", "TPU v4-512 = 256 chips",
                BIG + ("BATCH_SIZE=512", "NUM_MICROBATCHES=8"), tp),
        PlanRow("gpt3-175B / v4-512 tp8", "models/gpt3/175B.gin", "fsdp:32,model:8", "tpu_v4",
                "175B [V-card, WIP]", "TPU v4-512 = 256 chips",
                BIG + ("BATCH_SIZE=512", "NUM_MICROBATCHES=16"), tp),
        PlanRow("gpt3-175B / v5p-128", "models/gpt3/175B.gin", "fsdp:16,model:4", "tpu_v5p",
                "175B [V-card, WIP]", "TPU v5p-128 = 64 chips",
                BIG + ("BATCH_SIZE=512", "NUM_MICROBATCHES=32"), tp),
        # GPT-MoE is named by its dense (active) size; the experts multiply the MoE FFNs.
        PlanRow("gpt-moe-1.3B-32E / 64xH100", "models/gpt3/1.3B-MoE-32.gin",
                "data:2,fsdp:4,expert:8", "h100_80gb", "1.3B active, 32 experts [V-code]",
                "8 hosts x 8 H100", BIG + ("BATCH_SIZE=256",), "partitioning/ep_fsdp_tp.gin"),
    )


_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=8", "EVAL_STEPS=1", "LOG_PERIOD=1", "EVAL_PERIOD=2",
          "CHECKPOINT_PERIOD=2", "MAX_NEW_TOKENS=4")

FAMILY = FamilySpec(
    name="gpt3",
    config_cls=GPT3Config,
    listing_order=0,
    networks={"decoder_lm": _network},
    flops={"decoder_lm": _flops},
    converters=(
        Converter("hf", "import", _import("hf"), "transformers GPT-2 (GPT2LMHeadModel) folder "
                  "or state dict", describe=_describe),
        Converter("hf", "export", _export_hf, "transformers GPT2LMHeadModel folder "
                  "(config.json + model.safetensors; a WordPiece vocabulary gets a "
                  "BertTokenizer tokenizer_config.json)"),
        Converter("modelscope", "import", _import("modelscope"), "ModelScope GPT-3 folder "
                  "(config.json + pytorch_model.bin, or Megatron mp_rank shards)",
                  describe=_describe),
        Converter("modelscope", "export", _export_modelscope, "ModelScope GPT3Model folder "
                  "(config.json + configuration.json + pytorch_model.bin; vocab.txt beside)"),
    ),
    plan_rows=plan_rows,
    feature_converters=("decoder",),
    experiments=(Experiment("experiments/gpt3/shop_tiny.gin", _SHORT),
                 Experiment("experiments/gpt3/shop_tiny_moe.gin", _SHORT)),
)
