"""CLIP image and text towers and the dual-encoder model (Radford et al. 2021).

Configs (frozen dataclasses, hashable, usable as module attributes and from gin):

* :class:`CLIPVisionConfig` -- ``image_size``, ``patch_size``, ``width``, ``layers``,
  ``heads``, ``mlp_dim``, ``projection_dim``, ``layer_norm_eps`` (+ channels, activation,
  dtypes, scan / remat);
* :class:`CLIPTextConfig` -- ``vocab_size``, ``max_len``, ``width``, ``layers``, ``heads``,
  ``mlp_dim``, ``projection_dim``, ``layer_norm_eps``, ``eos_token_id`` and ``pooling``;
* :class:`CLIPConfig` -- the pair plus ``logit_scale_init`` (``log(1 / 0.07)``), with the
  published sizes as presets (:meth:`CLIPConfig.preset`: ``ViT-B/32``, ``ViT-B/16``,
  ``ViT-L/14``, ``ViT-L/14-336``).

Modules (each returns a dict):

* :class:`CLIPVisionTower` -- patch embedding (no bias) + class token + learned positions ->
  ``pre_norm`` -> pre-LN blocks (quick-GELU) -> ``post_norm`` -> class token -> ``projection``
  (no bias). Images ``[B, H, W, C]`` (NHWC float pixels, already normalised) or frames
  ``[B, T, H, W, C]`` (each frame through the tower; outputs get a ``T`` axis). Returns
  ``embeds`` ``[B, P]`` (projected, not normalised), ``pooled`` ``[B, D]`` (class token after
  ``post_norm``), ``tokens`` ``[B, 1 + N, D]`` (ALL tokens after ``post_norm``, no projection:
  mPLUG's visual features) and ``last_hidden_state`` ``[B, 1 + N, D]`` (the last block's
  output before ``post_norm``, transformers' ``last_hidden_state``).
* :class:`CLIPTextTower` -- token + position embeddings -> causal pre-LN blocks ->
  ``final_norm`` -> EOT pooling -> ``projection`` (no bias). Returns ``embeds`` ``[B, P]``,
  ``pooled`` ``[B, D]``, ``tokens`` ``[B, L, D]`` (all tokens after ``final_norm``),
  ``eot_index`` ``[B]`` and, with ``return_token_embeds=True``, ``token_embeds``
  ``[B, L, P]`` (every token through the projection: X-CLIP's word features).
* :class:`CLIPModel` -- both towers and ``logit_scale`` (stored as a log, a scalar).
  ``apply(v, images, input_ids, attention_mask=None)`` returns ``image_embeds`` /
  ``text_embeds`` (L2-normalised, float32), ``logits_per_image`` ``[B_img, B_txt]`` =
  ``exp(logit_scale) * image_embeds @ text_embeds.T``, ``logits_per_text`` (its transpose),
  and the two towers' outputs under ``vision`` / ``text``. ``method=CLIPModel.encode_image``
  / ``encode_text`` run one tower.

EOT pooling follows transformers' ``CLIPTextTransformer``: ``pooling='eos'`` takes the first
position whose id is ``eos_token_id`` (the padding may be the same id), ``pooling='argmax'``
the position of the largest id (OpenAI's original rule, where the end-of-text token has the
largest id; transformers uses it for configs with the legacy ``eos_token_id == 2``). A row
without an ``eos_token_id`` pools position 0, as transformers does.

Parameter tree (scanned; the unscanned layout has ``layers_0 .. layers_{n-1}``)::

    vision/patch_embed/kernel            [p, p, C, D]   (stem='conv': vision/conv_stem/...)
    vision/class_embed/embedding         [D]
    vision/pos_embed/embedding           [1 + N, D]
    vision/pre_norm/{scale,bias}
    vision/stack/layers/attn/{query,key,value}/{kernel [D, H, Dh], bias [H, Dh]}
    vision/stack/layers/attn/out/{kernel [H, Dh, D], bias [D]}
    vision/stack/layers/attn_norm/{scale,bias}      (layer_norm1, before attention)
    vision/stack/layers/mlp/{wi,wo}/{kernel,bias}
    vision/stack/layers/mlp_norm/{scale,bias}       (layer_norm2, before the MLP)
    vision/post_norm/{scale,bias}
    vision/projection/kernel             [D, P]
    text/token_embed/embedding           [vocab, D]
    text/pos_embed/embedding             [max_len, D]
    text/stack/layers/...                (as in vision)
    text/final_norm/{scale,bias}
    text/projection/kernel               [D, P]
    logit_scale                          []
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from plug_jax.layers.attention import MultiHeadAttention, causal_mask, padding_mask
from plug_jax.layers.config_base import ConfigBase
from plug_jax.layers.dense import DenseGeneral
from plug_jax.layers.embeddings import Embed
from plug_jax.layers.mlp import ACTIVATIONS, MLP
from plug_jax.layers.norms import LayerNorm
from plug_jax.layers.scan import LayerStack, check_remat_policy
from plug_jax.layers.vision import ClassToken, ConvStem, PatchEmbed, PositionEmbedding
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint

POOLINGS = ("eos", "argmax")
STEMS = ("patch", "conv")


def _check_tower(cfg: Any, owner: str) -> None:
    if cfg.width % cfg.heads:
        raise ValueError(f"{owner}: width {cfg.width} is not divisible by heads {cfg.heads}")
    for field in ("width", "layers", "heads", "mlp_dim", "projection_dim"):
        if getattr(cfg, field) < 1:
            raise ValueError(f"{owner}: {field} must be >= 1, got {getattr(cfg, field)}")
    if cfg.activation not in ACTIVATIONS:
        raise ValueError(f"{owner}: unknown activation {cfg.activation!r}; choose one of "
                         f"{sorted(ACTIVATIONS)}")
    check_remat_policy(cfg.remat_policy)
    for field in ("dtype", "param_dtype"):
        try:
            jnp.dtype(getattr(cfg, field))
        except TypeError:
            raise ValueError(f"{owner}: unknown {field} {getattr(cfg, field)!r}") from None


class _TowerConfig(ConfigBase):
    """Derived sizes shared by the two tower configs (dtypes and ``replace``: ConfigBase)."""

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(_TowerConfig):
    """The image tower (defaults: ViT-B/32 at 224)."""

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    projection_dim: int = 512
    layer_norm_eps: float = 1e-5
    num_channels: int = 3
    activation: str = "quick_gelu"
    attention_dropout_rate: float = 0.0
    dtype: str = "float32"  # compute dtype (bfloat16 on GPU/TPU)
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    # 'patch' (released CLIP: one p x p linear patch embedding) or 'conv' (ConvStem: 3x3
    # convolutions and max-pooling, same tokens; for from-scratch training on small data).
    stem: str = "patch"

    def __post_init__(self):
        _check_tower(self, "CLIPVisionConfig")
        if self.stem not in STEMS:
            raise ValueError(f"CLIPVisionConfig: unknown stem {self.stem!r}; choose one of "
                             f"{STEMS}")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPVisionConfig: image_size {self.image_size} is not divisible "
                             f"by patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2

    @property
    def num_positions(self) -> int:
        return self.num_patches + 1


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(_TowerConfig):
    """The text tower (defaults: the 512-wide, 8-head text encoder of ViT-B/32 and B/16)."""

    vocab_size: int = 49408
    max_len: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    projection_dim: int = 512
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    pooling: str = "eos"  # 'eos': first eos_token_id; 'argmax': largest id (legacy)
    activation: str = "quick_gelu"
    attention_dropout_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        _check_tower(self, "CLIPTextConfig")
        if self.pooling not in POOLINGS:
            raise ValueError(f"CLIPTextConfig: unknown pooling {self.pooling!r}; choose 'eos' "
                             f"(first eos_token_id) or 'argmax' (largest id)")


_PRESETS = {
    # name: (vision kwargs, text kwargs, projection_dim)
    "ViT-B/32": (dict(image_size=224, patch_size=32, width=768, layers=12, heads=12,
                      mlp_dim=3072), dict(width=512, layers=12, heads=8, mlp_dim=2048), 512),
    "ViT-B/16": (dict(image_size=224, patch_size=16, width=768, layers=12, heads=12,
                      mlp_dim=3072), dict(width=512, layers=12, heads=8, mlp_dim=2048), 512),
    "ViT-L/14": (dict(image_size=224, patch_size=14, width=1024, layers=24, heads=16,
                      mlp_dim=4096), dict(width=768, layers=12, heads=12, mlp_dim=3072), 768),
    "ViT-L/14-336": (dict(image_size=336, patch_size=14, width=1024, layers=24, heads=16,
                          mlp_dim=4096), dict(width=768, layers=12, heads=12, mlp_dim=3072),
                     768),
}


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Both towers and the initial (log) temperature."""

    vision: CLIPVisionConfig = dataclasses.field(default_factory=CLIPVisionConfig)
    text: CLIPTextConfig = dataclasses.field(default_factory=CLIPTextConfig)
    logit_scale_init: float = math.log(1 / 0.07)

    def __post_init__(self):
        if self.vision.projection_dim != self.text.projection_dim:
            raise ValueError(f"CLIPConfig: vision.projection_dim {self.vision.projection_dim} "
                             f"!= text.projection_dim {self.text.projection_dim}; the two "
                             f"embeddings must have one size")

    @property
    def projection_dim(self) -> int:
        return self.vision.projection_dim

    @classmethod
    def preset(cls, name: str, **tower_overrides) -> "CLIPConfig":
        """A published size (``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``, ``ViT-L/14-336``);
        ``tower_overrides`` (``dtype``, ``scan_layers``, ...) apply to both towers."""
        if name not in _PRESETS:
            raise ValueError(f"unknown CLIP preset {name!r}; choose one of {sorted(_PRESETS)}")
        v, t, p = _PRESETS[name]
        return cls(vision=CLIPVisionConfig(**v, projection_dim=p, **tower_overrides),
                   text=CLIPTextConfig(**t, projection_dim=p, **tower_overrides))

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


