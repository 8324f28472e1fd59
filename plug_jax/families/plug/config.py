"""``PlugConfig``: PLUG (27B) = a pre-LN StructBERT encoder + a plugged PALM decoder.

Published shape (MODEL_SPECS.md section 3, [V-code] ``PLUG/generate_plug.py`` and ModelScope
``nlp/plug/configuration.py``): 24 encoder layers and 6 decoder layers, hidden 8192, 128
heads (head dim 64), FFN 32768, the 21128-entry BERT-Chinese WordPiece vocabulary padded to
21504 (a multiple of 128 x 8 model-parallel ranks), 2048 positions, 3 token types, pre-LN
with LayerNorm epsilon 1e-5, initializer range 0.00707. The decoder shares the encoder's
embeddings and its output logits are the decoder states times the word-embedding matrix.

Layout (a composite config, ``plug_jax/families/composite.py``): ``PlugConfig`` holds its parts,

* ``encoder``: the :class:`StructBERTConfig` of PLUG's encoder (stage 1 trains exactly this
  config; ``FamilySpec.encoder_config`` returns it);
* ``decoder``: a :class:`TransformerDecoderConfig` (``plug_jax/layers/transformer_decoder.py``,
  the decoder layer PLUG shares with PALM);

and its own fields (``original_vocab_size``, ``preset``). The flat names PLUG has always had
(``hidden_size``, ``num_decoder_layers``, the MoE fields...) are still keywords of the
constructor, ``from_preset``, ``replace`` and gin, routed into the parts by ``ROUTES`` below
(the sizes PLUG's encoder and decoder share go to both), and read as properties.
``dataclasses.asdict`` (what checkpoints record) is nested; :meth:`PlugConfig.from_dict` also
reads the flat form of checkpoints written before the nesting.
"""
from __future__ import annotations

import dataclasses

from plug_jax.families.composite import CompositeConfig
from plug_jax.families.structbert.config import StructBERTConfig
from plug_jax.layers.moe.config import MoeFields
from plug_jax.layers.transformer_decoder import TransformerDecoderConfig

_MOE = tuple(f.name for f in dataclasses.fields(MoeFields))
# PLUG's decoder has the encoder's width, heads, FFN, norms, dropout and experts: a flat
# keyword sets both parts. norm_placement: 'pre' (the released PLUG); 'post' gives a
# BERT-style encoder and decoder.
_SHARED = ("num_heads", "hidden_size", "ffn_size", "layer_norm_epsilon", "activation",
           "norm_placement", "dropout_rate", "attention_dropout_rate", "initializer_range",
           "dtype", "param_dtype", "scan_layers", "remat_policy") + _MOE


@dataclasses.dataclass(frozen=True, init=False)
class PlugConfig(CompositeConfig):
    # ---- the parts (defaults: the released 27B)
    # Pre-LN StructBERT encoder. PLUG's BertEmbeddings LayerNorm on word + position + token
    # type is kept in its pre-LN model (AliceMind PLUG/model/modeling.py) for the encoder and
    # the decoder inputs: embedding_norm=True.
    encoder: StructBERTConfig = StructBERTConfig(
        vocab_size=21504, num_layers=24, num_heads=128, hidden_size=8192,
        max_position_embeddings=2048, type_vocab_size=3, layer_norm_epsilon=1e-5,
        norm_placement="pre", embedding_norm=True, num_sentence_classes=3,
        initializer_range=0.00707)
    decoder: TransformerDecoderConfig = TransformerDecoderConfig(
        num_layers=6, num_heads=128, hidden_size=8192, layer_norm_epsilon=1e-5,
        activation="gelu", norm_placement="pre", dropout_rate=0.1, attention_dropout_rate=0.1,
        initializer_range=0.00707)
    # Ids >= this are padding rows of the embedding (None: no padding rows).
    original_vocab_size: int | None = None
    preset: str = "custom"

    PARTS = {"encoder": StructBERTConfig, "decoder": TransformerDecoderConfig}
    # Flat name -> the part fields it sets (read from the first).
    ROUTES = {
        "vocab_size": (("encoder", "vocab_size"),),
        "num_encoder_layers": (("encoder", "num_layers"),),
        "num_decoder_layers": (("decoder", "num_layers"),),
        "max_position_embeddings": (("encoder", "max_position_embeddings"),),
        "type_vocab_size": (("encoder", "type_vocab_size"),),
        "embedding_norm": (("encoder", "embedding_norm"),),
        "num_sentence_classes": (("encoder", "num_sentence_classes"),),
        **{k: (("encoder", k), ("decoder", k)) for k in _SHARED},
    }

    def __post_init__(self):
        if self.original_vocab_size is not None and \
                not 0 < self.original_vocab_size <= self.vocab_size:
            raise ValueError(f"PlugConfig: original_vocab_size {self.original_vocab_size} must "
                             f"be in (0, vocab_size={self.vocab_size}]")
        # The decoder reads the encoder's embedding tables (so its width), and the checkpoint
        # records one dtype / layout.
        self.check_shared("hidden_size", "dtype", "param_dtype", "scan_layers")

    @property
    def mlp_dim(self) -> int:
        return self.encoder.mlp_dim

    @property
    def head_dim(self) -> int:
        return self.encoder.head_dim

    @property
    def moe_mlp_dim(self) -> int:
        return self.encoder.moe_mlp_dim

    @property
    def encoder_config(self) -> StructBERTConfig:
        """The encoder as a StructBERT config (stage 1 of PLUG trains exactly this): the
        ``encoder`` part."""
        return self.encoder

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PlugConfig":
        """Preset ``name``; ``overrides``: flat names, fields or whole parts."""
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
