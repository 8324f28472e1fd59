"""The M6 network: one pre-LN transformer over ``[image patches ; source text ; target text]``.

M6 (arXiv 2103.00823) encodes an image and text in one sequence and generates text with the
same weights. Here (the definitions the paper leaves open are ours; README "Network"):

* **Image stem**: a linear patch embedding (``patch_size``, the ViT stem) plus learned
  positions over the ``(image_size / patch_size)^2`` patches.
* **Text**: token embeddings plus learned positions; the source and the target each count
  positions from 0.
* **Type embeddings**: 0 image, 1 source, 2 target, added to every token.
* **Mask (prefix LM)**: the image and the source form the prefix and attend to each other both
  ways; the target attends to the whole prefix and to itself left to right. Source padding
  (id 0) is never attended to. One network thus encodes ``[image ; text]`` bidirectionally and
  generates text left to right.
* **Blocks**: pre-LN, multi-head self-attention and a GELU FFN (a mixture of experts in every
  ``moe_every_n``-th layer when ``num_experts``: M6-T's expert prototyping is the MoE layer's
  ``'prototype'`` router), then a final LayerNorm; logits through the transposed token table.

Generation (the ``image_to_text`` kind of :class:`plug_jax.models.ImageTextLM`, and the
``encdec_lm`` kind for text-only sources): ``encode(features)`` embeds the prefix; the
``decode`` call that creates the cache runs it through every layer once (each attention writes
the prefix keys and values into the first cache slots: ``MultiHeadAttention(prefill=True)``),
and each later call appends one target token. The prefix is thus computed once per decode.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.families.m6.config import M6Config
from plug_jax.layers.attention import MultiHeadAttention, prefix_mask, segment_mask
from plug_jax.layers.embeddings import Embed
from plug_jax.layers.mlp import MLP
from plug_jax.layers.moe.config import active_param_count as moe_active_param_count
from plug_jax.layers.moe.config import stack_kwargs
from plug_jax.layers.norms import LayerNorm
from plug_jax.layers.scan import LayerStack
from plug_jax.layers.vision import PatchEmbed, PositionEmbedding
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint

IMAGE_TYPE, SOURCE_TYPE, TARGET_TYPE = 0, 1, 2


class M6Block(nn.Module):
    """One pre-LN block: ``block(x, mask, token_mask) -> (x, None)``."""

    config: M6Config
    decode: bool = False
    prefill: bool = False
    cache_length: int | None = None
    deterministic: bool = True
    use_moe: bool = False

    @nn.compact
    def __call__(self, x, mask, token_mask):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        out_init = nn.initializers.normal(cfg.initializer_range / math.sqrt(2.0 * cfg.num_layers))
        h = LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype,
                      name="pre_attn_norm")(x)
        h = MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.kv_dim, use_bias=True,
                               dropout_rate=cfg.attention_dropout_rate, dtype=dtype,
                               param_dtype=pdtype, kernel_init=init, out_kernel_init=out_init,
                               name="attn")(h, mask=mask, decode=self.decode,
                                            token_mask=token_mask, prefill=self.prefill,
                                            cache_length=self.cache_length,
                                            deterministic=self.deterministic)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
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
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = with_logical_constraint(x, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED))
        return x, None


class M6Trunk(nn.Module):
    """The block stack and the final LayerNorm (``[B, N, D]`` -> ``[B, N, D]``)."""

    config: M6Config

    @nn.compact
    def __call__(self, x, mask, token_mask=None, *, decode: bool = False,
                 prefill: bool = False, cache_length: int | None = None,
                 deterministic: bool = True):
        cfg = self.config
        x = LayerStack(
            **stack_kwargs(cfg, M6Block, cfg.num_layers, (
                ("config", cfg), ("decode", decode), ("prefill", prefill),
                ("cache_length", cache_length), ("deterministic", deterministic))),
            scan=cfg.scan_layers, remat_policy=cfg.remat_policy, name="blocks",
        )(x, mask, token_mask)
        return LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype,
                         param_dtype=cfg.params_dtype, name="final_norm")(x)


class M6(nn.Module):
    """The M6 network (module docstring).

    ``encoder_text``: the source text (``encoder_input_tokens``) joins the prefix (VQA-style
    prompts, multimodal-to-text: the start of a description); ``False`` ignores it (captioning
    from the image alone). The parameter tree is the same either way.
    """

    config: M6Config
    encoder_text: bool = True

    def setup(self):
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        self.token_embed = Embed(cfg.vocab_size, cfg.hidden_size, axes=(A.VOCAB, A.EMBED),
                                 dtype=dt, param_dtype=pdt, embedding_init=init)
        self.text_positions = Embed(cfg.max_text_positions, cfg.hidden_size,
                                    axes=(None, A.EMBED), dtype=dt, param_dtype=pdt,
                                    embedding_init=init)
        if cfg.target_grid:
            self.code_rows = Embed(cfg.target_grid, cfg.hidden_size, axes=(None, A.EMBED),
                                   dtype=dt, param_dtype=pdt, embedding_init=init)
            self.code_cols = Embed(cfg.target_grid, cfg.hidden_size, axes=(None, A.EMBED),
                                   dtype=dt, param_dtype=pdt, embedding_init=init)
        self.type_embed = Embed(3, cfg.hidden_size, axes=(None, A.EMBED), dtype=dt,
                                param_dtype=pdt, embedding_init=init)
        self.patch_embed = PatchEmbed(cfg.hidden_size, cfg.patch_size, dtype=dt,
                                      param_dtype=pdt, kernel_init=init)
        self.image_positions = PositionEmbedding(cfg.num_patches, dtype=dt, param_dtype=pdt,
                                                 embedding_init=init)
        self.embed_dropout = nn.Dropout(cfg.dropout_rate)
        self.trunk = M6Trunk(cfg)

    # ------------------------------------------------------------------ embeddings
    def _type(self, type_id: int):
        return self.type_embed(jnp.asarray([type_id], jnp.int32))[0]

    def embed_image(self, images):
        """``[B, H, W, C]`` normalised pixels -> ``[B, P, D]``."""
        cfg = self.config
        images = jnp.asarray(images, jnp.float32)
        if images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(f"M6 reads {cfg.image_size}x{cfg.image_size}x{cfg.num_channels} "
                             f"images, got {tuple(images.shape[1:])}; fix: set IMAGE_SIZE (the "
                             f"config's image_size) to the task's image size")
        x = self.image_positions(self.patch_embed(images))
        return x + self._type(IMAGE_TYPE)

    def embed_text(self, ids, positions, type_id: int):
        """int ``[B, L]`` ids at ``positions`` -> ``[B, L, D]``. With ``target_grid`` g, a
        target at position p (the input that predicts code p of the raster) also gets the
        row ``p // g`` and column ``p % g`` embeddings (positions past the grid clip)."""
        ids = jnp.asarray(ids, jnp.int32)
        positions = jnp.asarray(positions, jnp.int32)
        x = self.token_embed(ids) + self.text_positions(positions) + self._type(type_id)
        g = self.config.target_grid
        if g and type_id == TARGET_TYPE:
            x = (x + self.code_rows(jnp.clip(positions // g, 0, g - 1))
                 + self.code_cols(positions % g))
        return x

    def _prefix(self, features: dict):
        """``(x [B, P, D], valid bool [B, P])`` of the image and (with ``encoder_text``) the
        source tokens in ``features``."""
        parts, valid = [], []
        if features.get("image") is not None:
            v = self.embed_image(features["image"])
            parts.append(v)
            valid.append(jnp.ones(v.shape[:2], jnp.bool_))
        ids = features.get("encoder_input_tokens")
        if ids is not None and (self.encoder_text or features.get("image") is None):
            ids = jnp.asarray(ids, jnp.int32)
            pos = features.get("encoder_positions")
            if pos is None:
                pos = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
            parts.append(self.embed_text(ids, pos, SOURCE_TYPE))
            seg = features.get("encoder_segment_ids")
            valid.append((ids > 0) if seg is None else jnp.asarray(seg) > 0)
        if not parts:
            raise ValueError(f"M6 needs an 'image' or 'encoder_input_tokens' feature to encode; "
                             f"got {sorted(features)}")
        x = jnp.concatenate([p.astype(parts[0].dtype) for p in parts], axis=1)
        return x, jnp.concatenate(valid, axis=1)

    def _logits(self, h):
        logits = self.token_embed.attend(h)
        logits = jnp.asarray(logits, jnp.float32)
        return with_logical_constraint(logits, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_VOCAB))

    # ------------------------------------------------------------------ teacher forcing
    def _run(self, prefix, prefix_valid, decoder_ids, deterministic: bool, *,
             prefix_segments=None, decoder_segments=None, decoder_positions=None):
        """Target logits of ``decoder_ids`` after ``prefix``. Packed rows (``EncDec``
        segment ids, ``prefix_segments`` with ``decoder_segments``): every target token sees
        its own segment's prefix and earlier targets; positions come from the packer."""
        b, p = prefix_valid.shape
        t = decoder_ids.shape[1]
        pos = (jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
               if decoder_positions is None else decoder_positions)
        x = jnp.concatenate([prefix, self.embed_text(decoder_ids, pos, TARGET_TYPE)
                             .astype(prefix.dtype)], axis=1)
        x = self.embed_dropout(x, deterministic=deterministic)
        is_prefix = jnp.concatenate([jnp.ones((b, p), jnp.bool_), jnp.zeros((b, t), jnp.bool_)],
                                    axis=1)
        if decoder_segments is not None and prefix_segments is not None:
            segments = jnp.concatenate([jnp.asarray(prefix_segments, jnp.int32),
                                        jnp.asarray(decoder_segments, jnp.int32)], axis=1)
            mask = prefix_mask(is_prefix) & segment_mask(segments)
        else:
            keys_valid = jnp.concatenate([prefix_valid, jnp.ones((b, t), jnp.bool_)], axis=1)
            mask = prefix_mask(is_prefix) & keys_valid[:, None, None, :]
        h = self.trunk(x, mask, deterministic=deterministic)
        return self._logits(h[:, p:])

    def lm_logits(self, features: dict, decoder_ids, *, deterministic: bool = True):
        """Teacher-forced target logits ``[B, T, vocab]`` float32."""
        prefix, valid = self._prefix(features)
        return self._run(prefix, valid, jnp.asarray(decoder_ids, jnp.int32), deterministic)

    # ------------------------------------------------------------------ generation
    def encode(self, features: dict) -> dict:
        """``{'prefix': [B, P, D], 'mask': bool [B, P]}``: the embedded prefix."""
        prefix, valid = self._prefix(features)
        return {"prefix": prefix, "mask": valid}

    def logits_from_encoded(self, encoded: dict, decoder_ids):
        """Teacher-forced target logits over an ``encode`` output."""
        return self._run(encoded["prefix"], encoded["mask"],
                         jnp.asarray(decoder_ids, jnp.int32), True)

    def decode(self, token_ids, positions, token_mask, encoded=None,
               cache_length: int | None = None):
        """Cached decoding (module docstring). With ``encoded`` (the call that creates the
        cache): the prefix runs through every layer into the first cache slots, then
        ``cache_length`` slots follow for the target; its logits are zeros (unused)."""
        token_ids = jnp.asarray(token_ids, jnp.int32)
        if encoded is not None:
            x, valid = encoded["prefix"], jnp.asarray(encoded["mask"], jnp.bool_)
            p = x.shape[1]
            mask = jnp.broadcast_to(valid[:, None, None, :], (x.shape[0], 1, p, p))
            self.trunk(x, mask, valid, decode=True, prefill=True,
                       cache_length=p + int(cache_length or token_ids.shape[1]))
            return jnp.zeros(token_ids.shape + (self.config.vocab_size,), jnp.float32)
        x = self.embed_text(token_ids, positions, TARGET_TYPE)
        mask = None if token_mask is None else jnp.asarray(token_mask, jnp.bool_)
        h = self.trunk(x, None, mask, decode=True)
        return self._logits(h)

    def __call__(self, images, input_ids=None, attention_mask=None, decoder_ids=None, *,
                 deterministic: bool = True):
        """Builds every parameter (``init``): logits of ``decoder_ids`` (default
        ``input_ids``) after ``[image ; input_ids]``."""
        features = {"image": images, "encoder_input_tokens": input_ids}
        decoder_ids = input_ids if decoder_ids is None else decoder_ids
        if decoder_ids is None:
            decoder_ids = jnp.zeros((jnp.shape(images)[0], 1), jnp.int32)
        return self.lm_logits(features, decoder_ids, deterministic=deterministic)


class M6Text(M6):
    """M6 read as an encoder-decoder LM (``encdec_lm``: ``models.EncoderDecoderLM``) for
    text-only sources (text denoising, text-to-text transfer): the source is the prefix. The
    parameter tree equals :class:`M6`'s (``init`` builds the image stem too), so one checkpoint
    serves text and image tasks."""

    def __call__(self, encoder_input_tokens, decoder_input_tokens, *,
                 encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
                 decoder_positions=None, deterministic: bool = True):
        cfg = self.config
        if self.is_initializing():
            self.embed_image(jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels)))
        features = {"encoder_input_tokens": encoder_input_tokens,
                    "encoder_segment_ids": encoder_segment_ids,
                    "encoder_positions": encoder_positions}
        prefix, valid = self._prefix(features)
        packed = decoder_segment_ids is not None and encoder_segment_ids is not None
        return {"logits": self._run(
            prefix, valid, jnp.asarray(decoder_input_tokens, jnp.int32), deterministic,
            prefix_segments=encoder_segment_ids if packed else None,
            decoder_segments=decoder_segment_ids if packed else None,
            decoder_positions=decoder_positions)}


# ------------------------------------------------------------------------ parameter counts
def abstract_params(config: M6Config) -> Any:
    """The (boxed) parameter tree of ``M6(config)`` as ``ShapeDtypeStruct`` leaves."""
    images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size,
                                   config.num_channels), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return jax.eval_shape(lambda i, t: M6(config).init(jax.random.PRNGKey(0), i, t),
                          images, ids)["params"]


def param_count(config: M6Config) -> int:
    """Parameters of ``config``, from abstract shapes (nothing allocated)."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(config)))
    return int(sum(np.prod(x.shape) for x in leaves))


def active_param_count(config: M6Config) -> int:
    """Parameters one token meets (M6-T: ``moe_top_k`` prototypes' experts in each MoE
    layer); equals :func:`param_count` for a dense preset."""
    if not config.num_experts:
        return param_count(config)
    return moe_active_param_count(abstract_params(config), config)