# ------------------------------------------------------------------------------ modules
def check_released_stem(vision: "CLIPVisionConfig", what: str) -> None:
    """One line if ``vision`` has a stem no released checkpoint layout has (``stem='conv'``)."""
    if vision.stem != "patch":
        raise ValueError(f"{what}: the vision tower has stem={vision.stem!r}, which the released "
                         f"layout does not have (it stores one patch embedding); convert a "
                         f"model trained with stem='patch'")


def _norm(cfg, name: str) -> LayerNorm:
    return LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                     param_dtype=cfg.params_dtype, name=name)


class CLIPLayer(nn.Module):
    """A pre-LN block: ``x + attn(attn_norm(x))``, then ``x + mlp(mlp_norm(x))``.

    Called as ``layer(x, mask) -> (x, None)`` (the :class:`LayerStack` contract).
    ``config``: a :class:`CLIPVisionConfig` or :class:`CLIPTextConfig`.
    """

    config: Any
    deterministic: bool = True
    length_axis: str = A.ACT_LENGTH  # act_image_tokens in the vision tower

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        h = MultiHeadAttention(num_heads=cfg.heads, head_dim=cfg.head_dim, use_bias=True,
                               dropout_rate=cfg.attention_dropout_rate, dtype=dtype,
                               param_dtype=pdtype, name="attn")(
            _norm(cfg, "attn_norm")(x), mask=mask, deterministic=self.deterministic)
        x = x + h
        h = MLP(hidden_dim=cfg.mlp_dim, activation=cfg.activation, use_bias=True, dtype=dtype,
                param_dtype=pdtype, name="mlp")(_norm(cfg, "mlp_norm")(x),
                                                 deterministic=self.deterministic)
        x = x + h
        x = with_logical_constraint(x, (A.ACT_BATCH, self.length_axis, A.ACT_EMBED))
        return x, None


