"""PALM's :class:`~plug_jax.families.spec.FamilySpec` (``plug_jax.families.palm.FAMILY``)."""
from __future__ import annotations

import os

from plug_jax.families.palm.config import PalmConfig
from plug_jax.families.spec import Converter, Experiment, FamilySpec


def _encdec(config, **kw):
    from plug_jax.families.palm.network import PalmModel
    return PalmModel(config, **kw)


def _flops(config, batch: int, lengths) -> float:
    from plug_jax.families.palm.flops import training_flops_per_example
    return batch * training_flops_per_example(config, lengths["inputs"], lengths["targets"])


def _import(layout: str):
    def run(path, options):
        """The sizes: ``--preset``, else (ModelScope) the dir's ``config.json`` and the
        encoder's ``config.json`` (``config_from_modelscope``). The copy head follows the
        checkpoint: with AliceMind's ``generator.prob_proj`` the released CopyGenerator
        (``copy_softmax``, gate on [context; state]), without it ``copy=False``. Tensors
        skipped on purpose (buffers, a trainer-saved file's ``loss.*``) go to the report."""
        from plug_jax.convert import io as cio
        from plug_jax.families.palm.convert import (_normalise, config_from_modelscope,
                                                    palm_from_state_dict)
        model_dir = path if os.path.isdir(path) else (os.path.dirname(path) or ".")
        from_json = layout == "modelscope" and not options.get("preset")
        if not options.get("preset") and not (
                from_json and os.path.isfile(os.path.join(model_dir, "config.json"))):
            where = (" or a ModelScope config.json in the model dir" if layout == "modelscope"
                     else "")
            raise ValueError(f"family 'palm' needs --preset (base, large, base-zh, large-zh or "
                             f"tiny) for the sizes of the checkpoint{where}")
        files = cio.find_hf_weights(path) if os.path.isdir(path) else [path]
        sd = cio.load_weights_files(files)
        flat, found = _normalise(sd)
        if found != layout:
            raise ValueError(f"{path} holds a {found} PALM checkpoint; use --source {found}")
        copy = "generator.prob_proj.weight" in flat
        over = {"scan_layers": options["scan_layers"], "copy": copy}
        if copy:
            over.update(copy_gate_uses_input=False, copy_softmax=True)
        if options.get("vocab_size") is not None:
            over["vocab_size"] = options["vocab_size"]
        if from_json:
            config = config_from_modelscope(model_dir, **over)
        else:
            config = PalmConfig.from_preset(options["preset"], **over)
        report = options.get("report")
        return config, palm_from_state_dict(sd, config,
                                            report=report if isinstance(report, list) else None)
    return run


def _export(layout: str):
    def run(config, params, out, options) -> str:
        """AliceMind: ``pytorch_model.bin`` (torch tensors, what AliceMind's loader reads).
        ModelScope: a palm_v2 model dir (``save_modelscope_dir``): ``config.json`` (ModelScope's
        PalmConfig), the encoder's ``config.json`` in ``encoder_pth`` (``bert/`` or
        ``roberta/``), ``configuration.json`` and ``pytorch_model.bin`` (the AbsSummarizer
        state dict), which ``--source modelscope`` reads back without ``--preset``."""
        import numpy as np
        import torch

        from plug_jax.families.palm.convert import palm_to_state_dict, save_modelscope_dir
        if layout == "modelscope":
            return save_modelscope_dir(config, params, out)
        sd = palm_to_state_dict(params, config, layout=layout)
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                   os.path.join(out, "pytorch_model.bin"))
        count = int(sum(np.size(v) for k, v in sd.items() if not k.startswith("generator.")))
        return f"{count:,} parameters ({len(sd)} tensors in pytorch_model.bin)"
    return run


def describe(c) -> str:
    return (f"preset={c.preset} encoder_layers={c.num_encoder_layers} "
            f"decoder_layers={c.num_decoder_layers} heads={c.num_heads} "
            f"hidden={c.hidden_size} vocab={c.vocab_size} copy={c.copy}")


_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=8", "EVAL_STEPS=1", "LOG_PERIOD=1")

FAMILY = FamilySpec(
    name="palm",
    config_cls=PalmConfig,
    listing_order=3,
    networks={"encdec_lm": _encdec},
    flops={"encdec_lm": _flops},
    converters=(
        Converter("alicemind", "import", _import("alicemind"), "AliceMind PALM weights "
                  "(bert.model.*; with or without the -p_gen copy head)",
                  uses=("preset", "vocab_size"), describe=describe),
        Converter("modelscope", "import", _import("modelscope"), "ModelScope palm_v2 dir "
                  "(config.json + encoder config; pytorch_model.bin: the AbsSummarizer state "
                  "dict, or the trainer's PalmForTextGeneration one with palm./loss. keys)",
                  uses=("preset", "vocab_size"), describe=describe),
        # round_trip_config: the tiny preset's copy head as each layout can hold it (the
        # AliceMind -p_gen head mixes after a softmax and its gate reads no inputs;
        # ModelScope's palm_v2 has no copy head)
        Converter("alicemind", "export", _export("alicemind"), "pytorch_model.bin, AliceMind "
                  "names", round_trip_config=lambda c: c.replace(copy_gate_uses_input=False,
                                                                 copy_softmax=True)),
        Converter("modelscope", "export", _export("modelscope"), "ModelScope palm_v2 dir: "
                  "config.json + bert/ (or roberta/) config.json + configuration.json + "
                  "pytorch_model.bin (no copy head)",
                  round_trip_config=lambda c: c.replace(copy=False)),
    ),
    feature_converters=("encdec",),
    experiments=(Experiment("experiments/palm/shop_title_tiny.gin", _SHORT),
                 Experiment("experiments/palm/shop_palm2_tiny.gin", _SHORT)),
)
