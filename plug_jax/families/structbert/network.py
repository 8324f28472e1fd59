"""StructBERT network: a BERT encoder (post-LN or pre-LN) and the pre-training heads.

``BertEncoder``: word + learned position + token-type embeddings (summed) -> post-LN only:
embedding LayerNorm -> dropout -> ``num_layers`` bidirectional blocks -> pre-LN only: final
LayerNorm. It returns the hidden states ``[batch, length, hidden]`` and is usable on its own
(it is PLUG's encoder with ``norm_placement='pre'``).

``StructBERTForPreTraining``: the encoder plus

* the MLM head: dense -> activation -> LayerNorm, then logits through the transposed word
  embedding (tied) plus an output bias (``vocab``);
* the pooler: dense -> tanh on the hidden state at position 0 ([CLS]);
* the sentence head: a linear map of the pooled vector to ``num_sentence_classes`` logits
  (3 for StructBERT's next / previous / random task, 2 for BERT's NSP).

Parameter tree (scanned; the unscanned layout has ``layers_0 .. layers_{n-1}``)::

    encoder/word_embed/embedding       [vocab, embed]
    encoder/pos_embed/embedding        [max_pos, embed]
    encoder/type_embed/embedding       [type_vocab, embed]
    encoder/embed_norm/{scale,bias}    (config.use_embedding_norm: post-LN, and PLUG)
    encoder/stack/layers/attn/{query,key,value,out}/{kernel,bias}
    encoder/stack/layers/attn_norm/{scale,bias}
    encoder/stack/layers/mlp/{wi,wo}/{kernel,bias}
    encoder/stack/layers/mlp_norm/{scale,bias}
    encoder/final_norm/{scale,bias}    (pre-LN only)
    mlm_head/transform/{kernel,bias}, mlm_head/norm/{scale,bias}, mlm_head/output_bias
    pooler/{kernel,bias}
    sentence_head/{kernel,bias}

In post-LN blocks ``attn_norm`` / ``mlp_norm`` follow the residual additions (BERT's
``attention.output.LayerNorm`` / ``output.LayerNorm``); in pre-LN blocks they precede the
sub-layers (Megatron's ``attention.ln`` / ``ln``).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.families.structbert.config import StructBERTConfig
from plug_jax.layers.attention import (MultiHeadAttention, causal_mask, combine_masks,
                                       padding_mask, segment_mask)
from plug_jax.layers.dense import DenseGeneral
from plug_jax.layers import quant
from plug_jax.layers.embeddings import Embed
from plug_jax.layers.mlp import MLP, get_activation
from plug_jax.layers.moe.config import stack_kwargs
from plug_jax.layers.norms import LayerNorm
from plug_jax.layers.scan import LayerStack
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint

_ACT = (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED)


def _norm(cfg: StructBERTConfig, name: str) -> LayerNorm:
    return LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype,
                     param_dtype=cfg.params_dtype, name=name)


class BertLayer(nn.Module):
    """One encoder block. Called as ``layer(x, mask) -> (x, None)``.

    With ``cross_attention=True`` (BERT's ``add_cross_attention``: the BERT decoder, mPLUG's
    fusion layers) a cross-attention sub-layer (``cross_attn``, ``cross_attn_norm``) sits
    between self-attention and the FFN: ``layer(x, mask, enc, cross_mask)`` attends ``x`` to
    ``enc`` ``[batch, enc_len, d]`` (``cross_mask`` ``[b, 1, 1|len, enc_len]``). Called with
    ``enc=None`` the sub-layer is skipped (mPLUG's connected layers), though at init its
    parameters are still created (with key/value input width ``hidden_size``), so every layer
    of a stack has the same tree. Off by default: the parameter tree is unchanged.

    ``decode=True`` (the BERT decoder's cached generation, ``cache`` collection mutable):
    the self-attention keeps a KV cache (``cache_length`` slots, set on the call that
    creates it; ``token_mask`` ``[b, len]`` marks real new tokens; ``mask`` is ignored) and
    the cross-attention projects ``enc`` into keys and values once, on that first call, and
    reads them back afterwards (``enc`` may then be None). Parameters are unchanged.
    """

    config: StructBERTConfig
    deterministic: bool = True
    use_moe: bool = False  # the FFN is a mixture of experts (config.moe_*, PLUG-MoE)
    cross_attention: bool = False
    decode: bool = False
    cache_length: int | None = None

    @nn.compact
    def __call__(self, x, mask, enc=None, cross_mask=None, token_mask=None):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        attn = MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim, use_bias=True,
                                  dropout_rate=cfg.attention_dropout_rate, dtype=dtype,
                                  param_dtype=pdtype, kernel_init=init, name="attn")
        if self.use_moe:
            mlp = cfg.moe_layer(activation=cfg.activation, dtype=dtype, param_dtype=pdtype,
                                kernel_init=init)
        else:
            mlp = MLP(hidden_dim=cfg.mlp_dim, activation=cfg.activation, use_bias=True,
                      dtype=dtype, param_dtype=pdtype, kernel_init=init, name="mlp")
        attn_norm, mlp_norm = _norm(cfg, "attn_norm"), _norm(cfg, "mlp_norm")
        drop = nn.Dropout(cfg.dropout_rate)
        det = self.deterministic
        if self.cross_attention:
            cross = MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                                       use_bias=True, dropout_rate=cfg.attention_dropout_rate,
                                       dtype=dtype, param_dtype=pdtype, kernel_init=init,
                                       name="cross_attn")
            cross_norm = _norm(cfg, "cross_attn_norm")
            if enc is None and not self.decode and self.is_initializing():
                # a skipped sub-layer still has params
                cross_norm(cross(x, x, deterministic=True))
        decode = self.decode

        def self_attn(h):
            if decode:
                return attn(h, decode=True, token_mask=token_mask,
                            cache_length=self.cache_length, deterministic=det)
            return attn(h, mask=mask, deterministic=det)

        def cross_attn(h):
            if decode:
                return cross(h, enc, mask=cross_mask, decode=True, static_kv=True,
                             deterministic=det)
            return cross(h, enc, mask=cross_mask, deterministic=det)

        has_cross = self.cross_attention and (enc is not None or decode)
        if cfg.pre_norm:  # Megatron / PLUG: LN -> sub-layer -> +res
            h = self_attn(attn_norm(x))
            x = x + drop(h, deterministic=det)
            if has_cross:
                h = cross_attn(cross_norm(x))
                x = x + drop(h, deterministic=det)
            h = mlp(mlp_norm(x), deterministic=det)
            x = x + drop(h, deterministic=det)
        else:  # BERT / StructBERT: sub-layer -> +res -> LN
            h = self_attn(x)
            x = attn_norm(x + drop(h, deterministic=det))
            if has_cross:
                h = cross_attn(x)
                x = cross_norm(x + drop(h, deterministic=det))
            h = mlp(x, deterministic=det)
            x = mlp_norm(x + drop(h, deterministic=det))
        x = with_logical_constraint(x, _ACT)
        return x, None


class BertEncoder(nn.Module):
    """Bidirectional encoder: ``apply({'params': p}, input_ids, ...) -> [batch, length, hidden]``.

    Args of ``__call__``:
      input_ids: int ``[batch, length]``.
      token_type_ids: int ``[batch, length]`` (default all 0).
      attention_mask: ``[batch, length]`` 1 for real tokens, 0 for padding (keys at padding
        positions are never attended to; default: every token is real).
      positions: int ``[batch, length]`` (default ``0..length-1``).
      segment_ids: int ``[batch, length]`` for packed rows (tokens attend within their own
        segment; 0 is padding); takes the place of ``attention_mask``.
      encoder_states: ``[batch, enc_len, d]``, with ``cross_attention=True``: the states
        every layer cross-attends to (BERT decoder).
      encoder_mask: ``[batch, enc_len]`` 1 for real encoder positions (default: all).
      deterministic: disable dropout.

    ``causal=True`` (BERT's ``is_decoder``) adds a causal mask to the self-attention;
    ``cross_attention=True`` gives every layer a cross-attention sub-layer (see
    :class:`BertLayer`). Both are off by default (the parameter tree is then unchanged).

    ``decode=True`` (with ``causal`` and ``cross_attention``): cached incremental decoding,
    ``cache`` collection mutable, ``positions`` required (the absolute position of each new
    token), ``attention_mask`` = the validity of the new tokens. The call that creates the
    cache passes ``encoder_states`` / ``encoder_mask`` and ``cache_length`` (self-attention
    slots); it projects every layer's cross-attention keys and values once and stores the
    encoder mask; later calls pass ``encoder_states=None``. Needs ``scan_layers=False``
    (decode with the unrolled twin, as :func:`plug_jax.decoding.encdec_adapter` does).
    """

    config: StructBERTConfig
    cross_attention: bool = False
    causal: bool = False
    decode: bool = False
    cache_length: int | None = None

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, positions=None,
                 segment_ids=None, encoder_states=None, encoder_mask=None, *,
                 deterministic: bool = True):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        b, length = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, length), jnp.int32)
        if segment_ids is not None:
            mask = segment_mask(jnp.asarray(segment_ids, jnp.int32))
        elif attention_mask is not None:
            mask = padding_mask(jnp.ones((b, length), jnp.bool_),
                                jnp.asarray(attention_mask, jnp.bool_))
        else:
            mask = None
        word = Embed(cfg.vocab_size, cfg.hidden_size, axes=(A.VOCAB, A.EMBED), dtype=dtype,
                     param_dtype=pdtype, embedding_init=init, name="word_embed")
        pos = Embed(cfg.max_position_embeddings, cfg.hidden_size, axes=(None, A.EMBED),
                    dtype=dtype, param_dtype=pdtype, embedding_init=init, name="pos_embed")
        typ = Embed(cfg.type_vocab_size, cfg.hidden_size, axes=(None, A.EMBED), dtype=dtype,
                    param_dtype=pdtype, embedding_init=init, name="type_embed")
        x = word(input_ids) + typ(jnp.asarray(token_type_ids, jnp.int32)) + pos(positions)
        if cfg.use_embedding_norm:
            x = _norm(cfg, "embed_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = with_logical_constraint(x, _ACT)
        if self.causal:
            mask = combine_masks(causal_mask(b, length), mask)
        layer_kwargs = (("config", cfg), ("deterministic", deterministic))
        args = (mask,)
        if self.decode:
            if not (self.causal and self.cross_attention):
                raise ValueError("BertEncoder(decode=True) is the cached BERT decoder: it "
                                 "needs causal=True and cross_attention=True")
            if cfg.scan_layers:
                raise ValueError("BertEncoder(decode=True) needs scan_layers=False; fix: "
                                 "decode with the unrolled twin (decoding.encdec_adapter)")
            if encoder_states is None and not self.has_variable("cache", "encoder_mask"):
                raise ValueError("BertEncoder(decode=True): create the cache first with "
                                 "encoder_states and mutable=['cache']")
            enc_mask = self.variable(
                "cache", "encoder_mask",
                lambda: (jnp.ones(encoder_states.shape[:2], jnp.bool_)
                         if encoder_mask is None else jnp.asarray(encoder_mask, jnp.bool_)))
            layer_kwargs += (("cross_attention", True), ("decode", True),
                             ("cache_length", self.cache_length))
            token_mask = (jnp.ones((b, length), jnp.bool_) if attention_mask is None
                          else jnp.asarray(attention_mask, jnp.bool_))
            args = (None, encoder_states, enc_mask.value[:, None, None, :], token_mask)
        elif self.cross_attention:
            if encoder_states is None:
                raise ValueError("BertEncoder(cross_attention=True) needs encoder_states")
            layer_kwargs += (("cross_attention", True),)
            cross_mask = None
            if encoder_mask is not None:
                cross_mask = padding_mask(jnp.ones((b, length), jnp.bool_),
                                          jnp.asarray(encoder_mask, jnp.bool_))
            args = (mask, encoder_states, cross_mask)
        x = LayerStack(**stack_kwargs(cfg, BertLayer, cfg.num_layers, layer_kwargs),
                       scan=cfg.scan_layers, remat_policy=cfg.remat_policy, name="stack")(x, *args)
        if cfg.pre_norm:
            x = _norm(cfg, "final_norm")(x)
        return with_logical_constraint(x, _ACT)

    def embedding_table(self):
        """The word-embedding matrix ``[vocab, hidden]`` (for tied output projections)."""
        return quant.float_weight(self.variables["params"]["word_embed"], "embedding",
                                  self.config.params_dtype)

    def attend(self, x):
        """``x @ word_embedding.T``: logits over the vocabulary, in the compute dtype."""
        table = jnp.asarray(self.embedding_table(), self.config.compute_dtype)
        return jnp.einsum("...d,vd->...v", jnp.asarray(x, self.config.compute_dtype), table)


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense -> activation -> LayerNorm -> tied logits + output bias."""

    config: StructBERTConfig

    @nn.compact
    def __call__(self, x, embedding_table):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        h = DenseGeneral(cfg.hidden_size, (A.EMBED, A.MLP), dtype=dtype, param_dtype=pdtype,
                         kernel_init=init, name="transform")(x)
        h = get_activation(cfg.activation)(h)
        h = _norm(cfg, "norm")(h)
        h = with_logical_constraint(h, _ACT)
        table = jnp.asarray(embedding_table, dtype)
        logits = jnp.einsum("...d,vd->...v", jnp.asarray(h, dtype), table)
        bias = self.param("output_bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                       (A.VOCAB,)),
                          (cfg.vocab_size,), pdtype)
        logits = jnp.asarray(logits, jnp.float32) + jnp.asarray(bias, jnp.float32)
        return with_logical_constraint(logits, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_VOCAB))


class StructBERTForPreTraining(nn.Module):
    """Encoder + MLM head + pooler + sentence head.

    ``apply({'params': p}, input_ids, token_type_ids, attention_mask, ...)`` returns a dict:

    * ``hidden_states`` ``[batch, length, hidden]`` (compute dtype),
    * ``mlm_logits`` ``[batch, length, vocab]`` float32 (``[batch, P, vocab]`` when
      ``mlm_positions`` ``[batch, P]`` selects the positions to predict),
    * ``pooled`` ``[batch, hidden]`` (tanh of the dense map of position 0),
    * ``sentence_logits`` ``[batch, num_sentence_classes]`` float32.
    """

    config: StructBERTConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, positions=None,
                 segment_ids=None, mlm_positions=None, *, deterministic: bool = True):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        encoder = BertEncoder(cfg, name="encoder")
        h = encoder(input_ids, token_type_ids, attention_mask, positions, segment_ids,
                    deterministic=deterministic)
        mlm_in = h
        if mlm_positions is not None:
            idx = jnp.asarray(mlm_positions, jnp.int32)[..., None]
            mlm_in = jnp.take_along_axis(h, idx, axis=1)
        mlm_logits = MLMHead(cfg, name="mlm_head")(mlm_in, encoder.embedding_table())
        pooled = DenseGeneral(cfg.hidden_size, (A.EMBED, A.MLP), dtype=dtype, param_dtype=pdtype,
                              kernel_init=init, name="pooler")(h[:, 0])
        pooled = jnp.tanh(pooled)
        sentence_logits = DenseGeneral(cfg.num_sentence_classes, (A.EMBED, None), dtype=dtype,
                                       param_dtype=pdtype, kernel_init=init,
                                       name="sentence_head")(pooled)
        return {"hidden_states": h, "mlm_logits": mlm_logits, "pooled": pooled,
                "sentence_logits": jnp.asarray(sentence_logits, jnp.float32)}


class StructBERTForSequenceClassification(nn.Module):
    """Encoder + pooler + a fresh ``classifier`` head of ``num_labels`` (fine-tuning).

    The ``encoder`` and ``pooler`` parameters have the names of
    :class:`StructBERTForPreTraining`'s, so a pre-training checkpoint restores into them
    (``restore_mode='params_only'``); the pre-training heads are not used. Returns the
    ``[batch, num_labels]`` float32 logits.
    """

    config: StructBERTConfig
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, positions=None,
                 segment_ids=None, *, deterministic: bool = True):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        h = BertEncoder(cfg, name="encoder")(input_ids, token_type_ids, attention_mask,
                                             positions, segment_ids, deterministic=deterministic)
        pooled = DenseGeneral(cfg.hidden_size, (A.EMBED, A.MLP), dtype=dtype, param_dtype=pdtype,
                              kernel_init=init, name="pooler")(h[:, 0])
        pooled = nn.Dropout(cfg.dropout_rate)(jnp.tanh(pooled), deterministic=deterministic)
        logits = DenseGeneral(self.num_labels, (A.EMBED, None), dtype=dtype, param_dtype=pdtype,
                              kernel_init=init, name="classifier")(pooled)
        return jnp.asarray(logits, jnp.float32)


def abstract_params(config: StructBERTConfig, batch: int = 1, length: int = 8,
                    encoder_only: bool = False) -> Any:
    """Shapes (boxed with logical names) of the parameters, without allocating them."""
    model = BertEncoder(config) if encoder_only else StructBERTForPreTraining(config)
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return jax.eval_shape(lambda r, x: model.init(r, x), jax.random.PRNGKey(0), ids)["params"]


def param_count(config: StructBERTConfig, encoder_only: bool = False) -> int:
    """Number of parameters of ``config`` (with the pre-training heads unless
    ``encoder_only``), computed from abstract shapes."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(config,
                                                                encoder_only=encoder_only)))
    return int(sum(np.prod(x.shape) for x in leaves))
