"""``AMTSSConfig``: the AMTSS student (a shared StructBERT/BERT encoder with per-language
projection layers) and its presets.

The config nests the encoder's own :class:`StructBERTConfig` (it does not copy its fields) and
adds only what the student has of its own: the languages (one projection layer each, selected
by the ``lang`` id of an example) and the number of labels. Teachers are not part of the
student's config: by default their logits come with the data (README, "Teachers").

Presets: ``tiny`` (tests; StructBERT ``tiny``), ``small`` (the Shop World intent experiment;
StructBERT ``small``) and ``base`` (a BERT-base-shaped student over XLM-R's 250002-token
vocabulary: a size the abstract's setting suggests; MODEL_SPECS.md section 12 gives no
student size, so this one is a [guess]).
"""
from __future__ import annotations

import dataclasses

from plug_jax.families.structbert.config import PRESETS as ENCODER_PRESETS
from plug_jax.families.structbert.config import StructBERTConfig

# Shop World's query languages (plug_jax.data.shop_world.QUERY_LANGS): example i of the
# `queries` config is in language i % 6, in this order.
SHOP_LANGUAGES = ("zh", "en", "de", "fr", "es", "ja")
SHOP_INTENTS = 5  # shop_world.INTENTS


@dataclasses.dataclass(frozen=True)
class AMTSSConfig:
    encoder: StructBERTConfig = dataclasses.field(
        default_factory=lambda: ENCODER_PRESETS["tiny"])
    languages: tuple[str, ...] = SHOP_LANGUAGES
    num_labels: int = SHOP_INTENTS
    preset: str = "custom"

    def __post_init__(self):
        object.__setattr__(self, "languages", tuple(self.languages))
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"AMTSSConfig: languages {self.languages} must be distinct and "
                             f"non-empty")
        if self.num_labels < 2:
            raise ValueError(f"AMTSSConfig: num_labels must be >= 2, got {self.num_labels}")

    @property
    def num_languages(self) -> int:
        return len(self.languages)

    # What checkpoint metadata (plug_jax.models.base.model_metadata) reads.
    @property
    def dtype(self) -> str:
        return self.encoder.dtype

    @property
    def param_dtype(self) -> str:
        return self.encoder.param_dtype

    @property
    def scan_layers(self) -> bool:
        return self.encoder.scan_layers

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    def replace(self, **kw) -> "AMTSSConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_dict(cls, data) -> "AMTSSConfig":
        """The config ``dataclasses.asdict`` recorded (checkpoint metadata, ``config.json``):
        the encoder as a dict, ``languages`` as a list; unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in dict(data).items() if k in known}
        if isinstance(kw.get("encoder"), dict):
            names = {f.name for f in dataclasses.fields(StructBERTConfig)}
            kw["encoder"] = StructBERTConfig(**{k: v for k, v in kw["encoder"].items()
                                                if k in names})
        return cls(**kw)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "AMTSSConfig":
        """``overrides``: this config's fields, or the encoder's (``hidden_size=128``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown AMTSS preset {name!r}; choose one of {list(PRESETS)}")
        base = PRESETS[name]
        own = {k: v for k, v in overrides.items() if k in _OWN_FIELDS}
        enc = {k: v for k, v in overrides.items() if k not in _OWN_FIELDS}
        encoder = dataclasses.replace(base.encoder, **enc) if enc else base.encoder
        return dataclasses.replace(base, encoder=encoder, preset=name, **own)


_OWN_FIELDS = {"languages", "num_labels", "encoder"}

PRESETS: dict[str, AMTSSConfig] = {
    "tiny": AMTSSConfig(encoder=ENCODER_PRESETS["tiny"]),
    "small": AMTSSConfig(encoder=ENCODER_PRESETS["small"]),
    "base": AMTSSConfig(encoder=StructBERTConfig(
        vocab_size=250002, num_layers=12, num_heads=12, hidden_size=768, ffn_size=3072,
        max_position_embeddings=514, type_vocab_size=1, layer_norm_epsilon=1e-5)),
}
PRESETS = {k: dataclasses.replace(v, preset=k) for k, v in PRESETS.items()}
