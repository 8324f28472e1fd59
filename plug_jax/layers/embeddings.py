"""Token and learned-position embeddings, with a tied ``attend`` for output logits."""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
from flax import linen as nn

from plug_jax.partitioning import axes as A

default_embed_init = nn.initializers.normal(stddev=0.02)


class Embed(nn.Module):
    """A lookup table ``[num_embeddings, features]``.

    ``__call__(ids)`` gathers rows; ``attend(x)`` multiplies by the table's
    transpose, which is how tied output projections compute logits.
    """

    num_embeddings: int
    features: int
    axes: Sequence[str | None] = (A.VOCAB, A.EMBED)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    embedding_init: Any = default_embed_init

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(self.embedding_init, tuple(self.axes)),
            (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids):
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"Embed expects integer ids, got dtype {ids.dtype}")
        table = jnp.asarray(self.embedding, self.dtype)
        return jnp.take(table, ids, axis=0)

    def attend(self, x):
        """Returns ``x @ embedding.T`` (logits over the table's rows)."""
        table = jnp.asarray(self.embedding, self.dtype)
        return jnp.einsum("...d,vd->...v", jnp.asarray(x, self.dtype), table)