def _stack(cfg, deterministic: bool, length_axis: str) -> LayerStack:
    kwargs = (("config", cfg), ("deterministic", deterministic), ("length_axis", length_axis))
    return LayerStack(layer_cls=CLIPLayer, num_layers=cfg.layers, layer_kwargs=kwargs,
                      scan=cfg.scan_layers, remat_policy=cfg.remat_policy, name="stack")


class CLIPVisionTower(nn.Module):
    """The image tower; see the module docstring for inputs and outputs."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, images, *, deterministic: bool = True):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        frames = None
        if images.ndim == 5:  # [B, T, H, W, C]: every frame through the tower
            frames = images.shape[:2]
            images = images.reshape((-1,) + images.shape[2:])
        elif images.ndim != 4:
            raise ValueError(f"CLIPVisionTower expects images [batch, height, width, channels] "
                             f"or frames [batch, time, height, width, channels], got shape "
                             f"{images.shape}")
        if images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(f"CLIPVisionTower: images of shape {tuple(images.shape[1:])} (H, W, "
                             f"C), the config expects ({cfg.image_size}, {cfg.image_size}, "
                             f"{cfg.num_channels}); resize the images or the position table "
                             f"(resize_positions) and set image_size")
        scale = cfg.width ** -0.5
        if cfg.stem == "conv":
            x = ConvStem(cfg.width, cfg.patch_size, dtype=dtype, param_dtype=pdtype,
                         name="conv_stem")(images)
        else:
            x = PatchEmbed(cfg.width, cfg.patch_size, use_bias=False, dtype=dtype,
                           param_dtype=pdtype, name="patch_embed")(images)
        x = ClassToken(dtype=dtype, param_dtype=pdtype,
                       embedding_init=nn.initializers.normal(scale), name="class_embed")(x)
        x = PositionEmbedding(cfg.num_positions, dtype=dtype, param_dtype=pdtype,
                              embedding_init=nn.initializers.normal(scale),
                              name="pos_embed")(x)
        act = (A.ACT_BATCH, A.ACT_IMAGE_TOKENS, A.ACT_EMBED)
        x = with_logical_constraint(_norm(cfg, "pre_norm")(x), act)
        hidden = _stack(cfg, deterministic, A.ACT_IMAGE_TOKENS)(x, None)
        tokens = with_logical_constraint(_norm(cfg, "post_norm")(hidden), act)
        pooled = tokens[:, 0]
        embeds = DenseGeneral(cfg.projection_dim, (A.EMBED, None), use_bias=False, dtype=dtype,
                              param_dtype=pdtype, kernel_init=nn.initializers.normal(scale),
                              name="projection")(pooled)
        out = {"embeds": embeds, "pooled": pooled, "tokens": tokens,
               "last_hidden_state": hidden}
        if frames is not None:
            out = {k: v.reshape(frames + v.shape[1:]) for k, v in out.items()}
        return out


def eot_positions(input_ids, eos_token_id: int, pooling: str = "eos"):
    """``[B]`` pooling positions (see the module docstring)."""
    ids = jnp.asarray(input_ids, jnp.int32)
    if pooling == "argmax":
        return jnp.argmax(ids, axis=-1)
    if pooling == "eos":
        return jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


class CLIPTextTower(nn.Module):
    """The text tower; see the module docstring for inputs and outputs.

    ``__call__(input_ids, attention_mask=None, positions=None, *, return_token_embeds=False,
    deterministic=True)``: ``input_ids`` int ``[B, L]`` with ``L <= max_len``;
    ``attention_mask`` ``[B, L]`` (1 = real token; padding keys are not attended to, on top
    of the causal mask); ``positions`` int ``[B, L]`` (default ``0..L-1``).
    """

    config: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, positions=None, *,
                 return_token_embeds: bool = False, deterministic: bool = True):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        b, length = input_ids.shape
        if length > cfg.max_len:
            raise ValueError(f"CLIPTextTower: {length} tokens exceed max_len {cfg.max_len}; "
                             f"truncate the text")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        x = Embed(cfg.vocab_size, cfg.width, axes=(A.VOCAB, A.EMBED), dtype=dtype,
                  param_dtype=pdtype, name="token_embed")(jnp.asarray(input_ids, jnp.int32))
        x = x + Embed(cfg.max_len, cfg.width, axes=(None, A.EMBED), dtype=dtype,
                      param_dtype=pdtype, embedding_init=nn.initializers.normal(0.01),
                      name="pos_embed")(jnp.asarray(positions, jnp.int32))
        act = (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED)
        x = with_logical_constraint(x, act)
        mask = causal_mask(b, length)
        if attention_mask is not None:
            mask = mask & padding_mask(jnp.ones((b, length), jnp.bool_),
                                       jnp.asarray(attention_mask, jnp.bool_))
        x = _stack(cfg, deterministic, A.ACT_LENGTH)(x, mask)
        tokens = with_logical_constraint(_norm(cfg, "final_norm")(x), act)
        eot = eot_positions(input_ids, cfg.eos_token_id, cfg.pooling)
        pooled = jnp.take_along_axis(tokens, eot[:, None, None], axis=1)[:, 0]
        proj = DenseGeneral(cfg.projection_dim, (A.EMBED, None), use_bias=False, dtype=dtype,
                            param_dtype=pdtype,
                            kernel_init=nn.initializers.normal(cfg.width ** -0.5),
                            name="projection")
        out = {"embeds": proj(pooled), "pooled": pooled, "tokens": tokens, "eot_index": eot}
        if return_token_embeds:
            out["token_embeds"] = proj(tokens)
        return out


def l2_normalize(x, eps: float = 1e-12):
    """``x / ||x||`` over the last axis, in float32 (``eps`` guards an all-zero row)."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)), eps)


