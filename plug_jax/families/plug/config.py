"""``PlugConfig``: PLUG (27B) = a pre-LN StructBERT encoder + a plugged PALM decoder.

Published shape (MODEL_SPECS.md section 3, [V-code] ``PLUG/generate_plug.py`` and ModelScope
``nlp/plug/configuration.py``): 24 encoder layers and 6 decoder layers, hidden 8192, 128
heads (head dim 64), FFN 32768, the 21128-entry BERT-Chinese WordPiece vocabulary padded to
21504 (a multiple of 128 x 8 model-parallel ranks), 2048 positions, 3 token types, pre-LN
with LayerNorm epsilon 1e-5, initializer range 0.00707. The decoder shares the encoder's
embeddings and its output logits are the decoder states times the word-embedding matrix.
"""
from __future__ import annotations

import dataclasses


from plug_jax.families.structbert.config import StructBERTConfig
from plug_jax.families.common import FamilyConfig
from plug_jax.layers.moe.config import MoeFields


@dataclasses.dataclass(frozen=True)
class PlugConfig(FamilyConfig):
    vocab_size: int = 21504
    # Ids >= this are padding rows of the embedding (None: no padding rows).
    original_vocab_size: int | None = None
    num_encoder_layers: int = 24
    num_decoder_layers: int = 6
    num_heads: int = 128
    hidden_size: int = 8192
    ffn_size: int | None = None  # default 4 * hidden_size
    max_position_embeddings: int = 2048
    type_vocab_size: int = 3
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu"
    norm_placement: str = "pre"  # the released PLUG; 'post' gives a BERT-style encoder
    # PLUG's BertEmbeddings LayerNorm on word + position + token type, kept in its pre-LN
    # model (AliceMind PLUG/model/modeling.py) for the encoder and the decoder inputs.
    embedding_norm: bool = True
    num_sentence_classes: int = 3
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.00707
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    preset: str = "custom"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"PlugConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.original_vocab_size is not None and \
                not 0 < self.original_vocab_size <= self.vocab_size:
            raise ValueError(f"PlugConfig: original_vocab_size {self.original_vocab_size} must "
                             f"be in (0, vocab_size={self.vocab_size}]")
        if self.num_decoder_layers < 1:
            raise ValueError("PlugConfig: num_decoder_layers must be >= 1")
        self.check_basics("PlugConfig")
        self.check_moe("PlugConfig", num_encoder_layers=self.num_encoder_layers,
                       num_decoder_layers=self.num_decoder_layers)

    @property
    def mlp_dim(self) -> int:
        return self.ffn_size or 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def encoder_config(self) -> StructBERTConfig:
        """The encoder as a StructBERT config (stage 1 of PLUG trains exactly this)."""
        return StructBERTConfig(
            vocab_size=self.vocab_size, num_layers=self.num_encoder_layers,
            num_heads=self.num_heads, hidden_size=self.hidden_size, ffn_size=self.mlp_dim,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size, layer_norm_epsilon=self.layer_norm_epsilon,
            activation=self.activation, norm_placement=self.norm_placement,
            embedding_norm=self.embedding_norm,
            num_sentence_classes=self.num_sentence_classes, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            initializer_range=self.initializer_range, dtype=self.dtype,
            param_dtype=self.param_dtype, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, preset=f"plug-{self.preset}-encoder",
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(MoeFields)})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PlugConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown PLUG preset {name!r}; choose one of {list(PRESETS)}")
        return dataclasses.replace(PRESETS[name], preset=name, **overrides)


# PLUG-MoE "20B": no public specification exists (MODEL_SPECS.md section 3, [NF]); this one is
# defined here, reasoning in README.md: the PLUG layout at hidden 4096 (64 heads of 64,
# FFN 16384) with the FFN of every second encoder and decoder layer replaced by 8 experts,
# routed with M6-T expert prototyping (2 groups of 4, top-1 in each: 2 experts per token).
_MOE_20B = dict(original_vocab_size=21128, num_heads=64, hidden_size=4096, ffn_size=16384,
                num_experts=8, moe_every_n=2, moe_top_k=2, moe_router="prototype",
                moe_train_capacity_factor=1.25, moe_eval_capacity_factor=2.0,
                moe_min_capacity=4)

PRESETS: dict[str, PlugConfig] = {
    "27B": PlugConfig(original_vocab_size=21128),
    "20B-MoE": PlugConfig(**_MOE_20B),
    "tiny": PlugConfig(vocab_size=1024, num_encoder_layers=2,
                       num_decoder_layers=1, num_heads=4, hidden_size=64, ffn_size=256,
                       max_position_embeddings=128, dropout_rate=0.0,
                       attention_dropout_rate=0.0, initializer_range=0.02),
    # tiny with 4 experts (2 prototype groups) in the second encoder and decoder layers.
    "tiny-moe": PlugConfig(vocab_size=1024, num_encoder_layers=2, num_decoder_layers=2,
                           num_heads=4, hidden_size=64, ffn_size=256,
                           max_position_embeddings=128, dropout_rate=0.0,
                           attention_dropout_rate=0.0, initializer_range=0.02, num_experts=4,
                           moe_every_n=2, moe_top_k=2, moe_router="prototype",
                           moe_train_capacity_factor=1.25, moe_eval_capacity_factor=2.0,
                           moe_min_capacity=4),
}
PRESETS = {k: dataclasses.replace(v, preset=k) for k, v in PRESETS.items()}

# The README's "27B" ([V-card]); MODEL_SPECS' rough count is ~26B.
PUBLISHED_PARAMS = {"27B": 27e9, "20B-MoE": 20e9}
