"""``ChatPLUGConfig``: ChatPLUG = an mT5 (T5.1.1) encoder-decoder run as fusion-in-decoder.

Sources (MODEL_SPECS.md section 13 "ChatPLUG"; the X-PLUG/ChatPLUG repository):

* 3.7B [V-code]: ``XDPX/chat_pipeline/*.hjson`` name ``google/mt5-xl`` as the backbone
  (``core_chat_pretrained_version``, ``auto_model``): 24 encoder + 24 decoder layers,
  ``d_model`` 2048, 32 heads of 64, ``d_ff`` 5120, gated-GELU (tanh form), 32 relative
  position buckets up to distance 128, RMSNorm epsilon 1e-6, untied LM head, the mT5
  SentencePiece vocabulary of 250,112 rows (``XDPX/tests/sample_data/mt5-base/config.json``).
  The mT5-XL count, 3.74B computed, is the published "3.7B".
* Fusion-in-decoder limits [V-code] (``XDPX/xdpx/processors/chat.py``, ``FIDChatProcessor``
  and the ``t5_fidchat*`` processors): ``max_n_passage`` 20 passages, ``max_encoder_length``
  380 tokens per passage (instruction + context + one passage, cut to 380),
  ``max_decoder_length`` 512.
* 240M [NF]: no released shape. The preset is MODEL_SPECS' hypothesis [I], an mT5-base shape
  (12 + 12 layers, ``d_model`` 768, 12 heads of 64, ``d_ff`` 2048, gated-GELU, untied head)
  with a reduced Chinese vocabulary whose size is chosen here so that the total is 240M:
  the shape holds 198.23M parameters besides the two ``vocab x 768`` tables (the shared
  embedding and the untied head), so ``(240M - 198.23M) / (2 * 768) = 27,194`` rows;
  rounded to a multiple of 128 (sharding, like every padded vocabulary here) that is
  **27,136**, 239.91M in total. The published size does not pin the vocabulary down: the
  BERT-Chinese 21,128 (230.7M), DAMO's Chinese GPT-3 25,600 (237.6M) and T5's 32,128
  (247.6M) are all within 4%, so ``vocab_size`` is a gin macro.
* ``tiny``: test size, on the Shop World zh vocabulary padded to 1152 (as PALM tiny).

``num_passages`` / ``passage_length``: the data pipeline gives ``encoder_input_tokens``
flattened as ``[B, num_passages * passage_length]`` (passage ``p`` at ``p * L .. (p + 1) * L -
1``, each padded to exactly ``L`` with id 0; an all-padding passage is absent); the network
reshapes it to ``[B, P, L]`` and runs fusion-in-decoder (``network.py``). ``num_passages=1``
is a plain T5. ``max_decoder_length`` is the released target limit (512): the experiments'
``TASK_FEATURE_LENGTHS['targets']`` should not exceed it (relative positions have no hard
limit, so the network does not enforce it).

The fields of :class:`~plug_jax.layers.t5.T5Config` are inherited (a ``ChatPLUGConfig`` *is*
a ``T5Config``, so ``plug_jax.layers.t5`` and ``plug_jax.convert.hf_t5`` take it as is); the
defaults are the released 3.7B model's.
"""
from __future__ import annotations

import dataclasses

from plug_jax.layers.t5 import T5Config


@dataclasses.dataclass(frozen=True)
class ChatPLUGConfig(T5Config):
    # ---- the mT5-XL backbone (ChatPLUG-3.7B)
    vocab_size: int = 250112
    d_model: int = 2048
    d_kv: int = 64
    d_ff: int = 5120
    num_layers: int = 24
    num_decoder_layers: int | None = None  # = num_layers
    num_heads: int = 32
    # ---- fusion-in-decoder, as released (XDPX FIDChatProcessor)
    num_passages: int = 20  # max_n_passage
    passage_length: int = 380  # max_encoder_length (per passage)
    max_decoder_length: int = 512
    preset: str = "custom"

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_passages", "passage_length", "max_decoder_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"ChatPLUGConfig: {name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if self.tie_word_embeddings:
            raise ValueError("ChatPLUGConfig: ChatPLUG (mT5) has an untied LM head; set "
                             "tie_word_embeddings=False")

    @property
    def encoder_length(self) -> int:
        """Length of the flattened encoder input: ``num_passages * passage_length``."""
        return self.num_passages * self.passage_length

    @property
    def fid(self) -> bool:
        """Whether the encoder input is split into passages (``num_passages > 1``)."""
        return self.num_passages > 1

    def t5_config(self) -> T5Config:
        """The backbone alone, as a plain :class:`T5Config`."""
        names = {f.name for f in dataclasses.fields(T5Config)}
        return T5Config(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ChatPLUGConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown ChatPLUG preset {name!r}; choose one of {list(PRESETS)}")
        return dataclasses.replace(PRESETS[name], preset=name, **overrides)


# mT5-base shape (MODEL_SPECS' 240M hypothesis) besides the vocabulary.
_MT5_BASE = dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12)
VOCAB_240M = 27136  # (240M - 198.23M non-vocabulary) / (2 x 768), to a multiple of 128 [I]

PRESETS: dict[str, ChatPLUGConfig] = {
    # ChatPLUG-3.7B: google/mt5-xl [V-code]; FiD 20 x 380, decoder 512 [V-code].
    "3.7B": ChatPLUGConfig(),
    # ChatPLUG-240M: mT5-base shape with a reduced Chinese vocabulary [I] (module docstring).
    "240M": ChatPLUGConfig(vocab_size=VOCAB_240M, **_MT5_BASE),
    # Tests and Shop World: 2 + 2 layers; the Shop World dialogue experiment's 6 passages of
    # 224 tokens (inputs 1344).
    "tiny": ChatPLUGConfig(vocab_size=1152, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                           num_heads=4, relative_attention_num_buckets=16,
                           relative_attention_max_distance=64, dropout_rate=0.0,
                           num_passages=6, passage_length=224, max_decoder_length=64),
}
PRESETS = {k: dataclasses.replace(v, preset=k) for k, v in PRESETS.items()}

# ChatPLUG.md / the ModelScope card name the model "3.7B" [V-card]; it is mT5-XL [V-code].
# The 240M model's card gives only its name ("240M") [V-card].
PUBLISHED_PARAMS = {"3.7B": 3.7e9, "240M": 240e6}
