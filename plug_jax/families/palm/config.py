"""``PalmConfig``: PALM / PALM 2.0 = a BERT-shaped encoder + a PreSumm-style Transformer decoder
with an optional pointer-generator (copy) head.

Sources (MODEL_SPECS.md section 1 "PALM"; code read through the search tools):

* AliceMind ``PALM/README.md`` [V-card]: ``palm.en.base`` = 12-layer encoder + 12-layer
  decoder, 257M parameters; ``palm.en.large`` = 24-layer encoder + 6-layer decoder, 483M.
* AliceMind ``PALM/train.py`` argument defaults and ``PALM/finetune_cnndm_task_roberta.sh``
  [V-code]: encoder ``roberta`` (RoBERTa-base: vocab 50265, 514 learned positions with
  padding offset 2, 1 token type, LayerNorm epsilon 1e-5), ``dec_layers 12``,
  ``dec_hidden_size 768``, ``dec_heads 8``, ``dec_ff_size 2048``, ``dec_dropout 0.2``,
  ``max_pos 512``, ``p_gen`` False by default (the fine-tuning script does not switch it on).
* ModelScope ``modelscope/models/nlp/palm_v2/configuration.py`` (PALM 2.0) [V-code]:
  ``dec_layers 12``, ``dec_hidden_size 768``, ``dec_heads 8``, ``dec_ff_size 3072``,
  ``dec_dropout 0.2``, ``label_smoothing 0.1``, beam ``alpha 0.95``, ``beam_size 5``; the
  encoder is ``bert`` / ``zh_bert`` / ``roberta``. The released PALM 2.0 ``config.json``
  files were not seen [NF], so the ``*-zh`` presets below are inferred [I].
* Decoder layer (``PALM/models/decoder.py``, ModelScope ``palm_v2/text_generation.py``)
  [V-code]: pre-LN (``layer_norm_1`` -> self-attention -> +res; ``layer_norm_2`` -> context
  attention -> +res; ``feed_forward`` = LN -> w_1 -> GELU (tanh form, ``gelu_new``) -> w_2
  -> +res), a final LayerNorm, epsilon 1e-6; decoder tokens are embedded with the decoder's
  own table (a copy of the encoder word embeddings at initialisation), scaled by
  ``sqrt(hidden)``, plus sinusoidal positions; the output layer is tied to that table and
  has a bias.

Presets and certainty:

* ``base`` (``palm.en.base``): every size [V-code]; 257.8M computed vs 257M published.
* ``large`` (``palm.en.large``): 24 x 1024 encoder (RoBERTa-large shape) and 6 decoder layers
  [V-card]; the decoder width must equal the encoder's (the context attention projects the
  encoder states with ``d_model x d_model`` maps) [V-code]; decoder FFN 2048 is inferred from
  the published 483M (2048 gives 482.4M) [I]; decoder heads 8 are the ``train.py`` default
  [I].
* ``base-zh`` / ``large-zh`` (PALM 2.0 Chinese, ModelScope ``damo/nlp_palm2.0_*``):
  BERT-Chinese encoder (21128 vocab, 512 positions, 2 token types, epsilon 1e-12) with the
  ModelScope decoder defaults (12 layers, 8 heads, FFN 3072) [I].
* ``tiny``: test size.

``copy`` switches the pointer-generator head on (see ``network.py``); the released
``palm.en.base`` checkpoint has no copy head, so conversion initialises the copy gate fresh.
"""
from __future__ import annotations

import dataclasses

