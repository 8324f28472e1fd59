"""X-CLIP as a dual encoder (the ``'dual_encoder'`` network of
:mod:`plug_jax.models.dual_encoder`): rows are videos, columns are captions.

Rows (``embed_rows``): ``batch['frames']`` ``[B, T, H, W, C]`` (``T = num_frames``) go frame
by frame through the CLIP image tower; the projected class tokens ``e`` ``[B, T, P]`` are the
*frame features* (L2-normalised). The temporal transformer adds learned frame positions and
runs ``temporal_layers`` bidirectional pre-LN blocks; its output is added back to ``e``, each
frame normalised, averaged over time and normalised again: the *video feature* ``[B, P]``.

Columns (``embed_cols``): ``batch['decoder_target_tokens']`` ``[B, num_words]`` through the
CLIP text tower with its causal mask only (as released: padding positions are computed and
kept, so they take part in the word attention): the *sentence feature* is the projected
end-of-text token, the *word features* every token after ``final_norm`` and the projection
(all L2-normalised).

``similarity(rows, cols)`` -> ``[N_videos, N_texts]``: with ``s = exp(logit_scale)``,
``tau = temperature`` (0.01), ``softmax_a`` over axis ``a`` and the eight learned matrices
(identity at init; the release's names)::

    S_vs[t, v] = s * sent_t . G . video_v                              (global_mat_weight)
    m[t, w, v] = words_tw . video_v;  a = softmax_w(m / tau) . Ww      (word_logit_weight)
    S_vw[t, v] = s * sum_w a[t, w, v] * m[t, w, v]
    n[t, v, f] = sent_t . frames_vf;  b = softmax_f(n / tau) . Wf      (frame_logit_weight)
    S_sf[t, v] = s * sum_f b[t, v, f] * n[t, v, f]
    M[t, w, v, f] = words_tw . L . frames_vf                           (local_mat_weight)
    r[t, v, f] = sum_w (softmax_w(M / tau) . W1w)[t, w, v, f] * M      (word_mat_weight)
    c[t, w, v] = sum_f (softmax_f(M / tau) . W1f)[t, w, v, f] * M      (frame_mat_weight)
    S_fw[t, v] = s * (sum_f (softmax_f(r / tau) . W2f) * r             (frame_mat_weight2)
                      + sum_w (softmax_w(c / tau) . W2w) * c) / 2      (word_mat_weight2)
    logits = (S_vs + S_vw + S_sf + S_fw) / 4

where ``x . W`` multiplies the attention vector over the softmax axis by the square matrix
(``sum_i x_i W[i, j]``). The loss (``DualEncoder``) is symmetric InfoNCE over the global
batch.

Parameter tree: ``clip/...`` (:class:`plug_jax.layers.clip.CLIPModel`, so CLIP checkpoints
load unchanged), ``temporal/frame_pos_embed/embedding`` ``[frame_positions, P]``,
``temporal/stack/...`` (CLIP blocks) and the eight matrices at the top level.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from plug_jax.layers.clip import CLIPLayer, CLIPModel, l2_normalize
from plug_jax.layers.embeddings import Embed
from plug_jax.layers.scan import LayerStack
from plug_jax.partitioning import axes as A

TEXT = "decoder_target_tokens"
FRAMES = "frames"
# (name, size) of the learned square matrices: 'D' = the embedding size, 'W' = words,
# 'F' = frames.
MATRICES = (("global_mat_weight", "D"), ("word_logit_weight", "W"),
            ("frame_logit_weight", "F"), ("local_mat_weight", "D"),
            ("frame_mat_weight", "F"), ("word_mat_weight", "W"),
            ("frame_mat_weight2", "F"), ("word_mat_weight2", "W"))


def matrix_sizes(config) -> dict[str, int]:
    size = {"D": config.clip.projection_dim, "W": config.num_words, "F": config.num_frames}
    return {name: size[k] for name, k in MATRICES}


def _eye(key, shape, dtype=jnp.float32):
    del key
    return jnp.eye(shape[0], shape[1], dtype=dtype)


class TemporalTransformer(nn.Module):
    """Frame positions + ``temporal_layers`` bidirectional CLIP blocks (no final norm)."""

    config: object  # XClipConfig

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        cfg = self.config
        t = cfg.temporal
        pos = Embed(cfg.frame_positions, t.width, axes=(None, A.EMBED), dtype=t.compute_dtype,
                    param_dtype=t.params_dtype, embedding_init=nn.initializers.normal(0.01),
                    name="frame_pos_embed")(jnp.arange(x.shape[1], dtype=jnp.int32))
        x = x.astype(t.compute_dtype) + pos[None]
        kwargs = (("config", t), ("deterministic", deterministic),
                  ("length_axis", A.ACT_LENGTH))
        return LayerStack(layer_cls=CLIPLayer, num_layers=t.layers, layer_kwargs=kwargs,
                          scan=t.scan_layers, remat_policy=t.remat_policy, name="stack")(x, None)


def _softmax_mix(x, axis: int, weight, tau: float):
    """``softmax(x / tau)`` over ``axis``, then mixed by the square ``weight`` along it."""
    a = jax.nn.softmax(x / tau, axis=axis)
    a = jnp.moveaxis(a, axis, -1) @ weight
    return jnp.moveaxis(a, -1, axis)


class XCLIPDualEncoder(nn.Module):
    config: object  # XClipConfig
    side_names = ("video", "text")

    def setup(self):
        cfg = self.config
        self.clip = CLIPModel(cfg.clip)
        self.temporal = TemporalTransformer(cfg)
        pdtype = jnp.dtype(cfg.clip.text.param_dtype)
        for name, n in matrix_sizes(cfg).items():
            setattr(self, name, self.param(
                name, nn.with_logical_partitioning(_eye, (None, None)), (n, n), pdtype))

    # ------------------------------------------------------------------ towers
    def frame_features(self, frames, *, deterministic: bool = True):
        """``[B, T, P]`` projected class tokens of every frame (not normalised)."""
        cfg = self.config
        if frames.ndim != 5 or frames.shape[1] != cfg.num_frames:
            raise ValueError(f"X-CLIP expects frames [batch, {cfg.num_frames}, height, width, "
                             f"channels] (num_frames={cfg.num_frames}: its frame matrices are "
                             f"that size), got shape {tuple(frames.shape)}; sample "
                             f"{cfg.num_frames} frames per video or set num_frames")
        return self.clip.encode_image(frames, deterministic=deterministic)["embeds"]

    def embed_rows(self, batch, *, deterministic: bool = True):
        e = self.frame_features(jnp.asarray(batch[FRAMES]), deterministic=deterministic)
        x = self.temporal(e, deterministic=deterministic) + e.astype(jnp.float32)
        return {"video": l2_normalize(jnp.mean(l2_normalize(x), axis=1)),
                "frames": l2_normalize(e)}

    def embed_cols(self, batch, *, deterministic: bool = True):
        cfg = self.config
        ids = jnp.asarray(batch[TEXT], jnp.int32)
        if ids.ndim != 2 or ids.shape[1] != cfg.num_words:
            raise ValueError(f"X-CLIP expects captions [batch, {cfg.num_words}] "
                             f"(num_words={cfg.num_words}: its word matrices are that size), "
                             f"got shape {tuple(ids.shape)}; set the targets length to "
                             f"{cfg.num_words} or set num_words")
        out = self.clip.encode_text(ids, None, return_token_embeds=True,
                                    deterministic=deterministic)
        return {"sentence": l2_normalize(out["embeds"]), "words": l2_normalize(out["token_embeds"])}

    # -------------------------------------------------------------- similarity
    def similarity_terms(self, rows, cols) -> dict:
        """The four ``[N_texts, N_videos]`` similarities before the logit scale."""
        tau = float(self.config.temperature)
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        video, frames = f32(rows["video"]), f32(rows["frames"])
        sent, words = f32(cols["sentence"]), f32(cols["words"])
        w = {name: f32(getattr(self, name)) for name, _ in MATRICES}
        vs = jnp.einsum("td,de,ve->tv", sent, w["global_mat_weight"], video)
        m = jnp.einsum("twd,vd->twv", words, video)
        vw = jnp.sum(_softmax_mix(m, 1, w["word_logit_weight"], tau) * m, axis=1)
        n = jnp.einsum("td,vfd->tvf", sent, frames)
        sf = jnp.sum(_softmax_mix(n, 2, w["frame_logit_weight"], tau) * n, axis=2)
        big = jnp.einsum("twd,de,vfe->twvf", words, w["local_mat_weight"], frames)
        r = jnp.sum(_softmax_mix(big, 1, w["word_mat_weight"], tau) * big, axis=1)    # [t,v,f]
        c = jnp.sum(_softmax_mix(big, 3, w["frame_mat_weight"], tau) * big, axis=3)   # [t,w,v]
        s2f = jnp.sum(_softmax_mix(r, 2, w["frame_mat_weight2"], tau) * r, axis=2)
        v2w = jnp.sum(_softmax_mix(c, 1, w["word_mat_weight2"], tau) * c, axis=1)
        return {"video_sentence": vs, "video_word": vw, "sentence_frame": sf,
                "frame_word": (s2f + v2w) / 2}

    def similarity(self, rows, cols):
        scale = jnp.exp(jnp.asarray(self.clip.logit_scale, jnp.float32))
        terms = self.similarity_terms(rows, cols)
        return (scale * sum(terms.values()) / 4).T

    def valid(self, batch):
        return jnp.any(jnp.asarray(batch[TEXT]) != 0, axis=-1).astype(jnp.float32)

    def match_key(self, batch):
        """Equal captions are positives of each other's videos in whole-set retrieval."""
        return jnp.asarray(batch[TEXT], jnp.int32)

    def __call__(self, batch, *, deterministic: bool = True):
        return self.similarity(self.embed_rows(batch, deterministic=deterministic),
                               self.embed_cols(batch, deterministic=deterministic))


def example_batch(config, batch: int = 1):
    """``ShapeDtypeStruct`` inputs of one batch at the config's sizes."""
    v = config.clip.vision
    return {FRAMES: jax.ShapeDtypeStruct((batch, config.num_frames, v.image_size, v.image_size,
                                          v.num_channels), jnp.float32),
            TEXT: jax.ShapeDtypeStruct((batch, config.num_words), jnp.int32)}


def abstract_params(config):
    """Boxed ``ShapeDtypeStruct`` tree of :class:`XCLIPDualEncoder` (no allocation)."""
    return jax.eval_shape(lambda b: XCLIPDualEncoder(config).init(jax.random.PRNGKey(0), b),
                          example_batch(config))["params"]
