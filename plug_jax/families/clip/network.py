"""CLIP as a dual encoder (the ``'dual_encoder'`` network of :mod:`plug_jax.models.dual_encoder`).

Rows are images (``batch['image']`` float ``[B, H, W, C]``, normalised pixels) or videos
(``batch['frames']`` ``[B, T, H, W, C]``: every frame through the image tower, the projected
frame embeddings averaged over time, CLIP4Clip's parameter-free "meanP" video feature, the
baseline X-CLIP adds its temporal transformer to), columns are
captions (``batch['decoder_target_tokens']`` ``[B, L]``, 0 = padding, ending in the
end-of-sequence id that the text tower pools). The parameter tree is
:class:`plug_jax.layers.clip.CLIPModel`'s, so transformers ``CLIPModel`` checkpoints load
unchanged (:mod:`plug_jax.convert.hf_clip`).
"""
from __future__ import annotations

import jax.numpy as jnp

from plug_jax.layers.clip import CLIPModel, l2_normalize

TEXT = "decoder_target_tokens"


class CLIPDualEncoder(CLIPModel):
    side_names = ("image", "text")

    def embed_rows(self, batch, *, deterministic: bool = True):
        if "frames" in batch:  # [B, T, H, W, C] -> mean of the frame embeddings
            frames = self.encode_image(batch["frames"], deterministic=deterministic)["embeds"]
            return l2_normalize(jnp.mean(l2_normalize(frames), axis=1))
        return l2_normalize(self.encode_image(batch["image"], deterministic=deterministic)
                            ["embeds"])

    def embed_cols(self, batch, *, deterministic: bool = True):
        ids = jnp.asarray(batch[TEXT], jnp.int32)
        return l2_normalize(self.encode_text(ids, ids != 0, deterministic=deterministic)
                            ["embeds"])

    def similarity(self, rows, cols):
        scale = jnp.exp(jnp.asarray(self.logit_scale, jnp.float32))
        return scale * jnp.einsum("ip,tp->it", rows, cols)

    def valid(self, batch):
        return jnp.any(jnp.asarray(batch[TEXT]) != 0, axis=-1).astype(jnp.float32)

    def match_key(self, batch):
        """Equal captions are positives of each other's images in whole-set retrieval."""
        return jnp.asarray(batch[TEXT], jnp.int32)

    def __call__(self, batch, *, deterministic: bool = True):
        return self.similarity(self.embed_rows(batch, deterministic=deterministic),
                               self.embed_cols(batch, deterministic=deterministic))


def abstract_params(config):
    """Boxed ``ShapeDtypeStruct`` tree of the family network (``ClipConfig``)."""
    import jax
    v, t = config.clip.vision, config.clip.text
    batch = {"image": jax.ShapeDtypeStruct((1, v.image_size, v.image_size, v.num_channels),
                                           jnp.float32),
             TEXT: jax.ShapeDtypeStruct((1, t.max_len), jnp.int32)}
    return jax.eval_shape(lambda b: CLIPDualEncoder(config.clip).init(jax.random.PRNGKey(0), b),
                          batch)["params"]