from plug_jax.families.common import FamilyConfig
from plug_jax.families.plug.config import PlugConfig
from plug_jax.families.structbert.config import NORM_PLACEMENTS, StructBERTConfig
from plug_jax.layers.mlp import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class PalmConfig(FamilyConfig):
    # ---- encoder (BERT / RoBERTa shape; StructBERT's BertEncoder)
    vocab_size: int = 50265
    num_encoder_layers: int = 12
    num_heads: int = 12  # encoder heads
    hidden_size: int = 768  # encoder and decoder width (they must agree)
    ffn_size: int | None = None  # encoder FFN; default 4 * hidden_size
    max_position_embeddings: int = 514
    # Added to the encoder positions: 2 for RoBERTa (padding_idx + 1), 0 for BERT.
    position_offset: int = 2
    type_vocab_size: int = 1
    layer_norm_epsilon: float = 1e-5  # encoder (RoBERTa 1e-5, BERT 1e-12)
    activation: str = "gelu"  # encoder FFN (exact GELU)
    norm_placement: str = "post"  # encoder: BERT / StructBERT post-LN
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    use_pooler: bool = True  # BertModel's pooler (in the released checkpoints)
    # ---- decoder (PreSumm Transformer decoder, pre-LN)
    num_decoder_layers: int = 12
    num_decoder_heads: int = 8
    decoder_ffn_size: int = 2048
    decoder_layer_norm_epsilon: float = 1e-6
    decoder_activation: str = "gelu_tanh"  # ``gelu_new`` in the released code
    decoder_dropout_rate: float = 0.2
    # True: the decoder embeds with the encoder's word table (fewer parameters). False
    # (released): a separate decoder table, which is also the tied output projection.
    share_embeddings: bool = False
    # ---- output head
    copy: bool = True  # pointer-generator (copy) head
    # The copy gate also sees the decoder input embedding (See et al. 2017). The released
    # CopyGenerator uses [context; state] only; conversion zero-fills the extra rows.
    copy_gate_uses_input: bool = True
    # The released CopyGenerator passes the scattered copy weights through a second softmax
    # over the vocabulary before mixing; True reproduces it (what a converted AliceMind
    # ``-p_gen`` checkpoint was trained with). False: the published pointer-generator.
    copy_softmax: bool = False
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    preset: str = "custom"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"PalmConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.hidden_size % self.num_decoder_heads:
            raise ValueError(f"PalmConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_decoder_heads {self.num_decoder_heads}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"PalmConfig: unknown norm_placement {self.norm_placement!r}; "
                             f"choose 'post' (BERT/StructBERT) or 'pre'")
        if self.num_decoder_layers < 1 or self.num_encoder_layers < 1:
            raise ValueError("PalmConfig: num_encoder_layers and num_decoder_layers must be >= 1")
        if self.position_offset < 0:
            raise ValueError(f"PalmConfig: position_offset must be >= 0, got "
                             f"{self.position_offset}")
        if self.num_experts:
            raise ValueError("PalmConfig: PALM has no mixture-of-experts variant; set "
                             "num_experts=0")
        if self.copy_softmax and not self.copy:
            raise ValueError("PalmConfig: copy_softmax=True needs copy=True (it changes the copy "
                             "head)")
        self.check_basics("PalmConfig")
        if self.decoder_activation not in ACTIVATIONS:
            raise ValueError(f"PalmConfig: unknown decoder_activation {self.decoder_activation!r}; "
                             f"choose one of {sorted(ACTIVATIONS)}")

    @property
    def mlp_dim(self) -> int:
        return self.ffn_size or 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def decoder_head_dim(self) -> int:
        return self.hidden_size // self.num_decoder_heads

    @property
    def encoder_config(self) -> StructBERTConfig:
        """The encoder as a StructBERT config (``BertEncoder``)."""
        return StructBERTConfig(
            vocab_size=self.vocab_size, num_layers=self.num_encoder_layers,
            num_heads=self.num_heads, hidden_size=self.hidden_size, ffn_size=self.mlp_dim,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size, layer_norm_epsilon=self.layer_norm_epsilon,
            activation=self.activation, norm_placement=self.norm_placement,
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
            initializer_range=self.initializer_range, dtype=self.dtype,
            param_dtype=self.param_dtype, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, preset=f"palm-{self.preset}-encoder")

    @property
    def decoder_config(self) -> PlugConfig:
        """The decoder as a PLUG config, for ``PlugDecoderLayer`` (pre-LN blocks)."""
        return PlugConfig(
            vocab_size=self.vocab_size, num_encoder_layers=self.num_encoder_layers,
            num_decoder_layers=self.num_decoder_layers, num_heads=self.num_decoder_heads,
            hidden_size=self.hidden_size, ffn_size=self.decoder_ffn_size,
            max_position_embeddings=self.max_position_embeddings,
            layer_norm_epsilon=self.decoder_layer_norm_epsilon,
            activation=self.decoder_activation, norm_placement="pre",
            dropout_rate=self.decoder_dropout_rate,
            attention_dropout_rate=self.decoder_dropout_rate,
            initializer_range=self.initializer_range, dtype=self.dtype,
            param_dtype=self.param_dtype, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, preset=f"palm-{self.preset}-decoder")

    @property
    def copy_gate_inputs(self) -> int:
        """Width of the copy gate's input: [context; state] (+ input embedding)."""
        return (3 if self.copy_gate_uses_input else 2) * self.hidden_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PalmConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown PALM preset {name!r}; choose one of {list(PRESETS)}")
        return dataclasses.replace(PRESETS[name], preset=name, **overrides)


