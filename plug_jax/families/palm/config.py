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

Layout (a composite config, ``plug_jax/families/composite.py``): ``PalmConfig`` holds its parts,

* ``encoder``: a :class:`StructBERTConfig` (StructBERT's ``BertEncoder``);
* ``decoder``: a :class:`TransformerDecoderConfig` (``plug_jax/layers/transformer_decoder.py``,
  the decoder layer PALM shares with PLUG);

and its own fields (``position_offset``, ``use_pooler``, ``share_embeddings``, the copy head,
``preset``). The flat names PALM has always had (``hidden_size``, ``num_decoder_layers``,
``decoder_dropout_rate``...) are still keywords of the constructor, ``from_preset``,
``replace`` and gin, routed into the parts by ``ROUTES`` below, and read as properties.
``dataclasses.asdict`` (what checkpoints record) is nested; :meth:`PalmConfig.from_dict` also
reads the flat form of checkpoints written before the nesting.
"""
from __future__ import annotations

import dataclasses

from plug_jax.families.composite import CompositeConfig
from plug_jax.families.structbert.config import StructBERTConfig
from plug_jax.layers.moe.config import MoeFields
from plug_jax.layers.transformer_decoder import TransformerDecoderConfig

_MOE = tuple(f.name for f in dataclasses.fields(MoeFields))
# Set in both parts by a flat keyword.
_SHARED = ("hidden_size", "initializer_range", "dtype", "param_dtype", "scan_layers",
           "remat_policy") + _MOE


def _enc(field: str) -> tuple[tuple[str, str], ...]:
    return (("encoder", field),)


def _dec(field: str) -> tuple[tuple[str, str], ...]:
    return (("decoder", field),)


@dataclasses.dataclass(frozen=True, init=False)
class PalmConfig(CompositeConfig):
    # ---- the parts
    # Encoder (BERT / RoBERTa shape; StructBERT's BertEncoder). Default: RoBERTa-base.
    encoder: StructBERTConfig = StructBERTConfig(
        vocab_size=50265, num_layers=12, num_heads=12, hidden_size=768,
        max_position_embeddings=514, type_vocab_size=1, layer_norm_epsilon=1e-5,
        activation="gelu", norm_placement="post")
    # Decoder (PreSumm Transformer decoder, pre-LN; ``gelu_new`` in the released code).
    decoder: TransformerDecoderConfig = TransformerDecoderConfig(
        num_layers=12, num_heads=8, hidden_size=768, ffn_size=2048, layer_norm_epsilon=1e-6,
        activation="gelu_tanh", norm_placement="pre", dropout_rate=0.2,
        attention_dropout_rate=0.2)
    # ---- encoder side
    # Added to the encoder positions: 2 for RoBERTa (padding_idx + 1), 0 for BERT.
    position_offset: int = 2
    use_pooler: bool = True  # BertModel's pooler (in the released checkpoints)
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
    preset: str = "custom"

    PARTS = {"encoder": StructBERTConfig, "decoder": TransformerDecoderConfig}
    # Flat name -> the part fields it sets (read from the first).
    ROUTES = {
        "vocab_size": _enc("vocab_size"),
        "num_encoder_layers": _enc("num_layers"),
        "num_heads": _enc("num_heads"),  # encoder heads
        "ffn_size": _enc("ffn_size"),  # encoder FFN; default 4 * hidden_size
        "max_position_embeddings": _enc("max_position_embeddings"),
        "type_vocab_size": _enc("type_vocab_size"),
        "layer_norm_epsilon": _enc("layer_norm_epsilon"),  # RoBERTa 1e-5, BERT 1e-12
        "activation": _enc("activation"),  # encoder FFN (exact GELU)
        "norm_placement": _enc("norm_placement"),  # encoder: BERT / StructBERT post-LN
        "dropout_rate": _enc("dropout_rate"),
        "attention_dropout_rate": _enc("attention_dropout_rate"),
        "num_decoder_layers": _dec("num_layers"),
        "num_decoder_heads": _dec("num_heads"),
        "decoder_ffn_size": _dec("ffn_size"),
        "decoder_layer_norm_epsilon": _dec("layer_norm_epsilon"),
        "decoder_activation": _dec("activation"),
        "decoder_dropout_rate": _dec("dropout_rate") + _dec("attention_dropout_rate"),
        **{k: _enc(k) + _dec(k) for k in _SHARED},
    }

    def __post_init__(self):
        if self.encoder.num_layers < 1:
            raise ValueError("PalmConfig: num_encoder_layers and num_decoder_layers must be >= 1")
        if self.position_offset < 0:
            raise ValueError(f"PalmConfig: position_offset must be >= 0, got "
                             f"{self.position_offset}")
        if self.encoder.num_experts or self.decoder.num_experts:
            raise ValueError("PalmConfig: PALM has no mixture-of-experts variant; set "
                             "num_experts=0")
        if self.copy_softmax and not self.copy:
            raise ValueError("PalmConfig: copy_softmax=True needs copy=True (it changes the copy "
                             "head)")
        # The context attention projects the encoder states with d_model x d_model maps, and
        # the checkpoint records one dtype / layout.
        self.check_shared("hidden_size", "dtype", "param_dtype", "scan_layers")

    @property
    def mlp_dim(self) -> int:
        return self.encoder.mlp_dim

    @property
    def head_dim(self) -> int:
        return self.encoder.head_dim

    @property
    def decoder_head_dim(self) -> int:
        return self.decoder.head_dim

    @property
    def moe_mlp_dim(self) -> int:
        return self.encoder.moe_mlp_dim

    @property
    def encoder_config(self) -> StructBERTConfig:
        """The encoder as a StructBERT config (``BertEncoder``): the ``encoder`` part."""
        return self.encoder

    @property
    def decoder_config(self) -> TransformerDecoderConfig:
        """The decoder layers' config: the ``decoder`` part."""
        return self.decoder

    @property
    def copy_gate_inputs(self) -> int:
        """Width of the copy gate's input: [context; state] (+ input embedding)."""
        return (3 if self.copy_gate_uses_input else 2) * self.hidden_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PalmConfig":
        """Preset ``name``; ``overrides``: flat names, fields or whole parts."""
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
