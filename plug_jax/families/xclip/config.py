"""The X-CLIP family's config (Ma et al. 2022, arXiv 2207.07285).

:class:`XClipConfig` nests the CLIP towers (:class:`plug_jax.layers.clip.CLIPConfig`) and adds
what X-CLIP puts on top of them:

* ``num_frames`` / ``num_words``: the frames per video and the words per caption. The
  released model's four square "logit" matrices over frames and words have these sizes, so
  a checkpoint is tied to them (MSR-VTT: 12 frames x 32 words; DiDeMo / ActivityNet: 64 x
  64) and a batch must have exactly these lengths;
* the temporal transformer over the frame embeddings (the release's ``seqTransf`` header):
  ``temporal_layers`` (4) pre-LN blocks of the CLIP text-tower shape, as wide as the
  projected embeddings, with ``temporal_heads`` heads (the release: text width // 64),
  LayerNorm epsilon 1e-12 (the release's TF-style LayerNorm), and a learned table of
  ``frame_positions`` frame positions (the release sizes it as the CLIP context length, 77,
  and initialises it from the text positions);
* ``temperature``: the hard-coded 0.01 of the attention over similarity vectors and AOSM.

Presets: ``tiny`` (tests and the Shop World experiment), and the published ViT-B/32 and
ViT-B/16 runs at 12 frames x 32 words (``-msrvtt``) and 64 x 64 (``-didemo``; also
ActivityNet). Every head in a preset has 64 dimensions (the OpenAI layout stores no head
count: readers take width // 64), so every preset, tiny included, round-trips through the
released layouts.
"""
from __future__ import annotations

import dataclasses

from plug_jax.families.clip.config import ClipTowersProperties, apply_tower_overrides
from plug_jax.layers.clip import _PRESETS, CLIPConfig, CLIPTextConfig, CLIPVisionConfig

# tiny: 64x64 frames in 8x8 patches, two 64-wide one-head layers per tower, 64-d embeddings,
# the Shop World end-of-sequence id 1 as the pooled token; 8 frames x 64 words (Shop World's
# English video captions take 49 SentencePiece tokens at the median, 62 at most: 32 words
# would cut off the order of events).
TINY = (dict(image_size=64, patch_size=8, width=64, layers=2, heads=1, mlp_dim=256),
        dict(vocab_size=1024, max_len=64, width=64, layers=2, heads=1, mlp_dim=256,
             eos_token_id=1), 64, dict(num_frames=8, num_words=64, temporal_layers=2,
                                        temporal_heads=1, frame_positions=64))
_PUBLISHED = {"msrvtt": dict(num_frames=12, num_words=32),
              "didemo": dict(num_frames=64, num_words=64)}
PRESETS = ("tiny",) + tuple(f"{clip}-{data}" for clip in ("ViT-B/32", "ViT-B/16")
                            for data in _PUBLISHED)
XCLIP_FIELDS = ("num_frames", "num_words", "temporal_layers", "temporal_heads",
                "frame_positions", "temperature")


@dataclasses.dataclass(frozen=True)
class XClipConfig(ClipTowersProperties):
    """``clip``: the towers; the rest: see the module docstring."""

    clip: CLIPConfig = dataclasses.field(default_factory=CLIPConfig)
    num_frames: int = 12
    num_words: int = 32
    temporal_layers: int = 4
    temporal_heads: int = 8
    frame_positions: int = 77
    temperature: float = 0.01
    preset: str = "custom"

    def __post_init__(self):
        for field in ("num_frames", "num_words", "temporal_layers", "temporal_heads",
                      "frame_positions"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"XClipConfig: {field} must be >= 1, got "
                                 f"{getattr(self, field)}")
        if self.num_frames > self.frame_positions:
            raise ValueError(f"XClipConfig: num_frames {self.num_frames} exceeds the "
                             f"{self.frame_positions} frame positions; raise frame_positions")
        if self.num_words > self.clip.text.max_len:
            raise ValueError(f"XClipConfig: num_words {self.num_words} exceeds the text "
                             f"tower's max_len {self.clip.text.max_len}")
        if self.clip.projection_dim % self.temporal_heads:
            raise ValueError(f"XClipConfig: the temporal transformer's width (the projection "
                             f"dim {self.clip.projection_dim}) is not divisible by "
                             f"temporal_heads {self.temporal_heads}")
        if not self.temperature > 0:
            raise ValueError(f"XClipConfig: temperature must be > 0, got {self.temperature}")

    @property
    def temporal(self) -> CLIPTextConfig:
        """The temporal transformer's block config (a CLIP text-tower block shape)."""
        t, p = self.clip.text, self.clip.projection_dim
        return CLIPTextConfig(vocab_size=1, max_len=self.frame_positions, width=p,
                              layers=self.temporal_layers, heads=self.temporal_heads,
                              mlp_dim=4 * p, projection_dim=p, layer_norm_eps=1e-12,
                              activation="quick_gelu", dtype=t.dtype, param_dtype=t.param_dtype,
                              scan_layers=t.scan_layers, remat_policy=t.remat_policy)

    @classmethod
    def from_dict(cls, data) -> "XClipConfig":
        """The config ``dataclasses.asdict`` wrote (checkpoint metadata, ``config.json``)."""
        from plug_jax.families.clip.config import ClipConfig
        data = dict(data)
        clip = ClipConfig.from_dict({"clip": data.get("clip", {})}).clip
        known = {f.name for f in dataclasses.fields(cls)} - {"clip"}
        return cls(clip=clip, **{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "XClipConfig":
        """A preset; X-CLIP fields (``num_frames``, ``num_words``, ...) set themselves, tower
        fields apply to both towers (``dtype``, ``scan_layers``, ...), ``vision_<field>`` /
        ``text_<field>`` to one."""
        if name not in PRESETS:
            raise ValueError(f"unknown X-CLIP preset {name!r}; choose one of {list(PRESETS)}")
        if name == "tiny":
            v, t, p, x = TINY
        else:
            clip, data = name.rsplit("-", 1)
            v, t, p = _PRESETS[clip]
            x = dict(_PUBLISHED[data], temporal_layers=4, temporal_heads=t["width"] // 64,
                     frame_positions=77)
        v, t, x = dict(v), dict(t), dict(x)
        x.update({k: val for k, val in overrides.items() if k in XCLIP_FIELDS})
        apply_tower_overrides(v, t, {k: val for k, val in overrides.items()
                                     if k not in XCLIP_FIELDS})
        if name != "tiny":  # the OpenAI text tower pools at the largest id
            t.setdefault("pooling", "argmax")
        try:
            towers = CLIPConfig(vision=CLIPVisionConfig(**v, projection_dim=p),
                                text=CLIPTextConfig(**t, projection_dim=p))
            return cls(towers, preset=name, **x)
        except TypeError as e:
            raise ValueError(f"XClipConfig.from_preset({name!r}): {e}") from None
