"""The CLIP family's config: a :class:`plug_jax.layers.clip.CLIPConfig` (the two tower
configs, nested) plus the preset name a checkpoint records.

Presets: ``tiny`` (tests and the Shop World experiment: 64x64 images in 8x8 patches, two
64-wide layers per tower, the Shop World vocabulary's end-of-sequence id 1 as the pooled
token) and the published OpenAI sizes ``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``,
``ViT-L/14-336`` (:data:`plug_jax.layers.clip._PRESETS`).
"""
from __future__ import annotations

import dataclasses

from plug_jax.layers.clip import _PRESETS, CLIPConfig, CLIPTextConfig, CLIPVisionConfig

TINY = (dict(image_size=64, patch_size=8, width=64, layers=2, heads=4, mlp_dim=256),
        dict(vocab_size=1024, max_len=64, width=64, layers=2, heads=4, mlp_dim=256,
             eos_token_id=1), 64)
PRESETS = ("tiny",) + tuple(_PRESETS)


def apply_tower_overrides(vision: dict, text: dict, overrides) -> None:
    """``vision_<field>`` / ``text_<field>`` set one tower's field, any other key both."""
    for key, value in overrides.items():
        for prefix, d in (("vision_", vision), ("text_", text)):
            if key.startswith(prefix):
                d[key[len(prefix):]] = value
                break
        else:
            vision[key] = text[key] = value


class ClipTowersProperties:
    """What a family config nesting ``clip: CLIPConfig`` answers for the trainer, plug-plan
    and plug-convert (CLIP, X-CLIP)."""

    @property
    def vocab_size(self) -> int:
        return self.clip.text.vocab_size

    @property
    def scan_layers(self) -> bool:
        return self.clip.vision.scan_layers

    @property
    def dtype(self) -> str:
        return self.clip.vision.dtype

    @property
    def param_dtype(self) -> str:
        return self.clip.vision.param_dtype

    @property
    def remat_policy(self) -> str:
        return self.clip.vision.remat_policy

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class ClipConfig(ClipTowersProperties):
    """``clip``: the towers (nested :class:`CLIPConfig`); ``preset``: its name, for metadata."""

    clip: CLIPConfig = dataclasses.field(default_factory=CLIPConfig)
    preset: str = "custom"

    @classmethod
    def from_dict(cls, data) -> "ClipConfig":
        """The config ``dataclasses.asdict`` wrote (``config.json`` of a plug-convert output,
        checkpoint metadata), with its nested tower dicts rebuilt; unknown keys dropped."""
        def build(kind, d):
            if not isinstance(d, dict):
                return d
            known = {f.name for f in dataclasses.fields(kind)}
            return kind(**{k: v for k, v in d.items() if k in known})
        clip = dict(data).get("clip", {})
        if isinstance(clip, dict):
            extra = {k: v for k, v in clip.items() if k not in ("vision", "text")
                     and k in {f.name for f in dataclasses.fields(CLIPConfig)}}
            clip = CLIPConfig(vision=build(CLIPVisionConfig, clip.get("vision", {})),
                              text=build(CLIPTextConfig, clip.get("text", {})), **extra)
        return cls(clip=clip, preset=dict(data).get("preset", "custom"))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ClipConfig":
        """A preset; ``overrides`` of tower fields apply to both towers (``dtype``,
        ``scan_layers``, ...), ``vision_<field>`` / ``text_<field>`` to one."""
        if name not in PRESETS:
            raise ValueError(f"unknown CLIP preset {name!r}; choose one of {list(PRESETS)}")
        v, t, p = TINY if name == "tiny" else _PRESETS[name]
        v, t = dict(v), dict(t)
        apply_tower_overrides(v, t, overrides)
        try:
            return cls(CLIPConfig(vision=CLIPVisionConfig(**v, projection_dim=p),
                                  text=CLIPTextConfig(**t, projection_dim=p)), preset=name)
        except TypeError as e:
            raise ValueError(f"ClipConfig.from_preset({name!r}): {e}") from None
