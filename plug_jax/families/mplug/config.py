"""``MPlugConfig``: sizes of mPLUG (Li et al. 2022, arXiv 2205.12005), with presets.

MODEL_SPECS.md section 5 ([V-code] ``mPLUG/configs/config_bert*.json``,
``pretrain_mplug_{base,large}.yaml``):

* base: CLIP ViT-B/16 (12 layers, width 768) at 256 px, 6 text layers, 6 fusion layers with
  stride S = 3, 12 decoder layers; every text-side module is BERT-base shaped (768, 12 heads,
  FFN 3072, WordPiece vocab 30522, 512 positions). ~350M parameters.
* large: CLIP ViT-L/14 (24 layers, 1024) at 224 px, then ``visn_fc`` Linear(1024 -> 768) +
  ``visn_layer_norm`` (eps 1e-12) + dropout; S = 6 (no connected layer fires inside the 6
  fusion layers). ~600M parameters.
* tiny: 64-wide, 2 layers per part, 64 px images (Shop World) in 8 px patches, for tests.

The config nests a :class:`CLIPVisionConfig` (``vision``) and holds the BERT settings that the
text encoder, the fusion layers and the decoder share; :meth:`MPlugConfig.bert` gives the
:class:`StructBERTConfig` of one of them.
"""
from __future__ import annotations

import dataclasses

from plug_jax.families.structbert.config import StructBERTConfig
from plug_jax.layers.clip import CLIPVisionConfig
from plug_jax.layers.config_base import ConfigBase


@dataclasses.dataclass(frozen=True)
class MPlugConfig(ConfigBase):
    vision: CLIPVisionConfig = dataclasses.field(default_factory=CLIPVisionConfig)
    # BERT settings shared by text encoder, fusion layers and decoder (bert-base-uncased).
    vocab_size: int = 30522
    hidden_size: int = 768
    num_heads: int = 12
    ffn_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_epsilon: float = 1e-12
    activation: str = "gelu"
    text_layers: int = 6  # config_bert.json text_encoder_layers
    fusion_layers: int = 6  # fusion_layers (the top layers of a num_hidden_layers BERT)
    stride: int = 3  # stride_layer S: layer j != 0 with j % S == 0 is a connected layer
    decoder_layers: int = 12  # text_decode_layers
    # The released FusionModel builds num_hidden_layers (12) layers and skips the lower
    # num_hidden_layers - fusion_layers; only used for the "as instantiated" count and the
    # converter's layer offset (start layer).
    fusion_total_layers: int = 12
    # Large: Linear(vision.width -> hidden_size) + LayerNorm + dropout after the ViT.
    vision_proj_to_text: bool = False
    vision_proj_norm_eps: float = 1e-12
    # Retrieval heads (ALBEF): vision_proj / text_proj to embed_dim, temperature, ITM head.
    embed_dim: int = 256
    temp_init: float = 0.07
    # The decoder's MLM output matrix is tied to its word embeddings in the released models
    # (HF init_weights -> tie_weights); False gives a separate [vocab, hidden] matrix.
    tie_decoder_embeddings: bool = True
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    preset: str = "custom"

    def __post_init__(self):
        owner = "MPlugConfig"
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{owner}: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        for f in ("text_layers", "fusion_layers", "decoder_layers", "stride", "embed_dim"):
            if getattr(self, f) < 1:
                raise ValueError(f"{owner}: {f} must be >= 1, got {getattr(self, f)}")
        if self.fusion_total_layers < self.fusion_layers:
            raise ValueError(f"{owner}: fusion_total_layers {self.fusion_total_layers} < "
                             f"fusion_layers {self.fusion_layers}")
        if self.vision.width != self.hidden_size and not self.vision_proj_to_text:
            raise ValueError(f"{owner}: vision width {self.vision.width} != hidden_size "
                             f"{self.hidden_size}; set vision_proj_to_text=True (mPLUG large's "
                             f"visn_fc + visn_layer_norm)")
        self.check_basics(owner)

    @property
    def fusion_start_layer(self) -> int:
        """Index of fusion layer 0 in the released ``fusion_encoder.encoder.layer.N``."""
        return self.fusion_total_layers - self.fusion_layers

    def is_connected(self, j: int) -> bool:
        """Fusion layer ``j`` is a connected (joint self-attention) layer."""
        return j != 0 and j % self.stride == 0

    def bert(self, num_layers: int) -> StructBERTConfig:
        """The post-LN BERT config of a text-side stack of ``num_layers`` layers."""
        return StructBERTConfig(
            vocab_size=self.vocab_size, num_layers=num_layers, num_heads=self.num_heads,
            hidden_size=self.hidden_size, ffn_size=self.ffn_size,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size, layer_norm_epsilon=self.layer_norm_epsilon,
            activation=self.activation, norm_placement="post", dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            initializer_range=self.initializer_range, dtype=self.dtype,
            param_dtype=self.param_dtype, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy)

    @classmethod
    def from_dict(cls, data) -> "MPlugConfig":
        """The config ``dataclasses.asdict`` wrote (``config.json`` of a plug-convert output,
        checkpoint metadata): the nested ``vision`` dict becomes a :class:`CLIPVisionConfig`;
        unknown keys are dropped."""
        data = dict(data)
        vision = data.get("vision")
        if isinstance(vision, dict):
            known = {f.name for f in dataclasses.fields(CLIPVisionConfig)}
            data["vision"] = CLIPVisionConfig(**{k: v for k, v in vision.items() if k in known})
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MPlugConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown mPLUG preset {name!r}; choose one of {list(PRESETS)}")
        return dataclasses.replace(PRESETS[name], preset=name, **overrides)


PRESETS: dict[str, MPlugConfig] = {
    "tiny": MPlugConfig(
        vision=CLIPVisionConfig(image_size=64, patch_size=8, width=64, layers=2, heads=4,
                                mlp_dim=128, projection_dim=32),
        vocab_size=128, hidden_size=64, num_heads=4, ffn_size=128, max_position_embeddings=64,
        text_layers=2, fusion_layers=2, stride=1, decoder_layers=2, fusion_total_layers=2,
        embed_dim=32, dropout_rate=0.0, attention_dropout_rate=0.0),
    # mplug.en.base: ViT-B/16 at 256 px (pre-training resolution), S = 3.
    "base": MPlugConfig(
        vision=CLIPVisionConfig(image_size=256, patch_size=16, width=768, layers=12, heads=12,
                                mlp_dim=3072, projection_dim=512),
        text_layers=6, fusion_layers=6, stride=3, decoder_layers=12),
    # mplug.en.large: ViT-L/14 at 224 px + visn_fc / visn_layer_norm, S = 6.
    "large": MPlugConfig(
        vision=CLIPVisionConfig(image_size=224, patch_size=14, width=1024, layers=24,
                                heads=16, mlp_dim=4096, projection_dim=768),
        text_layers=6, fusion_layers=6, stride=6, decoder_layers=12,
        vision_proj_to_text=True),
}
PRESETS = {k: dataclasses.replace(v, preset=k) for k, v in PRESETS.items()}

# Published parameter counts (MODEL_SPECS.md section 5).
PUBLISHED_PARAMS = {"base": 350e6, "large": 600e6}
