"""``M6Config``: the M6 unified multimodal transformer, with named presets.

No M6 code or size table is public (MODEL_SPECS.md section 6: the paper gives only the totals,
10B dense and 100B MoE), so the shapes here are defined from those totals; the reasoning is in
``plug_jax/families/m6/README.md`` ("Presets"). Every preset shape is tagged [assumption]
there. The vocabulary is the 21,128-entry Chinese BERT WordPiece vocabulary (also an
assumption; a Shop World run binds its own).

The network (``network.py``) is one pre-LN transformer over ``[image patches ; source text ;
target text]`` with the prefix-LM mask: the image and the source attend to each other both
ways, the target left to right. The image stem is a linear patch embedding (``patch_size``)
with learned positions; ``image_size`` fixes the number of patches.
"""
from __future__ import annotations

import dataclasses

from plug_jax.families.common import FamilyConfig


@dataclasses.dataclass(frozen=True)
class M6Config(FamilyConfig):
    vocab_size: int = 21128
    num_layers: int = 24
    num_heads: int = 16
    hidden_size: int = 1024
    ffn_size: int | None = None  # default 4 * hidden_size
    head_dim: int | None = None  # default hidden_size // num_heads
    max_text_positions: int = 512  # source and target each count from 0
    target_grid: int = 0  # > 0: the targets are a g x g grid of image codes in raster order;
    #                       each also gets a learned row and column embedding (text-to-image)
    image_size: int = 256
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu"
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    preset: str = "custom"

    def __post_init__(self):
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"M6Config: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}; set head_dim explicitly")
        if self.image_size % self.patch_size:
            raise ValueError(f"M6Config: image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}; fix: choose a patch size that "
                             f"divides the image size")
        if self.target_grid < 0 or self.target_grid ** 2 > self.max_text_positions:
            raise ValueError(f"M6Config: target_grid {self.target_grid} needs "
                             f"{self.target_grid ** 2} target positions, more than "
                             f"max_text_positions {self.max_text_positions}; fix: raise "
                             f"max_text_positions or set target_grid to the code grid's side")
        self.check_basics("M6Config")
        self.check_moe("M6Config", num_layers=self.num_layers)

    @property
    def mlp_dim(self) -> int:
        return self.ffn_size or 4 * self.hidden_size

    @property
    def kv_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers // self.moe_every_n if self.num_experts else 0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "M6Config":
        if name not in PRESETS:
            raise ValueError(f"unknown M6 preset {name!r}; choose one of {list(PRESETS)}")
        return dataclasses.replace(PRESETS[name], preset=name, **overrides)


def _m6t(dense: M6Config, experts: int, groups: int, every: int = 2,
         expert_ffn: int | None = None) -> M6Config:
    """M6-T: the FFN of every ``every``-th layer is a mixture of ``experts`` experts split into
    ``groups`` prototypes, each routing its tokens top-1 ("k top-1", MODEL_SPECS.md section 6);
    capacity factor 1.25 in training, 2.0 in evaluation (gin values: ``moe_*``)."""
    return dataclasses.replace(dense, num_experts=experts, moe_every_n=every, moe_top_k=groups,
                               moe_router="prototype", moe_train_capacity_factor=1.25,
                               moe_eval_capacity_factor=2.0, moe_min_capacity=4,
                               moe_ffn_size=expert_ffn)


_BASE = M6Config(num_layers=24, num_heads=16, hidden_size=1024)
PRESETS: dict[str, M6Config] = {
    "tiny": M6Config(vocab_size=1024, num_layers=2, num_heads=4, hidden_size=64, ffn_size=256,
                     max_text_positions=128, image_size=64, patch_size=8, dropout_rate=0.0,
                     attention_dropout_rate=0.0),
    "tiny-moe": _m6t(M6Config(vocab_size=1024, num_layers=2, num_heads=4, hidden_size=64,
                              ffn_size=256, max_text_positions=128, image_size=64,
                              patch_size=8, dropout_rate=0.0, attention_dropout_rate=0.0),
                     experts=4, groups=2),
    # M6-base: BERT-large's shape (the size the M6 paper's smallest model is reported at).
    "base": _BASE,
    # M6-10B, dense: 50 layers of width 4096 (32 heads of 128, FFN 4 x 4096).
    "10B": M6Config(num_layers=50, num_heads=32, hidden_size=4096),
    # M6-100B: base's trunk with 1024 experts (4 prototypes of 256) in every second of its 24
    # layers; each expert an FFN of width 3968, the width that brings the total to 100B with a
    # power-of-two expert count (which an expert-parallel mesh axis divides).
    "100B": _m6t(_BASE, experts=1024, groups=4, expert_ffn=3968),
    # M6-T past a trillion parameters (the paper's run on 480 V100-32GB; its shape is [NF]):
    # the 10B trunk with 320 experts (4 prototypes of 80) in every second of its 50 layers.
    "1T": _m6t(M6Config(num_layers=50, num_heads=32, hidden_size=4096), experts=320,
               groups=4),
}
PRESETS = {k: dataclasses.replace(v, preset=k) for k, v in PRESETS.items()}