_ROBERTA = dict(vocab_size=50265, max_position_embeddings=514, position_offset=2,
                type_vocab_size=1, layer_norm_epsilon=1e-5)
_BERT_ZH = dict(vocab_size=21128, max_position_embeddings=512, position_offset=0,
                type_vocab_size=2, layer_norm_epsilon=1e-12)

PRESETS: dict[str, PalmConfig] = {
    # palm.en.base [V-code]: RoBERTa-base encoder + 12 x (768, 8 heads, FFN 2048) decoder.
    "base": PalmConfig(**_ROBERTA, num_encoder_layers=12, num_heads=12, hidden_size=768,
                       ffn_size=3072, num_decoder_layers=12, num_decoder_heads=8,
                       decoder_ffn_size=2048),
    # palm.en.large: 24 x 1024 encoder + 6 decoder layers [V-card]; FFN 2048 from the
    # published count, 8 heads from the train.py default [I].
    "large": PalmConfig(**_ROBERTA, num_encoder_layers=24, num_heads=16, hidden_size=1024,
                        ffn_size=4096, num_decoder_layers=6, num_decoder_heads=8,
                        decoder_ffn_size=2048),
    # PALM 2.0 Chinese (ModelScope palm_v2 decoder defaults, BERT-Chinese encoder) [I].
    "base-zh": PalmConfig(**_BERT_ZH, num_encoder_layers=12, num_heads=12, hidden_size=768,
                          ffn_size=3072, num_decoder_layers=12, num_decoder_heads=8,
                          decoder_ffn_size=3072),
    "large-zh": PalmConfig(**_BERT_ZH, num_encoder_layers=24, num_heads=16, hidden_size=1024,
                           ffn_size=4096, num_decoder_layers=12, num_decoder_heads=8,
                           decoder_ffn_size=3072),
    # Tests and Shop World (the zh Shop World vocabulary padded to 1152).
    "tiny": PalmConfig(vocab_size=1152, num_encoder_layers=2, num_heads=4, hidden_size=64,
                       ffn_size=256, max_position_embeddings=128, position_offset=0,
                       type_vocab_size=2, layer_norm_epsilon=1e-12, num_decoder_layers=2,
                       num_decoder_heads=4, decoder_ffn_size=256, dropout_rate=0.0,
                       attention_dropout_rate=0.0, decoder_dropout_rate=0.0),
}
PRESETS = {k: dataclasses.replace(v, preset=k) for k, v in PRESETS.items()}

# AliceMind PALM/README.md [V-card].
PUBLISHED_PARAMS = {"base": 257e6, "large": 483e6}
