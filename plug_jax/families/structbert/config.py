"""``StructBERTConfig``: hyper-parameters of the StructBERT / PLUG-encoder family, with presets.

The published sizes (MODEL_SPECS.md section 2, from ``StructBERT/config/large_bert_config.json``
and ``ch_large_bert_config.json``) are BERT-large shapes: 24 layers, d_model 1024, 16 heads,
FFN 4096, 512 learned positions, 2 token types; the English model uses the 30522-entry BERT
uncased WordPiece vocabulary, the Chinese one the 21128-entry BERT-Chinese vocabulary.

``norm_placement`` selects the block layout:

* ``'post'`` (BERT / StructBERT): LayerNorm on the embeddings; each block is
  attn -> +res -> LN; FFN -> +res -> LN.
* ``'pre'`` (Megatron-BERT / PLUG's encoder): no LayerNorm on the embeddings; each block is
  LN -> attn -> +res; LN -> FFN -> +res; one final LayerNorm after the last block.
"""
from __future__ import annotations

import dataclasses


from plug_jax.families.common import FamilyConfig

NORM_PLACEMENTS = ("post", "pre")


@dataclasses.dataclass(frozen=True)
class StructBERTConfig(FamilyConfig):
    vocab_size: int = 30522
    num_layers: int = 12
    num_heads: int = 12
    hidden_size: int = 768
    ffn_size: int | None = None  # default 4 * hidden_size
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    # BERT / StructBERT use 1e-12; PLUG's pre-LN encoder 1e-5 (MODEL_SPECS.md section 3).
    layer_norm_epsilon: float = 1e-12
    activation: str = "gelu"  # exact (erf) GELU, as BERT's hidden_act 'gelu'
    norm_placement: str = "post"
    # LayerNorm on the summed embeddings. None: with post-LN (BERT) yes, with pre-LN
    # (Megatron-BERT, transformers' MegatronBertModel) no. PLUG's pre-LN encoder keeps
    # BERT's embedding LayerNorm (its BertEmbeddings always applies it): True.
    embedding_norm: bool | None = None
    # 3 = StructBERT's next / previous / random sentence task; 2 = BERT NSP.
    num_sentence_classes: int = 3
    dropout_rate: float = 0.1  # BERT hidden_dropout_prob
    attention_dropout_rate: float = 0.1  # BERT attention_probs_dropout_prob
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype (bfloat16 on GPU/TPU)
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    preset: str = "custom"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"StructBERTConfig: hidden_size {self.hidden_size} is not divisible "
                             f"by num_heads {self.num_heads}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"StructBERTConfig: unknown norm_placement {self.norm_placement!r}; "
                             f"choose 'post' (BERT/StructBERT) or 'pre' (Megatron/PLUG)")
        if self.num_sentence_classes < 1:
            raise ValueError(f"StructBERTConfig: num_sentence_classes must be >= 1, got "
                             f"{self.num_sentence_classes}")
        if self.type_vocab_size < 1:
            raise ValueError(f"StructBERTConfig: type_vocab_size must be >= 1, got "
                             f"{self.type_vocab_size}")
        self.check_basics("StructBERTConfig")
        self.check_moe("StructBERTConfig", num_layers=self.num_layers)  # MoE FFNs: PLUG-MoE

    # Derived sizes.
    @property
    def mlp_dim(self) -> int:
        return self.ffn_size or 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def pre_norm(self) -> bool:
        return self.norm_placement == "pre"

    @property
    def use_embedding_norm(self) -> bool:
        return not self.pre_norm if self.embedding_norm is None else bool(self.embedding_norm)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "StructBERTConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown StructBERT preset {name!r}; choose one of {list(PRESETS)}")
        return dataclasses.replace(PRESETS[name], preset=name, **overrides)


def _large(vocab: int) -> StructBERTConfig:
    return StructBERTConfig(vocab_size=vocab, num_layers=24, num_heads=16, hidden_size=1024,
                            ffn_size=4096, max_position_embeddings=512, type_vocab_size=2,
                            layer_norm_epsilon=1e-12, norm_placement="post",
                            num_sentence_classes=3)


# Published sizes (MODEL_SPECS.md section 2; [V-code] StructBERT/config/*.json).
PRESETS: dict[str, StructBERTConfig] = {
    "tiny": StructBERTConfig(vocab_size=1024, num_layers=2, num_heads=4, hidden_size=64,
                             ffn_size=256, max_position_embeddings=128, type_vocab_size=2,
                             dropout_rate=0.0, attention_dropout_rate=0.0),
    # Shop World experiments: enough capacity to check product consistency across sentences.
    "small": StructBERTConfig(vocab_size=1024, num_layers=4, num_heads=4, hidden_size=128,
                              ffn_size=512, max_position_embeddings=128, type_vocab_size=2,
                              dropout_rate=0.0, attention_dropout_rate=0.0),
    "large-en": _large(30522),  # structbert.en.large, 340M
    "large-zh": _large(21128),  # structbert.ch.large, 330M
}
PRESETS = {k: dataclasses.replace(v, preset=k) for k, v in PRESETS.items()}

# Published parameter counts of the presets (MODEL_SPECS.md section 2).
PUBLISHED_PARAMS = {"large-en": 340e6, "large-zh": 330e6}
