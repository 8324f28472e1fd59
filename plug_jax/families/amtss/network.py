"""The AMTSS student: one shared encoder, a projection layer per language, one classifier.

``AMTSSStudent.apply({'params': p}, input_ids, lang, token_type_ids, attention_mask)`` ->
``[batch, num_labels]`` float32 logits::

    h      = BertEncoder(input_ids)                 shared by every language
    pooled = tanh(pooler(h[:, 0]))                  as StructBERT's classifier
    x      = pooled + lang_proj[lang](pooled)       the example's language's projection
    logits = classifier(dropout(x))                 shared

``lang_proj`` holds one ``hidden x hidden`` Dense (with bias) per language in one kernel
``[hidden, languages, hidden]``; every example's pooled vector goes through all of them and
the one of its ``lang`` is kept (``languages`` more small matmuls per example, no gathered
``[batch, hidden, hidden]`` kernels). The projection is residual and zero-initialised, so
the student starts as a plain shared classifier and each language learns its own correction;
without the residual the per-language Dense followed by the shared linear classifier would
only amount to a per-language classifier. The ``encoder`` and ``pooler`` parameters are named
as StructBERT's, so a StructBERT checkpoint restores into them (``params_only``).

Parameter tree: ``encoder/...`` (:class:`~plug_jax.families.structbert.network.BertEncoder`),
``pooler/{kernel,bias}``, ``lang_proj/{kernel [H, L, H], bias [L, H]}``,
``classifier/{kernel,bias}``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.families.amtss.config import AMTSSConfig
from plug_jax.families.structbert.network import BertEncoder
from plug_jax.layers.dense import DenseGeneral
from plug_jax.partitioning import axes as A


class AMTSSStudent(nn.Module):
    config: AMTSSConfig

    @nn.compact
    def __call__(self, input_ids, lang, token_type_ids=None, attention_mask=None, *,
                 deterministic: bool = True):
        cfg, enc = self.config, self.config.encoder
        dtype, pdtype = enc.compute_dtype, enc.params_dtype
        init = nn.initializers.normal(enc.initializer_range)
        h = BertEncoder(enc, name="encoder")(input_ids, token_type_ids, attention_mask,
                                             deterministic=deterministic)
        pooled = DenseGeneral(enc.hidden_size, (A.EMBED, A.MLP), dtype=dtype, param_dtype=pdtype,
                              kernel_init=init, name="pooler")(h[:, 0])
        pooled = jnp.tanh(pooled)
        every = DenseGeneral((cfg.num_languages, enc.hidden_size), (A.EMBED, None, A.MLP),
                             dtype=dtype, param_dtype=pdtype, kernel_init=nn.initializers.zeros,
                             name="lang_proj")(pooled)  # [B, L, H]
        lang = jnp.clip(jnp.asarray(lang, jnp.int32).reshape(-1), 0, cfg.num_languages - 1)
        x = pooled + jnp.take_along_axis(every, lang[:, None, None], axis=1)[:, 0]
        x = nn.Dropout(enc.dropout_rate)(x, deterministic=deterministic)
        logits = DenseGeneral(cfg.num_labels, (A.EMBED, None), dtype=dtype, param_dtype=pdtype,
                              kernel_init=init, name="classifier")(x)
        return jnp.asarray(logits, jnp.float32)


def abstract_params(config: AMTSSConfig, batch: int = 1, length: int = 8):
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    lang = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return jax.eval_shape(lambda r, x, g: AMTSSStudent(config).init(r, x, g),
                          jax.random.PRNGKey(0), ids, lang)["params"]


def param_count(config: AMTSSConfig) -> int:
    """Parameters of the student (shapes only, nothing allocated)."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(config)))
    return int(sum(np.prod(x.shape) for x in leaves))
