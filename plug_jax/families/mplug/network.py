"""mPLUG network: CLIP ViT + BERT text encoder + fusion with cross-modal skip connections +
BERT decoder, and the retrieval heads (arXiv 2205.12005; MODEL_SPECS.md section 5).

Methods of :class:`MPlug` (``apply(v, ..., method=MPlug.<name>)``), for the task models:

* ``encode_image(images)`` -> ``[B, 1 + P, hidden]``: every CLIP token after ``ln_post``
  (no CLIP projection); large then ``visn_fc`` -> ``visn_layer_norm`` -> dropout.
* ``encode_text(ids, mask)`` -> ``[B, L, hidden]``: a BERT encoder (``text_layers`` layers).
* ``fuse(vision, v_mask, text, t_mask)`` -> ``(vision', text')``: ``fusion_layers`` layers;
  layer ``j`` is

  - *asymmetric co-attention* (``j == 0`` or ``j % S != 0``)::

        t = LN(t + SelfAttn(t, t_mask))
        t = LN(t + CrossAttn(q=t, kv=v, v_mask))
        t = LN(t + FFN(t))                  # v unchanged

  - *connected* (``j != 0`` and ``j % S == 0``)::

        x = [v ; t]                         # concatenated on the length axis
        x = LN(x + SelfAttn(x, [v_mask ; t_mask]))
        x = LN(x + FFN(x))
        v_new, t = split(x)
        v = v + v_new                       # the cross-modal skip connection

  (its ``cross_attn`` parameters exist, as in the released ``FusionLayer``, but are unused).
* ``decode_full(decoder_ids, decoder_mask, encoder_states, encoder_mask)`` -> logits
  ``[B, T, vocab]`` float32: a BERT decoder (causal self-attention, cross-attention to
  ``encoder_states`` = ``[fused vision ; fused text]``, FFN; ``decoder_layers`` layers) and
  BERT's LM head (dense -> GELU -> LN -> tied word embeddings + bias).
* ``itc_features(vision, text)`` -> L2-normalised ``vision_proj(v[:, 0])``,
  ``text_proj(t[:, 0])`` (``embed_dim``); ``temperature()`` the learnable ``temp``.
* ``itm_logits(fused_text)`` -> ``itm_head(fused_text[:, 0])`` ``[B, 2]``.

The fusion layers are always unrolled (``fusion/layers_j``; their kinds differ), the other
stacks follow ``scan_layers``. Parameter tree (scanned stacks; unscanned: ``layers_0 ..``) and
the released (modelscope)
names each tensor maps to one-to-one (``N`` a layer index, ``j`` a fusion layer index,
``s = fusion_total_layers - fusion_layers`` the released start layer)::

    ours                                        modelscope state dict
    vision/patch_embed/kernel [p,p,C,D]         visual_encoder.visual.conv1.weight [D,C,p,p]
    vision/class_embed/embedding                visual_encoder.visual.class_embedding
    vision/pos_embed/embedding                  visual_encoder.visual.positional_embedding
                                                (already resized to image_res in checkpoints)
    vision/pre_norm, vision/post_norm           visual_encoder.visual.ln_pre, .ln_post
    vision/stack/layers/attn/{query,key,value}  ....transformer.resblocks.N.attn.in_proj_weight
                                                / in_proj_bias (split in 3 along dim 0)
    vision/stack/layers/attn/out                ....resblocks.N.attn.out_proj
    vision/stack/layers/{attn_norm,mlp_norm}    ....resblocks.N.ln_1, ln_2
    vision/stack/layers/mlp/{wi,wo}             ....resblocks.N.mlp.c_fc, mlp.c_proj
    vision/projection/kernel                    visual_encoder.visual.proj (unused by mPLUG)
    (none)                                      visual_encoder.{token_embedding, positional_
                                                embedding, transformer, ln_final, text_
                                                projection, logit_scale}: CLIP text tower,
                                                unused, skipped by the converter
    vision_to_text/fc      (large)              visn_fc
    vision_to_text/norm    (large)              visn_layer_norm
    text_encoder/{word,pos,type}_embed          text_encoder.embeddings.{word,position,
                                                token_type}_embeddings
    text_encoder/embed_norm                     text_encoder.embeddings.LayerNorm
    text_encoder/stack/layers/attn/{q,k,v}      text_encoder.encoder.layer.N.attention.self.*
    text_encoder/stack/layers/attn/out          ....attention.output.dense
    text_encoder/stack/layers/attn_norm         ....attention.output.LayerNorm
    text_encoder/stack/layers/mlp/wi, wo        ....intermediate.dense, output.dense
    text_encoder/stack/layers/mlp_norm          ....output.LayerNorm
    fusion/layers_j/{attn,attn_norm,mlp,        fusion_encoder.encoder.layer.{s+j}.* (as in
      mlp_norm}                                 the text encoder)
    fusion/layers_j/cross_attn/{q,k,v}, out     fusion_encoder.encoder.layer.{s+j}.
                                                crossattention.self.*, .output.dense
    fusion/layers_j/cross_attn_norm             ....crossattention.output.LayerNorm
    (none)                                      fusion_encoder.encoder.layer.{0..s-1}: never
                                                run, skipped by the converter
    decoder/bert/...                            text_decoder.bert.{embeddings,encoder.layer.N}
                                                (as the text encoder, plus crossattention.*
                                                -> stack/layers/cross_attn{,_norm})
    decoder/lm_head/transform, norm             text_decoder.cls.predictions.transform.dense,
                                                .transform.LayerNorm
    decoder/lm_head/output_bias                 text_decoder.cls.predictions.bias (= .decoder.
                                                bias)
    (tied: decoder/bert/word_embed)             text_decoder.cls.predictions.decoder.weight
    decoder/output_embedding (untied only)      text_decoder.cls.predictions.decoder.weight
    vision_proj, text_proj, itm_head            vision_proj, text_proj, itm_head
    temp []                                     temp
    (momentum state, later)                     *_m copies, image_queue, text_queue,
                                                idx_queue, queue_ptr

BERT ``nn.Linear`` weights ``[out, in]`` become ``[in, out]`` kernels; query/key/value
kernels are ``[hidden, heads, head_dim]`` and the output kernel ``[heads, head_dim, hidden]``
(:mod:`plug_jax.families.structbert.convert_hf` has these transforms).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.families.mplug.config import MPlugConfig
from plug_jax.families.structbert.network import BertEncoder, BertLayer, MLMHead
from plug_jax.layers.attention import padding_mask
from plug_jax.layers.clip import CLIPTextConfig, CLIPTextTower, CLIPVisionTower, l2_normalize
from plug_jax.layers.dense import DenseGeneral
from plug_jax.layers.norms import LayerNorm
from plug_jax.partitioning import axes as A


def _ones_mask(x):
    return jnp.ones(x.shape[:2], jnp.int32)


class VisionToText(nn.Module):
    """mPLUG large's ``visn_fc`` -> ``visn_layer_norm`` -> dropout."""

    config: MPlugConfig

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        cfg = self.config
        x = DenseGeneral(cfg.hidden_size, (None, A.EMBED), dtype=cfg.compute_dtype,
                         param_dtype=cfg.params_dtype,
                         kernel_init=nn.initializers.normal(cfg.initializer_range),
                         name="fc")(x)
        x = LayerNorm(epsilon=cfg.vision_proj_norm_eps, dtype=cfg.compute_dtype,
                      param_dtype=cfg.params_dtype, name="norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class MPlugFusion(nn.Module):
    """The fusion module (see the module docstring): ``(v, v_mask, t, t_mask) -> (v, t)``."""

    config: MPlugConfig

    @nn.compact
    def __call__(self, vision, vision_mask, text, text_mask, *, deterministic: bool = True):
        cfg = self.config
        bert = cfg.bert(cfg.fusion_layers)
        b, nv = vision.shape[:2]
        nt = text.shape[1]
        vision_mask = _ones_mask(vision) if vision_mask is None else vision_mask
        text_mask = _ones_mask(text) if text_mask is None else text_mask
        v_valid = jnp.asarray(vision_mask, jnp.bool_)
        t_valid = jnp.asarray(text_mask, jnp.bool_)
        t_self = padding_mask(jnp.ones((b, nt), jnp.bool_), t_valid)
        t_to_v = padding_mask(jnp.ones((b, nt), jnp.bool_), v_valid)
        joint_valid = jnp.concatenate([v_valid, t_valid], axis=1)
        joint = padding_mask(jnp.ones((b, nv + nt), jnp.bool_), joint_valid)
        for j in range(cfg.fusion_layers):
            layer = BertLayer(bert, deterministic=deterministic, cross_attention=True,
                              name=f"layers_{j}")
            if cfg.is_connected(j):
                x, _ = layer(jnp.concatenate([vision, text.astype(vision.dtype)], axis=1),
                             joint)
                vision = vision + x[:, :nv]
                text = x[:, nv:]
            else:
                text, _ = layer(text, t_self, vision, t_to_v)
        return vision, text


class MPlugDecoder(nn.Module):
    """BERT decoder (causal, cross-attention) + LM head -> float32 logits.

    ``decode=True``: cached incremental decoding (:class:`BertEncoder` ``decode``):
    ``positions`` are the new tokens' absolute positions, ``mask`` their validity; the call
    that creates the cache passes ``encoder_states`` and ``cache_length``."""

    config: MPlugConfig

    @nn.compact
    def __call__(self, ids, mask, encoder_states, encoder_mask, *, positions=None,
                 decode: bool = False, cache_length: int | None = None,
                 deterministic: bool = True):
        cfg = self.config
        bert_cfg = cfg.bert(cfg.decoder_layers)
        bert = BertEncoder(bert_cfg, cross_attention=True, causal=True, decode=decode,
                           cache_length=cache_length, name="bert")
        h = bert(ids, None, mask, positions, None, encoder_states, encoder_mask,
                 deterministic=deterministic)
        if cfg.tie_decoder_embeddings:
            table = bert.embedding_table()
        else:
            table = self.param("output_embedding", nn.with_logical_partitioning(
                nn.initializers.normal(cfg.initializer_range), (A.VOCAB, A.EMBED)),
                (cfg.vocab_size, cfg.hidden_size), cfg.params_dtype)
        return MLMHead(bert_cfg, name="lm_head")(h, table)


class MPlug(nn.Module):
    """The mPLUG network (module docstring). ``__call__`` runs every part (for init).

    Generation from an image (the ``image_to_text`` kind; ``encoder_text`` picks what the
    decoder reads, the parameter tree is the same either way):

    * ``encode(features) -> {'hidden_states', 'mask'}``: ``features['image']`` ``[B, H, W,
      C]`` and, with ``encoder_text=True`` (VQA: the released ``MPlugForVisualQuestion
      Answering``), ``features['encoder_input_tokens']`` ``[B, L]`` (the question; id 0 is
      padding): vision and text encoded and fused, the decoder memory is ``[fused vision ;
      fused text]``. With ``encoder_text=False`` (captioning: ``MPlugForImageCaption``) the
      memory is the vision states alone.
    * ``lm_logits(features, decoder_ids)``: teacher-forced logits ``[B, T, vocab]`` (training
      and scoring); the causal decoder needs no padding mask (padding is at the end).
    * ``decode(token_ids, positions, token_mask, encoded=None, cache_length=None)``: cached
      incremental decoding (docs/decoding.md, "Encoder-decoder models"): called once with
      ``encoded`` and ``cache_length`` to create the cache (self-attention slots, every
      decoder layer's cross-attention keys and values), then once per new token.
    """

    config: MPlugConfig
    encoder_text: bool = True

    def setup(self):
        cfg = self.config
        dense = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                     kernel_init=nn.initializers.normal(cfg.initializer_range))
        self.vision = CLIPVisionTower(cfg.vision)
        if cfg.vision_proj_to_text:
            self.vision_to_text = VisionToText(cfg)
        self.text_encoder = BertEncoder(cfg.bert(cfg.text_layers))
        self.fusion = MPlugFusion(cfg)
        self.decoder = MPlugDecoder(cfg)
        self.vision_proj = DenseGeneral(cfg.embed_dim, (A.EMBED, None), **dense)
        self.text_proj = DenseGeneral(cfg.embed_dim, (A.EMBED, None), **dense)
        self.itm_head = DenseGeneral(2, (A.EMBED, None), **dense)
        self.temp = self.param("temp", nn.with_logical_partitioning(
            nn.initializers.constant(cfg.temp_init), ()), (), jnp.float32)
        # Pre-training only (``init_pretrain``): BERT's MLM head over the fused text, tied to
        # the text encoder's word embeddings. The released task checkpoints have no such
        # head (the pre-training one calls it ``text_encoder.cls``); models that never call
        # it have no ``mlm_head`` parameters.
        self.mlm_head = MLMHead(cfg.bert(cfg.text_layers))

    def encode_image(self, images, *, deterministic: bool = True):
        """``[B, H, W, C]`` normalised pixels -> vision states ``[B, 1 + P, hidden]``."""
        x = self.vision(images, deterministic=deterministic)["tokens"]
        if self.config.vision_proj_to_text:
            x = self.vision_to_text(x, deterministic=deterministic)
        return x

    def encode_text(self, ids, mask=None, *, deterministic: bool = True):
        """int ``[B, L]`` (mask 1 = real token) -> text states ``[B, L, hidden]``."""
        return self.text_encoder(ids, None, mask, deterministic=deterministic)

    def fuse(self, vision, vision_mask, text, text_mask, *, deterministic: bool = True):
        """-> ``(fused vision [B, Nv, hidden], fused text [B, Nt, hidden])``."""
        return self.fusion(vision, vision_mask, text, text_mask, deterministic=deterministic)

    def decode_full(self, decoder_ids, decoder_mask, encoder_states, encoder_mask=None, *,
               deterministic: bool = True):
        """LM logits ``[B, T, vocab]`` float32 of the decoder over ``encoder_states``."""
        return self.decoder(decoder_ids, decoder_mask, encoder_states, encoder_mask,
                            deterministic=deterministic)

    def encode(self, features: dict) -> dict:
        """The decoder memory of ``features`` (class docstring)."""
        if "image" not in features:
            raise ValueError(f"mPLUG encodes an 'image' feature ([B, H, W, C] pixels); got "
                             f"{sorted(features)}")
        v = self.encode_image(jnp.asarray(features["image"]))
        v_mask = _ones_mask(v)
        if not self.encoder_text:
            return {"hidden_states": v, "mask": v_mask.astype(jnp.bool_)}
        if "encoder_input_tokens" not in features:
            raise ValueError("mPLUG with encoder_text=True reads the question or prompt "
                             "'encoder_input_tokens'; fix: give the task an 'inputs' feature "
                             "(and TASK_FEATURE_LENGTHS['inputs']) or set encoder_text=False")
        ids = jnp.asarray(features["encoder_input_tokens"], jnp.int32)
        t_mask = (ids > 0).astype(jnp.int32)
        t = self.encode_text(ids, t_mask)
        fv, ft = self.fuse(v, v_mask, t, t_mask)
        return {"hidden_states": jnp.concatenate([fv, ft.astype(fv.dtype)], axis=1),
                "mask": jnp.concatenate([v_mask, t_mask], axis=1).astype(jnp.bool_)}

    def lm_logits(self, features: dict, decoder_ids, *, deterministic: bool = True):
        """Teacher-forced decoder logits ``[B, T, vocab]`` float32 over ``encode(features)``."""
        enc = self.encode(features)
        return self.decoder(jnp.asarray(decoder_ids, jnp.int32), None, enc["hidden_states"],
                            enc["mask"], deterministic=deterministic)

    def logits_from_encoded(self, encoded: dict, decoder_ids):
        """Teacher-forced decoder logits ``[B, T, vocab]`` over an ``encode`` output (score
        many texts against one encoded image: repeat ``encoded`` along the batch)."""
        return self.decoder(jnp.asarray(decoder_ids, jnp.int32), None,
                            encoded["hidden_states"], encoded["mask"])

    def decode(self, token_ids, positions, token_mask, encoded=None,
               cache_length: int | None = None):
        """Cached decoding step (class docstring): logits ``[B, L, vocab]`` of the new
        tokens."""
        states = None if encoded is None else encoded["hidden_states"]
        mask = None if encoded is None else encoded["mask"]
        return self.decoder(jnp.asarray(token_ids, jnp.int32), token_mask, states, mask,
                            positions=jnp.asarray(positions, jnp.int32), decode=True,
                            cache_length=cache_length)

    def itc_features(self, vision, text):
        """``(image_feat, text_feat)`` ``[B, embed_dim]``, L2-normalised (float32), from the
        CLS tokens of the (unfused) vision and text states."""
        return (l2_normalize(self.vision_proj(vision[:, 0])),
                l2_normalize(self.text_proj(text[:, 0])))

    def itm_logits(self, fused_text):
        """``[B, 2]`` float32 matching logits from the fused text CLS."""
        return jnp.asarray(self.itm_head(fused_text[:, 0]), jnp.float32)

    def temperature(self):
        """The learnable ITC temperature (a scalar, initialised to ``temp_init``)."""
        return self.temp

    def mlm_logits(self, fused_text):
        """``[B, L, vocab]`` float32 masked-LM logits of the fused text states (pre-training;
        tied to ``text_encoder``'s word embeddings)."""
        return self.mlm_head(fused_text, self.text_encoder.embedding_table())

    def init_pretrain(self, images, input_ids, attention_mask=None, decoder_ids=None):
        """``__call__`` plus the MLM head: builds the pre-training parameter tree."""
        out = self(images, input_ids, attention_mask, decoder_ids)
        return {**out, "mlm_logits": self.mlm_logits(out["fused_text"])}

    def __call__(self, images, input_ids, attention_mask=None, decoder_ids=None,
                 decoder_mask=None, *, deterministic: bool = True):
        v = self.encode_image(images, deterministic=deterministic)
        t = self.encode_text(input_ids, attention_mask, deterministic=deterministic)
        v_mask = _ones_mask(v)
        t_mask = _ones_mask(t) if attention_mask is None else attention_mask
        fv, ft = self.fuse(v, v_mask, t, t_mask, deterministic=deterministic)
        image_feat, text_feat = self.itc_features(v, t)
        enc = jnp.concatenate([fv, ft], axis=1)
        enc_mask = jnp.concatenate([v_mask, jnp.asarray(t_mask, v_mask.dtype)], axis=1)
        decoder_ids = input_ids if decoder_ids is None else decoder_ids
        logits = self.decode_full(decoder_ids, decoder_mask, enc, enc_mask,
                             deterministic=deterministic)
        return {"vision": v, "text": t, "fused_vision": fv, "fused_text": ft,
                "image_feat": image_feat, "text_feat": text_feat,
                "itm_logits": self.itm_logits(ft), "temp": self.temp, "logits": logits}


