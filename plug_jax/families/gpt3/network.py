"""Chinese GPT-3 network: a Megatron-style pre-LN decoder-only transformer.

Token + learned absolute position embeddings -> ``num_layers`` blocks of
(LayerNorm -> causal self-attention -> residual; LayerNorm -> GELU MLP ->
residual) -> final LayerNorm -> logits through the transposed word embedding.

Megatron's query-key layer scaling (divide by the layer number before the
softmax, multiply back inside it) only guards fp16 overflow; in exact
arithmetic it is the plain ``1/sqrt(head_dim)`` scaling used here.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.families.gpt3.config import GPT3Config
from plug_jax.layers.attention import MultiHeadAttention, causal_mask, combine_masks, segment_mask
from plug_jax.layers.dense import DenseGeneral
from plug_jax.layers.embeddings import Embed
from plug_jax.layers.mlp import MLP
from plug_jax.layers.moe.config import active_param_count as moe_active_param_count
from plug_jax.layers.moe.config import stack_kwargs
from plug_jax.layers.norms import LayerNorm
from plug_jax.layers.scan import LayerStack
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint


class GPT3Block(nn.Module):
    """One pre-LN decoder block. Called as ``block(x, mask, token_mask) -> (x, None)``.

    With ``use_moe`` the FFN is a mixture of experts (``MoeLayer``, named ``moe``), which
    sows its auxiliary losses (collection ``aux_loss``) and routing statistics
    (``moe_metrics``).
    """

    config: GPT3Config
    decode: bool = False
    deterministic: bool = True
    use_moe: bool = False

    @nn.compact
    def __call__(self, x, mask, token_mask):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        # Megatron's scaled init for the projections that write into the residual stream.
        out_init = nn.initializers.normal(cfg.initializer_range / math.sqrt(2.0 * cfg.num_layers))
        h = LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype,
                      name="pre_attn_norm")(x)
        h = MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.kv_dim,
                               num_kv_heads=cfg.kv_heads, use_bias=True,
                               dropout_rate=cfg.attention_dropout_rate, dtype=dtype,
                               param_dtype=pdtype, kernel_init=init, out_kernel_init=out_init,
                               name="attn")(h, mask=mask, decode=self.decode,
                                            token_mask=token_mask,
                                            deterministic=self.deterministic)
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = x + h
        h = LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype,
                      name="pre_mlp_norm")(x)
        if self.use_moe:
            h = cfg.moe_layer(activation=cfg.activation, dtype=dtype, param_dtype=pdtype,
                              kernel_init=init, out_kernel_init=out_init)(
                                  h, deterministic=self.deterministic)
        else:
            h = MLP(hidden_dim=cfg.mlp_dim, activation=cfg.activation, use_bias=True,
                    dtype=dtype, param_dtype=pdtype, kernel_init=init, out_kernel_init=out_init,
                    name="mlp")(h, deterministic=self.deterministic)
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = x + h
        x = with_logical_constraint(x, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED))
        return x, None


class GPT3LM(nn.Module):
    """Decoder-only LM: ``apply({'params': p}, input_ids) -> logits [batch, length, vocab]``.

    Args of ``__call__``:
      input_ids: int ``[batch, length]``.
      positions: int ``[batch, length]`` (default ``0..length-1``; packed inputs
        restart at 0 in every segment). Required when ``decode=True``.
      segment_ids: int ``[batch, length]`` for packed inputs; 0 marks padding.
      attention_mask: ``[batch, length]`` 1 for real tokens, 0 for padding (used
        as segment ids when ``segment_ids`` is not given; when decoding, marks
        which new cache slots are real).
      decode: run incrementally against the KV cache (``mutable=['cache']``).
      deterministic: disable dropout.
    """

    config: GPT3Config

    @nn.compact
    def __call__(self, input_ids, positions=None, segment_ids=None, attention_mask=None, *,
                 decode: bool = False, deterministic: bool = True):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        token_embed = Embed(cfg.vocab_size, cfg.hidden_size, axes=(A.VOCAB, A.EMBED),
                            dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                            embedding_init=init, name="token_embed")
        pos_embed = Embed(cfg.max_position_embeddings, cfg.hidden_size, axes=(None, A.EMBED),
                          dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                          embedding_init=init, name="pos_embed")
        b, length = input_ids.shape
        if decode:
            if positions is None:
                raise ValueError("GPT3LM: decode=True needs explicit positions")
            mask = None
            token_mask = (jnp.ones((b, length), jnp.bool_) if attention_mask is None
                          else jnp.asarray(attention_mask, jnp.bool_))
        else:
            token_mask = None
            if segment_ids is None:
                segment_ids = (jnp.ones((b, length), jnp.int32) if attention_mask is None
                               else jnp.asarray(attention_mask, jnp.int32))
            mask = combine_masks(causal_mask(b, length), segment_mask(segment_ids))
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        x = token_embed(input_ids) + pos_embed(positions)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = with_logical_constraint(x, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED))
        x = LayerStack(
            **stack_kwargs(cfg, GPT3Block, cfg.num_layers, (
                ("config", cfg), ("decode", decode), ("deterministic", deterministic))),
            scan=cfg.scan_layers, remat_policy=cfg.remat_policy, name="decoder",
        )(x, mask, token_mask)
        x = LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype,
                      param_dtype=cfg.params_dtype, name="final_norm")(x)
        if cfg.tie_word_embeddings:
            logits = token_embed.attend(x)
        else:
            logits = DenseGeneral(cfg.vocab_size, (A.EMBED, A.VOCAB), use_bias=False,
                                  dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                                  kernel_init=init, name="lm_head")(x)
        logits = jnp.asarray(logits, jnp.float32)
        return with_logical_constraint(logits, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_VOCAB))


def abstract_params(config: GPT3Config, batch: int = 1, length: int = 8) -> Any:
    """Shapes (boxed with logical names) of the parameters, without allocating them."""
    model = GPT3LM(config)
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return jax.eval_shape(lambda r, x: model.init(r, x), jax.random.PRNGKey(0), ids)["params"]


def param_count(config: GPT3Config) -> int:
    """Number of parameters of ``config``, computed from abstract shapes."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(config)))
    return int(sum(np.prod(x.shape) for x in leaves))


def active_param_count(config: GPT3Config) -> int:
    """Parameters one token meets: without the ``num_experts - moe_top_k`` experts it is
    not routed to in each MoE layer (equals :func:`param_count` for a dense model). This is
    the size a GPT-MoE checkpoint is named by (``1.3B-MoE-32``)."""
    if not config.num_experts:
        return param_count(config)
    return moe_active_param_count(abstract_params(config), config)
