"""ChatPLUG's network: the shared T5.1.1 / mT5 encoder-decoder (``plug_jax.layers.t5``) fed
fusion-in-decoder passages from a flat encoder row.

The data pipeline cannot hold a ``[B, P, L]`` feature in the ``encdec`` batch, so a ChatPLUG
example arrives flattened: ``encoder_input_tokens`` ``[B, P * L]`` with passage ``p`` at
``p * L .. (p + 1) * L - 1``, each padded to exactly ``L = config.passage_length`` with id 0
(an all-padding passage is an absent one). :func:`split_passages` reshapes it to ``[B, P, L]``
and :class:`~plug_jax.layers.t5.T5EncoderDecoder` runs fusion-in-decoder on that: every
passage is encoded as its own row (``B * P`` rows of ``L``), the states are concatenated to
``[B, P * L, D]`` and the decoder cross-attends to all of them, padding hidden.

A row shorter than ``P * L`` (a ``plug-infer`` prompt) is padded with id 0 to the next
multiple of ``L``; a longer one is an error (it would not be the layout the model was trained
on). With ``num_passages == 1`` nothing is reshaped: a plain T5 over the whole row, packed
rows included. Inside a passage, id 0 is padding even where segment ids are given (packed
batches mark a whole example with one segment id); FiD rows should not be packed
(``models/chatplug/*.gin`` switch packing off).

Equations (``plug_jax/layers/t5.py``): attention logits ``q . k + b[bucket(j - i), head]``
without ``1/sqrt(d)``; pre-RMSNorm sub-layers; FFN ``wo(gelu_tanh(wi_0 x) * wi_1 x)``; one
``shared`` embedding table for both stacks, unscaled; untied ``lm_head``.

``encode`` / ``decode`` (cached decoding through ``decoding.encdec_adapter``) are the T5
layer's: ``encode`` goes through ``__call__`` and so through the same reshape, and the
decoder cache holds the cross-attention keys and values of all ``P * L`` encoder states, so
the passages are encoded once per generation.

The parameter tree is the T5 layer's (``shared``, ``encoder``, ``decoder``, ``lm_head``), which
``plug_jax.convert.hf_t5`` maps onto transformers' MT5 and ChatPLUG's XDPX layouts.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.families.chatplug.config import ChatPLUGConfig
from plug_jax.layers.t5 import T5EncoderDecoder


def split_passages(ids, segment_ids=None, positions=None, *, num_passages: int,
                   passage_length: int):
    """``(ids, segment_ids, positions)`` of a flat encoder row ``[B, E]`` as passages
    ``[B, n, L]``, ``n = ceil(E / L) <= num_passages`` (the row padded with id 0 to ``n * L``).
    Segment ids are zeroed on padding tokens (id 0). ``[B, P, L]`` inputs and
    ``num_passages == 1`` pass through unchanged."""
    ids = jnp.asarray(ids, jnp.int32)
    if ids.ndim == 3 or num_passages == 1:
        return ids, segment_ids, positions
    if ids.ndim != 2:
        raise ValueError(f"ChatPLUG encoder input must be [batch, passages * length] or "
                         f"[batch, passages, length]; got shape {ids.shape}")
    b, e = ids.shape
    length = int(passage_length)
    n = -(-e // length)
    if n > num_passages:
        raise ValueError(f"ChatPLUG encoder input has {e} tokens, more than num_passages * "
                         f"passage_length = {num_passages} * {length} = "
                         f"{num_passages * length}; fix: set TASK_FEATURE_LENGTHS['inputs'] "
                         f"to num_passages * passage_length (or raise num_passages)")
    pad = n * length - e

    def fold(x):
        x = jnp.asarray(x, jnp.int32)
        if pad:
            x = jnp.pad(x, ((0, 0), (0, pad)))
        return x.reshape(b, n, length)

    seg = (ids > 0).astype(jnp.int32) if segment_ids is None else (
        jnp.asarray(segment_ids, jnp.int32) * (ids > 0))
    return fold(ids), fold(seg), None if positions is None else fold(positions)


class ChatPLUGModel(T5EncoderDecoder):
    """:class:`~plug_jax.layers.t5.T5EncoderDecoder` whose encoder input may be the flat
    ``[B, P * L]`` passage row (see the module docstring). Called, encoded and decoded as
    the T5 layer (the ``encdec_lm`` kind)."""

    config: ChatPLUGConfig

    def __call__(self, encoder_input_ids, decoder_input_ids, encoder_segment_ids=None,
                 decoder_segment_ids=None, encoder_positions=None, decoder_positions=None,
                 **kw):
        if encoder_input_ids is not None:
            cfg = self.config
            encoder_input_ids, encoder_segment_ids, encoder_positions = split_passages(
                encoder_input_ids, encoder_segment_ids, encoder_positions,
                num_passages=cfg.num_passages, passage_length=cfg.passage_length)
        return super().__call__(encoder_input_ids, decoder_input_ids, encoder_segment_ids,
                                decoder_segment_ids, encoder_positions, decoder_positions, **kw)


def abstract_params(config: ChatPLUGConfig, batch: int = 1, length: int = 8) -> Any:
    """Shapes (boxed with logical names) of the parameters, without allocating them."""
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return jax.eval_shape(lambda r, e, d: ChatPLUGModel(config).init(r, e, d),
                          jax.random.PRNGKey(0), ids, ids)["params"]


def param_count(config: ChatPLUGConfig) -> int:
    """Number of parameters of ``config`` (nothing is allocated)."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(config)))
    return int(sum(np.prod(x.shape) for x in leaves))


def hand_count(config: ChatPLUGConfig) -> int:
    """The same count from the sizes (README's formula)."""
    d, f, inner, v = config.d_model, config.d_ff, config.num_heads * config.d_kv, config.vocab_size
    ffn = (3 if config.gated_mlp else 2) * d * f
    enc = config.num_layers * (4 * d * inner + ffn + 2 * d)
    dec = config.decoder_layers * (8 * d * inner + ffn + 3 * d)
    rel = 2 * config.relative_attention_num_buckets * config.num_heads
    return enc + dec + rel + 2 * d + v * d * (1 if config.tie_word_embeddings else 2)
