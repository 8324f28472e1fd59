"""``GPT3Config``: hyper-parameters of the Chinese GPT-3 family, with named presets.

The published sizes (ModelScope ``damo/nlp_gpt3_text-generation_*`` cards, see
MODEL_SPECS.md section 4) fix layers / heads / d_model; FFN is 4 x d_model and
head dim d_model / heads (80 for 2.7B, 128 from 13B up). The vocabulary is the
25600-entry jieba-BPE vocabulary of the ModelScope configuration.
"""
from __future__ import annotations

import dataclasses


from plug_jax.families.common import FamilyConfig


@dataclasses.dataclass(frozen=True)
class GPT3Config(FamilyConfig):
    vocab_size: int = 25600
    num_layers: int = 12
    num_heads: int = 12
    hidden_size: int = 768
    ffn_size: int | None = None  # default 4 * hidden_size
    head_dim: int | None = None  # default hidden_size // num_heads
    num_kv_heads: int | None = None  # default num_heads (multi-head attention)
    max_position_embeddings: int = 2048
    # ModelScope's GPT3Config default; converters take the value of the source model.
    layer_norm_epsilon: float = 1e-12
    # 'gelu' = exact erf GELU (Megatron / ModelScope); 'gelu_tanh' = GPT-2's gelu_new.
    activation: str = "gelu"
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype (bfloat16 on GPU/TPU)
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    preset: str = "custom"

    def __post_init__(self):
        if self.hidden_size % self.num_heads and self.head_dim is None:
            raise ValueError(
                f"GPT3Config: hidden_size {self.hidden_size} is not divisible by num_heads "
                f"{self.num_heads}; set head_dim explicitly")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"GPT3Config: num_heads {self.num_heads} is not a multiple of "
                             f"num_kv_heads {self.kv_heads}")
        self.check_basics("GPT3Config")
        # Mixture of experts (ModelScope GPT-MoE layout): MoeFields, docs/moe.md.
        self.check_moe("GPT3Config", num_layers=self.num_layers)

    # Derived sizes.
    @property
    def mlp_dim(self) -> int:
        return self.ffn_size or 4 * self.hidden_size

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers // self.moe_every_n if self.num_experts else 0

    @property
    def kv_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPT3Config":
        if name not in PRESETS:
            raise ValueError(f"unknown GPT-3 preset {name!r}; choose one of {list(PRESETS)}")
        return dataclasses.replace(PRESETS[name], preset=name, **overrides)


def _published(layers: int, heads: int, d_model: int) -> GPT3Config:
    return GPT3Config(num_layers=layers, num_heads=heads, hidden_size=d_model,
                      ffn_size=4 * d_model)


def _gpt_moe(dense: GPT3Config, experts: int) -> GPT3Config:
    """ModelScope GPT-MoE (MODEL_SPECS.md section 3): the dense size with a top-1 MoE FFN in
    every second layer, capacity factor 1.0 in training and evaluation, min capacity 1."""
    return dataclasses.replace(dense, num_experts=experts, moe_every_n=2, moe_top_k=1,
                               moe_train_capacity_factor=1.0, moe_eval_capacity_factor=1.0,
                               moe_min_capacity=1)


# Published layer / head / width table (ModelScope Chinese GPT-3 model cards).
PRESETS: dict[str, GPT3Config] = {
    "tiny": GPT3Config(vocab_size=1024, num_layers=2, num_heads=4, hidden_size=64,
                       ffn_size=256, max_position_embeddings=256, dropout_rate=0.0,
                       attention_dropout_rate=0.0),
    "base": _published(12, 12, 768),
    "large": _published(24, 16, 1024),
    "1.3B": _published(24, 32, 2048),
    "2.7B": _published(32, 32, 2560),
    "13B": _published(40, 40, 5120),
    "30B": _published(48, 56, 7168),
    "175B": _published(96, 96, 12288),
    # ModelScope GPT-MoE checkpoints PAI/nlp_gpt3_text-generation_{0.35B_MoE-64,1.3B_MoE-32}:
    # the name gives the dense (active) size; the expert count multiplies the MoE FFNs.
    "0.35B-MoE-64": _gpt_moe(_published(24, 16, 1024), 64),
    "1.3B-MoE-32": _gpt_moe(_published(24, 32, 2048), 32),
    # Tiny MoE for tests and Shop World runs: 4 experts in layer 2 of 2.
    "tiny-moe": GPT3Config(vocab_size=1024, num_layers=2, num_heads=4, hidden_size=64,
                           ffn_size=256, max_position_embeddings=256, dropout_rate=0.0,
                           attention_dropout_rate=0.0, num_experts=4, moe_every_n=2,
                           moe_top_k=1, moe_train_capacity_factor=1.25,
                           moe_eval_capacity_factor=2.0, moe_min_capacity=4),
}
PRESETS = {k: dataclasses.replace(v, preset=k) for k, v in PRESETS.items()}
