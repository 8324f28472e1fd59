"""CLIP's :class:`~plug_jax.families.spec.FamilySpec` (``plug_jax.families.clip.FAMILY``).

CLIP is the contrastive image-text dual encoder that mPLUG's visual encoder, X-CLIP and
mPLUG-2 start from; as a family of its own it trains on Shop World images and their
captions (``clip_shop_captions_en_v1``) and converts transformers ``CLIPModel`` checkpoints
both ways.
"""
from __future__ import annotations

from plug_jax.families.clip.config import ClipConfig
from plug_jax.families.spec import Converter, Experiment, FamilySpec


def _network(config, **kw):
    from plug_jax.families.clip.network import CLIPDualEncoder
    return CLIPDualEncoder(config.clip, **kw)


def _flops(config, batch: int, lengths) -> float:
    from plug_jax.families.clip.flops import training_flops
    return training_flops(config, batch, lengths)


def _import_hf(path, options):
    import os

    from plug_jax.families.clip import convert_hf as hf_clip
    over = {"scan_layers": options["scan_layers"]}
    if os.path.isdir(path):
        config, params = hf_clip.load_clip_checkpoint(path, **over)
    else:
        raise ValueError(f"{path} is not a folder; fix: pass the directory that "
                         f"CLIPModel.save_pretrained wrote (config.json + weights)")
    return ClipConfig(config), params


def _export_hf(config, params, out, options):
    import os

    from safetensors.numpy import save_file

    from plug_jax.families.clip import convert_hf as hf_clip
    sd = hf_clip.clip_to_hf(params, config.clip)
    hf_cfg = hf_clip.clip_to_hf_config(config.clip)
    hf_cfg.architectures = ["CLIPModel"]
    hf_cfg.save_pretrained(out)
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    return f"config.json + model.safetensors ({len(sd)} tensors, CLIPModel)"


def _import_openai(path, options):
    from plug_jax.families.clip import convert_openai as oa
    sd = oa.read_state_dict(path)
    base = ClipConfig.from_preset(options["preset"]) if options.get("preset") else None
    over = {"scan_layers": options["scan_layers"]}
    config = oa.openai_clip_config(sd, **over)
    if base is not None:  # what the layout does not store (pooling, end-of-text id)
        config = config.replace(text=config.text.replace(eos_token_id=base.clip.text.eos_token_id,
                                                         pooling=base.clip.text.pooling),
                                logit_scale_init=base.clip.logit_scale_init)
    config, params = oa.clip_from_openai(sd, config)
    return ClipConfig(config, preset=options.get("preset") or "custom"), params


def _export_openai(config, params, out, options):
    import os

    import torch

    from plug_jax.families.clip import convert_openai as oa
    sd = oa.clip_to_openai(params, config.clip)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, os.path.join(out, "model.pt"))
    return f"model.pt ({len(sd)} tensors, the OpenAI CLIP state dict layout)"


def _openai_round_trip(c):
    """The OpenAI layout stores no head count (readers take width // 64)."""
    v, t = c.clip.vision, c.clip.text
    return c.replace(clip=c.clip.replace(vision=v.replace(heads=max(v.width // 64, 1)),
                                         text=t.replace(heads=max(t.width // 64, 1))))


def _describe(c) -> str:
    v, t = c.clip.vision, c.clip.text
    return (f"vision: {v.image_size}px patch {v.patch_size} width {v.width} layers {v.layers} "
            f"heads {v.heads}; text: vocab {t.vocab_size} len {t.max_len} width {t.width} "
            f"layers {t.layers} heads {t.heads}; projection {v.projection_dim}")


_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=8", "EVAL_STEPS=1", "LOG_PERIOD=1", "EVAL_PERIOD=2",
          "CHECKPOINT_PERIOD=2")

FAMILY = FamilySpec(
    name="clip",
    config_cls=ClipConfig,
    listing_order=4,
    networks={"dual_encoder": _network},
    flops={"dual_encoder": _flops},
    converters=(
        Converter("hf", "import", _import_hf, "transformers CLIPModel save_pretrained folder",
                  describe=_describe),
        Converter("hf", "export", _export_hf, "transformers CLIPModel folder (config.json + "
                  "model.safetensors)"),
        Converter("openai", "import", _import_openai, "OpenAI CLIP state dict file (.pt / .bin "
                  "/ .safetensors: visual.conv1.weight, transformer.resblocks.N.*); heads = "
                  "width // 64", uses=("preset",), describe=_describe,
                  round_trip_config=_openai_round_trip),
        Converter("openai", "export", _export_openai, "OpenAI CLIP state dict (model.pt)",
                  round_trip_config=_openai_round_trip),
    ),
    feature_converters=("image_text",),
    experiments=(Experiment("experiments/clip/shop_tiny.gin", _SHORT),),
)