class CLIPModel(nn.Module):
    """Image and text towers with a learned temperature; see the module docstring."""

    config: CLIPConfig

    def setup(self):
        cfg = self.config
        self.vision = CLIPVisionTower(cfg.vision)
        self.text = CLIPTextTower(cfg.text)
        self.logit_scale = self.param(
            "logit_scale", nn.with_logical_partitioning(
                nn.initializers.constant(cfg.logit_scale_init), ()), (), jnp.float32)

    def encode_image(self, images, *, deterministic: bool = True):
        """The vision tower's outputs (``embeds`` not normalised)."""
        return self.vision(images, deterministic=deterministic)

    def encode_text(self, input_ids, attention_mask=None, positions=None, *,
                    return_token_embeds: bool = False, deterministic: bool = True):
        """The text tower's outputs (``embeds`` not normalised)."""
        return self.text(input_ids, attention_mask, positions,
                         return_token_embeds=return_token_embeds, deterministic=deterministic)

    def __call__(self, images, input_ids, attention_mask=None, positions=None, *,
                 deterministic: bool = True):
        v = self.encode_image(images, deterministic=deterministic)
        t = self.encode_text(input_ids, attention_mask, positions, deterministic=deterministic)
        img, txt = l2_normalize(v["embeds"]), l2_normalize(t["embeds"])
        scale = jnp.exp(jnp.asarray(self.logit_scale, jnp.float32))
        logits_per_image = scale * jnp.einsum("ip,tp->it", img, txt)
        return {"image_embeds": img, "text_embeds": txt, "logits_per_image": logits_per_image,
                "logits_per_text": logits_per_image.T, "logit_scale": self.logit_scale,
                "vision": v, "text": t}


def abstract_params(config: CLIPConfig) -> Any:
    """The boxed parameter tree of ``CLIPModel(config)`` as ``ShapeDtypeStruct`` leaves."""
    vc, tc = config.vision, config.text
    images = jax.ShapeDtypeStruct((1, vc.image_size, vc.image_size, vc.num_channels),
                                  jnp.float32)
    ids = jax.ShapeDtypeStruct((1, tc.max_len), jnp.int32)
    variables = jax.eval_shape(lambda i, t: CLIPModel(config).init(jax.random.PRNGKey(0), i, t),
                               images, ids)
    return variables["params"]
