"""ChatPLUG's :class:`~plug_jax.families.spec.FamilySpec` (``plug_jax.families.chatplug.FAMILY``)."""
from __future__ import annotations

from plug_jax.families.chatplug.chat import run_chat
from plug_jax.families.chatplug.config import ChatPLUGConfig
from plug_jax.families.spec import Converter, Experiment, FamilySpec, PlanRow


def _encdec(config, **kw):
    from plug_jax.families.chatplug.network import ChatPLUGModel
    return ChatPLUGModel(config, **kw)


def _flops(config, batch: int, lengths) -> float:
    from plug_jax.families.chatplug.flops import training_flops_per_example
    return batch * training_flops_per_example(config, lengths["inputs"], lengths["targets"])


def _import(fmt: str):
    def run(path, options):
        """Sizes from the config.json beside the weights (else ``--preset``); the FiD limits
        from that config.json's XDPX keys, else ``--preset``, else as released."""
        from plug_jax.families.chatplug.convert import load_chatplug_checkpoint
        report = options.get("report")
        return load_chatplug_checkpoint(path, fmt, preset=options.get("preset"),
                                        scan_layers=options["scan_layers"],
                                        report=report if isinstance(report, list) else None)
    return run


def _export(fmt: str):
    def run(config, params, out, options) -> str:
        from plug_jax.families.chatplug.convert import save_mt5, save_xdpx
        return (save_mt5 if fmt == "mt5" else save_xdpx)(config, params, out)
    return run


def describe(c) -> str:
    return (f"preset={c.preset} layers={c.num_layers}+{c.decoder_layers} d_model={c.d_model} "
            f"heads={c.num_heads}x{c.d_kv} d_ff={c.d_ff} vocab={c.vocab_size} "
            f"passages={c.num_passages}x{c.passage_length} decoder={c.max_decoder_length}")


# Supervised fine-tuning as released (MODEL_SPECS.md section 13): 20 passages of 380 encoder
# tokens, 512 decoder tokens, bf16, gradient checkpointing; batch 64 per update.
SFT = ("ACTIVATION_DTYPE='bfloat16'", "REMAT_POLICY='full'",
       "TASK_FEATURE_LENGTHS={'inputs': 7600, 'targets': 512}", "BATCH_SIZE=64",
       "NUM_MICROBATCHES=4")


def plan_rows() -> tuple[PlanRow, ...]:
    return (
        PlanRow("chatplug-3.7B SFT / 8xH100", "models/chatplug/3.7B.gin", "fsdp:8",
                "h100_80gb", "3.7B [V-card; mT5-XL V-code]", "1 host x 8 H100", SFT),
    )


# The contract's smoke run (a FiD model on an existing Shop World encoder-decoder task: each
# description is cut into passages of 32 tokens).
_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=8", "EVAL_STEPS=1", "LOG_PERIOD=1")

FAMILY = FamilySpec(
    name="chatplug",
    config_cls=ChatPLUGConfig,
    listing_order=8,
    networks={"encdec_lm": _encdec},
    flops={"encdec_lm": _flops},
    converters=(
        Converter("mt5", "import", _import("mt5"), "transformers MT5ForConditionalGeneration "
                  "folder (config.json + model.safetensors or pytorch_model.bin)",
                  uses=("preset",), describe=describe),
        Converter("xdpx", "import", _import("xdpx"), "ChatPLUG XDPX FIDT5Chat state dict "
                  "(backbone.*, module.* stripped; a .pt file or its folder, config.json "
                  "beside it)", uses=("preset",), describe=describe),
        Converter("mt5", "export", _export("mt5"), "MT5ForConditionalGeneration folder: "
                  "config.json (+ the FiD limits) + model.safetensors"),
        Converter("xdpx", "export", _export("xdpx"), "XDPX FIDT5Chat checkpoint.pt + "
                  "config.json"),
    ),
    plan_rows=plan_rows,
    feature_converters=("encdec",),
    experiments=(Experiment("experiments/chatplug/shop_dialogue_zh_tiny.gin", _SHORT),
                 Experiment("experiments/chatplug/shop_fid_title_tiny.gin", _SHORT)),
    extras={"chat": run_chat},  # plug-infer --chat (chat.py; gin-configurable)
)
