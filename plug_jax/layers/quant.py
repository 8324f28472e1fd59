"""Weight-only low precision for decoding: bfloat16 weights, or int8 weights with one float32
scale per output channel, dequantized inside the matmul.

Batch-1 decoding reads every weight once per token and does two FLOPs per weight read, so
it is bound by memory bandwidth, not arithmetic (docs/decoding.md "Bandwidth"). Storing
the matmul weights in fewer bytes is the way to go faster:

* ``bfloat16``: the kernel is stored in bf16 and cast to the compute dtype inside the
  step (2 bytes per weight instead of 4).
* ``int8``: ``w ~= q * scale`` with ``q`` int8 and ``scale`` float32 per output channel
  (symmetric, ``scale = max|w| / 127`` over the contracted axes). The layer computes
  ``(x @ q) * scale``: the int8 kernel is cast to the compute dtype inside the matmul and
  the scale is applied to the output, which is exact for per-output-channel scales. 1 byte
  per weight plus 4 bytes per output channel.

Activations, norms, biases, the KV cache and the logits stay in the compute dtype
(float32 by default): this is weight-only quantization, no calibration data needed.

**Which weights.** Exactly the kernels of :class:`~plug_jax.layers.dense.DenseGeneral` and
the tables of :class:`~plug_jax.layers.embeddings.Embed` (lookup and tied ``attend``):
:func:`quantization_targets` finds them by tracing the model's own initialisation
abstractly with :func:`flax.linen.intercept_methods`, so a layer that reads its kernel some
other way (a vision patch stem, a convolution, MoE experts, a custom output table) is never
handed weights it cannot read; it stays float32. Scanned layer stacks (a leading layer
axis) get one scale row per layer.

**Storage.** A quantized layer holds its kernel (``kernel`` / ``embedding``) in bf16 or
int8, and for int8 a float32 sibling ``kernel_scale`` / ``embedding_scale``. The layers
read whatever dtype they find; the scale's presence marks an int8 kernel. Conversion
happens at load time from any float checkpoint (:func:`quantize_params`); a quantized
tree can also be saved and restored as it is.

**CPU.** XLA's CPU backend (jax 0.10.2) has no fast matmul for bf16 or int8 operands: it
folds a ``convert`` into the ``dot`` that consumes it and runs the dot as a generic loop,
10-30x slower than its float32 GEMV. On CPU the cast is therefore kept out of the dot by an
``optimization_barrier``, and XLA hoists it out of the decoding loop: the float32 copy is
made once per decode call and the steps read it, so CPU decoding runs at float32 speed
(measured; casting inside every step instead was 2.5x slower than float32 weights). On CPU
low precision saves the memory and disk of the stored weights, not decoding time
(docs/decoding.md "Weight-only low precision"). On GPU / TPU no barrier is placed, so XLA
fuses the dequantization into the matmul and each step reads only the narrow weights. The
choice is made per lowering platform (``jax.lax.platform_dependent``), so an export
lowered for CPU and CUDA carries both.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

WEIGHTS_DTYPES = ("float32", "bfloat16", "int8")
KERNEL_SCALE = "kernel_scale"
EMBEDDING_SCALE = "embedding_scale"
INT8_MAX = 127.0


def check_weights_dtype(weights_dtype: str | None) -> str:
    """The canonical name (``float32`` / ``bfloat16`` / ``int8``) or one clear error."""
    name = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "float": "float32",
            None: "float32"}.get(weights_dtype, weights_dtype)
    if name not in WEIGHTS_DTYPES:
        raise ValueError(f"unknown weights dtype {weights_dtype!r}; fix: choose one of "
                         f"{', '.join(WEIGHTS_DTYPES)} (weight-only: activations stay float32)")
    return name


def matmul_operand(w: jax.Array, dtype: Any, x: jax.Array | None = None):
    """``(w, x)`` ready for a dot in the compute dtype: a narrower stored weight (bf16, int8)
    is cast, and ``x`` (the activation, optional) is returned in ``dtype``.

    On CPU the cast is kept out of the dot by an ``optimization_barrier`` (module
    docstring, "CPU"). XLA may then hoist the cast out of a decoding loop (the float copy
    lives for one decode call): on this backend that is faster than casting inside every
    step, which was measured 2.5x slower than float32 weights (docs/decoding.md)."""
    w = jnp.asarray(w)
    dtype = jnp.dtype(dtype)
    if x is not None:
        x = jnp.asarray(x, dtype)
    if w.dtype == dtype:
        return w, x
    # Chosen per lowering platform, so a multi-platform export (plug-export) gets both.
    w = jax.lax.platform_dependent(
        w, cpu=lambda v: jax.lax.optimization_barrier(v.astype(dtype)),
        default=lambda v: v.astype(dtype))
    return w, x


def float_weight(node: Mapping, key: str = "kernel", dtype: Any = jnp.float32) -> jax.Array:
    """``node[key]`` as a float array in ``dtype``, dequantized when ``node`` holds its int8
    scale (``kernel_scale``: per output channel, the kernel's trailing axes;
    ``embedding_scale``: per row). For code that reads a layer's weights directly instead of
    calling the layer (tied embedding tables, attention probes), so that it sees the same
    weights the layer computes with."""
    from flax.core import meta
    w = jnp.asarray(meta.unbox(node[key])).astype(dtype)
    scale = node.get(f"{key}_scale") if hasattr(node, "get") else None
    if scale is None:
        return w
    scale = jnp.asarray(meta.unbox(scale), dtype)
    return w * (scale[..., None] if key == "embedding" else scale)


# ------------------------------------------------------------------ which weights
def quantization_targets(init_fn) -> dict[tuple[str, ...], tuple]:
    """``{param path: spec}`` of every ``DenseGeneral`` / ``Embed`` that ``init_fn`` (a
    zero-argument function running the model's ``init``, e.g. ``lambda:
    model.init_params(rng, batch)``) calls. ``spec`` is ``('dense', n_in, n_out)`` (the
    kernel's contracted and output axis counts) or ``('embed',)``. Traced abstractly:
    nothing is allocated."""
    from flax import linen as nn

    found: dict[tuple[str, ...], tuple] = {}

    def count(axes) -> int:
        return 1 if isinstance(axes, int) else len(tuple(axes))

    def spy(next_fun, args, kwargs, context):
        # The layers that read quantized weights say so with a class attribute (DenseGeneral:
        # "dense", Embed: "embed"); importing them here would make an import cycle.
        module, kind = context.module, getattr(type(context.module), "QUANT_KIND", None)
        if kind == "dense" and context.method_name == "__call__":
            found[tuple(module.path)] = ("dense", count(module.axis), count(module.features))
        elif kind == "embed" and context.method_name in ("__call__", "attend"):
            found[tuple(module.path)] = ("embed",)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        jax.eval_shape(init_fn)
    return found


# ------------------------------------------------------------------ conversion
def _int8(w: np.ndarray, reduce_axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(w, np.float32)
    amax = np.max(np.abs(w), axis=reduce_axes, keepdims=True)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, np.squeeze(scale, axis=reduce_axes)


def _lookup(tree, path):
    node = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def quantize_params(params, weights_dtype: str, targets: Mapping[tuple[str, ...], tuple]):
    """A copy of ``params`` (boxed or not; returned unboxed, as numpy) with the ``targets``'
    weights stored in ``weights_dtype`` (``float32``: returned unchanged but unboxed).

    A weight that is already quantized (int8 with its scale, or bf16 when asked for bf16)
    is kept as it is; asking for bf16 or float32 from int8 weights is refused (the
    precision is gone)."""
    from flax.core import meta

    weights_dtype = check_weights_dtype(weights_dtype)
    params = meta.unbox(params)
    if weights_dtype == "float32":
        _refuse_quantized(params, weights_dtype)
        return params
    out = _to_dict(params)  # fresh nested dicts: the caller's tree is not modified
    for path, spec in sorted(targets.items()):
        node = _lookup(out, path)
        if node is None:
            continue  # e.g. a head the checkpoint does not carry
        key, scale_key = (("kernel", KERNEL_SCALE) if spec[0] == "dense"
                          else ("embedding", EMBEDDING_SCALE))
        if key not in node:
            continue
        w = node[key]
        if scale_key in node or np.dtype(w.dtype) == np.int8:
            if weights_dtype != "int8":
                raise ValueError(f"{'/'.join(path)} holds int8 weights; fix: load a float "
                                 f"checkpoint to run with {weights_dtype} weights")
            continue
        if weights_dtype == "bfloat16":
            node[key] = np.asarray(jnp.asarray(w, jnp.bfloat16))
        else:
            w = np.asarray(w, np.float32)
            if spec[0] == "dense":
                _, n_in, n_out = spec
                lead = w.ndim - n_in - n_out  # 1 for a scanned layer stack
                if lead not in (0, 1):
                    raise ValueError(f"{'/'.join(path)}/kernel has shape {w.shape}, not "
                                     f"{n_in} contracted + {n_out} output axes")
                reduce_axes = tuple(range(lead, lead + n_in))
            else:
                reduce_axes = (w.ndim - 1,)  # one scale per row: per output of ``attend``
            node[key], node[scale_key] = _int8(w, reduce_axes)
    return out


def _to_dict(tree):
    if isinstance(tree, Mapping):
        return {k: _to_dict(v) for k, v in tree.items()}
    return np.asarray(tree) if isinstance(tree, jax.Array) else tree


def _refuse_quantized(params, weights_dtype):
    flat = jax.tree_util.tree_leaves_with_path(params)
    for path, leaf in flat:
        if getattr(leaf, "dtype", None) == np.int8:
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            raise ValueError(f"{name} holds int8 weights; fix: load a float checkpoint to run "
                             f"with {weights_dtype} weights")


def weights_dtype_of(params) -> str:
    """``int8`` if any weight carries a scale, else ``bfloat16`` if any matmul weight is
    bf16, else ``float32``."""
    names = {str(getattr(p[-1], "key", p[-1])) for p, _ in
             jax.tree_util.tree_leaves_with_path(params)}
    if KERNEL_SCALE in names or EMBEDDING_SCALE in names:
        return "int8"
    dtypes = {np.dtype(getattr(x, "dtype", np.float32)) for x in jax.tree_util.tree_leaves(params)}
    return "bfloat16" if np.dtype(jnp.bfloat16) in dtypes else "float32"


def param_bytes(params) -> int:
    """Bytes of all leaves of ``params`` as stored."""
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape))
                   for x in jax.tree_util.tree_leaves(params)))


def quantize_model_params(model, params, batch, weights_dtype: str, rng=None):
    """:func:`quantize_params` with the targets of a task model (``model.init_params(rng,
    batch)``, the trainer's interface; ``batch`` as the StateBuilder's dummy batch)."""
    weights_dtype = check_weights_dtype(weights_dtype)
    if weights_dtype == "float32":
        return params
    rng = jax.random.PRNGKey(0) if rng is None else rng
    targets = quantization_targets(lambda: model.init_params(rng, batch))
    return quantize_params(params, weights_dtype, targets)