# ------------------------------------------------------------------------ parameter counts
def abstract_params(config: MPlugConfig) -> Any:
    """The (boxed) parameter tree of ``MPlug(config)`` as ``ShapeDtypeStruct`` leaves."""
    vc = config.vision
    images = jax.ShapeDtypeStruct((1, vc.image_size, vc.image_size, vc.num_channels),
                                  jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    return jax.eval_shape(lambda i, t: MPlug(config).init(jax.random.PRNGKey(0), i, t),
                          images, ids)["params"]


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.unbox(tree))))


# The text tower of the OpenAI CLIP that the released ``visual_encoder`` carries (unused).
_CLIP_TEXT = {768: CLIPTextConfig(width=512, layers=12, heads=8, mlp_dim=2048,
                                  projection_dim=512),  # ViT-B/16
              1024: CLIPTextConfig(width=768, layers=12, heads=12, mlp_dim=3072,
                                   projection_dim=768)}  # ViT-L/14


def param_counts(config: MPlugConfig) -> dict[str, int]:
    """Parameter counts from abstract shapes (nothing is allocated).

    * ``network``: ``MPlug(config)`` -- every module mPLUG runs, plus the (tiny) unused CLIP
      ``visual.proj``; the decoder LM matrix is tied, as released.
    * per part: ``vision`` (incl. ``vision_to_text``), ``text_encoder``, ``fusion``,
      ``decoder``, ``heads`` (vision_proj, text_proj, itm_head, temp).
    * ``clip_text_tower``: the unused OpenAI CLIP text tower in the released
      ``visual_encoder`` (token / position embeddings, 12 blocks, ``ln_final``,
      ``text_projection``, ``logit_scale``).
    * ``skipped_fusion_layers``: the ``fusion_total_layers - fusion_layers`` lower fusion
      layers the released ``FusionModel`` builds but never runs.
    * ``as_instantiated``: ``network`` + both of those (the size of a released state dict,
      tied tensors counted once, momentum copies and queues excluded).
    """
    p = nn.unbox(abstract_params(config))
    parts = {
        "vision": _count(p["vision"]) + _count(p.get("vision_to_text", {})),
        "text_encoder": _count(p["text_encoder"]),
        "fusion": _count(p["fusion"]),
        "decoder": _count(p["decoder"]),
        "heads": _count({k: p[k] for k in ("vision_proj", "text_proj", "itm_head", "temp")}),
    }
    out = {"network": _count(p), **parts}
    assert sum(parts.values()) == out["network"]
    text_cfg = _CLIP_TEXT.get(config.vision.width)
    if text_cfg is not None:
        ids = jax.ShapeDtypeStruct((1, text_cfg.max_len), jnp.int32)
        tp = jax.eval_shape(lambda t: CLIPTextTower(text_cfg).init(jax.random.PRNGKey(0), t),
                            ids)["params"]
        out["clip_text_tower"] = _count(tp) + 1  # + logit_scale
    else:
        out["clip_text_tower"] = 0
    per_fusion_layer = out["fusion"] // config.fusion_layers
    out["skipped_fusion_layers"] = per_fusion_layer * config.fusion_start_layer
    out["as_instantiated"] = (out["network"] + out["clip_text_tower"]
                              + out["skipped_fusion_layers"])
    return out
