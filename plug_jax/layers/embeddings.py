"""Token and learned-position embeddings, with a tied ``attend`` for output logits."""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import jax.numpy as jnp
from flax import linen as nn

from plug_jax.layers import quant
from plug_jax.partitioning import axes as A

default_embed_init = nn.initializers.normal(stddev=0.02)


class Embed(nn.Module):
    """A lookup table ``[num_embeddings, features]``.

    ``__call__(ids)`` gathers rows; ``attend(x)`` multiplies by the table's
    transpose, which is how tied output projections compute logits.
    """

    QUANT_KIND: ClassVar[str] = "embed"  # reads bf16 / int8 tables (layers/quant.py)

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
        rows = jnp.take(self.embedding, ids, axis=0).astype(self.dtype)
        scale = self._scale()
        if scale is not None:  # int8 table (layers/quant.py): one scale per row
            rows = rows * jnp.take(scale, ids, axis=0)[..., None].astype(self.dtype)
        return rows

    def _scale(self):
        if self.has_variable("params", quant.EMBEDDING_SCALE):
            return self.get_variable("params", quant.EMBEDDING_SCALE)
        return None

    def attend(self, x):
        """Returns ``x @ embedding.T`` (logits over the table's rows)."""
        table, x = quant.matmul_operand(self.embedding, self.dtype, x)
        logits = jnp.einsum("...d,vd->...v", x, table)
        scale = self._scale()
        return logits if scale is None else logits * jnp.asarray(scale, self.dtype)
