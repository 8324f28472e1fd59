"""X-CLIP's :class:`~plug_jax.families.spec.FamilySpec` (``plug_jax.families.xclip.FAMILY``).

X-CLIP (Ma et al. 2022) is video-text retrieval by multi-grained contrast on CLIP: it trains
on Shop World videos and their captions (``xclip_shop_video_retrieval_en_v1``, 8 frames),
converts the release's checkpoints both ways (``--source xclip`` /
``--to xclip``) and starts from an OpenAI CLIP state dict as the release does
(``--source openai``).
"""
from __future__ import annotations

from plug_jax.families.spec import Converter, Experiment, FamilySpec, PlanRow
from plug_jax.families.xclip.config import XClipConfig


def _network(config, **kw):
    from plug_jax.families.xclip.network import XCLIPDualEncoder
    return XCLIPDualEncoder(config, **kw)


def _flops(config, batch: int, lengths) -> float:
    from plug_jax.families.xclip.flops import training_flops
    return training_flops(config, batch, lengths)


def _import(path, options):
    from plug_jax.families.xclip import convert
    sd = convert.read_state_dict(path)
    base = None
    if options.get("preset"):
        base = XClipConfig.from_preset(options["preset"], scan_layers=options["scan_layers"])
    elif not options["scan_layers"]:
        base = XClipConfig.from_preset("ViT-B/32-msrvtt", scan_layers=False).replace(
            preset="custom")
    config, params = convert.xclip_from_state_dict(sd, base)
    if not any(k.startswith("clip.") for k in sd):
        options["report"].append(
            f"an OpenAI CLIP state dict: the temporal transformer starts from the first "
            f"{config.temporal_layers} text blocks, the frame positions from the text "
            f"positions, the eight matrices from the identity ({config.num_frames} frames, "
            f"{config.num_words} words), as the release initialises X-CLIP")
    return config, params


def _export(config, params, out, options):
    import os

    import torch

    from plug_jax.families.xclip import convert
    sd = convert.xclip_to_state_dict(params, config)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, os.path.join(out, "model.pt"))
    return (f"model.pt ({len(sd)} tensors: the release's XCLIP state dict, {config.num_frames} "
            f"frames x {config.num_words} words)")


def _describe(c) -> str:
    v, t = c.clip.vision, c.clip.text
    return (f"vision: {v.image_size}px patch {v.patch_size} width {v.width} layers {v.layers}; "
            f"text: vocab {t.vocab_size} width {t.width} layers {t.layers}; projection "
            f"{c.clip.projection_dim}; {c.num_frames} frames x {c.num_words} words; temporal "
            f"layers {c.temporal_layers}")


def plan_rows() -> tuple[PlanRow, ...]:
    """docs/scaling.md: ViT-B/16 X-CLIP trained on MSR-VTT as released (batch 80, 12 frames
    x 32 words at 224 px) on one 8xH100 host, bf16 compute, the towers rematerialised."""
    return (
        PlanRow("xclip ViT-B/16 MSR-VTT / 8xH100", "models/xclip/vit_b16_msrvtt.gin", "data:8",
                "h100_80gb", "162.8M (CLIP 149.6M [V-code] + X-CLIP heads)",
                "1 host x 8 H100",
                ("ACTIVATION_DTYPE='bfloat16'", "BATCH_SIZE=80", "REMAT_POLICY='full'",
                 "TASK_FEATURE_LENGTHS={'frames': (12, 224, 224, 3), 'targets': 32}")),
    )


_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=4", "EVAL_STEPS=1", "LOG_PERIOD=1", "EVAL_PERIOD=2",
          "CHECKPOINT_PERIOD=2")

FAMILY = FamilySpec(
    name="xclip",
    config_cls=XClipConfig,
    listing_order=6,
    networks={"dual_encoder": _network},
    flops={"dual_encoder": _flops},
    converters=(
        Converter("xclip", "import", _import, "X-CLIP checkpoint (torch.save of XCLIP's state "
                  "dict: pytorch_model.bin.<epoch>, or a folder holding it)", uses=("preset",),
                  describe=_describe),
        Converter("xclip", "export", _export, "X-CLIP state dict (model.pt)"),
        Converter("openai", "import", _import, "OpenAI CLIP state dict: X-CLIP initialised "
                  "as the release does", uses=("preset",), describe=_describe,
                  checked_by="tests/convert/test_xclip_checkpoints.py"),
    ),
    plan_rows=plan_rows,
    feature_converters=("video_text",),
    experiments=(Experiment("experiments/xclip/shop_tiny.gin", _SHORT),),
)
