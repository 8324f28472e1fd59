"""Megatron tensor-parallel checkpoints -> one unsplit state dict (PLUG 27B and similar).

PLUG 27B (AliceMind) is published as 8 Megatron/DeepSpeed tensor-parallel files,
one per model-parallel rank, each holding a slice of every split matrix::

    model/mp_rank_00_model_states.pt ... model/mp_rank_07_model_states.pt   (ModelScope
        damo/nlp_plug_text-generation_27B, ``distributed_plug.py: DistributedPlug``)
    plug_model/28000/mp_rank_0X_model_states.pt                              (AliceMind
        ``PLUG/predict.py`` -> ``generate_plug.get_model_tokenizer(.., 'plug_model/28000')``)

Both loaders (AliceMind ``PLUG/load_checkpoint.py: pre_load`` and ModelScope
``modelscope/utils/nlp/load_checkpoint.py: pre_load``) open
``<dir>/<tag>/mp_rank_{rank:02d}_model_states.pt`` and use ``checkpoint['module']``,
which they load into ``PalmForPreTraining`` (``model.module.model``) -- so the keys
carry no prefix: ``bert.*``, ``cls.*``, ``decoder.decoder.*``.

How every tensor is split (AliceMind ``PLUG/mpu/layers.py``:
``_initialize_affine_weight``, ``ColumnParallelLinear``, ``RowParallelLinear``,
``VocabParallelEmbedding``; ``PLUG/mpu/transformer.py``: ``BertParallelSelfAttention``,
``GPT2ParallelSelfAttention``, ``PalmParallelCrossAttention``; module tree from
``PLUG/model/modeling.py`` and ModelScope ``modelscope/models/nlp/plug/backbone.py``):

* ``column`` -- ``ColumnParallelLinear`` weight ``[out/p, in]`` and bias ``[out/p]``:
  rank r holds output rows ``r*out/p .. (r+1)*out/p``; merge = concatenate on axis 0.
* ``column_qkv`` / ``column_kv`` -- a *strided* ``ColumnParallelLinear``
  (``stride=3`` for the fused ``query_key_value``, ``stride=2`` for the cross-attention
  ``key_value``). ``_initialize_affine_weight`` cuts the master weight ``[Q; K; V]`` into
  ``stride * p`` chunks and gives rank r the chunks ``r, r+p, r+2p``, so a rank holds
  ``[q_r; k_r; v_r]`` and its forward splits its own output in 3
  (``split_tensor_along_last_dim(mixed_x_layer, 3)``). Merge = de-interleave per rank:
  ``[q_0..q_{p-1}; k_0..k_{p-1}; v_0..v_{p-1}]`` (blockwise Q | K | V, head-major inside
  each block -- what the same code computes with p = 1). Biases alike.
* ``row`` -- ``RowParallelLinear`` weight ``[out, in/p]``: merge = concatenate on axis 1.
  Its bias ``[out]`` is not split (replicated).
* ``vocab`` -- ``VocabParallelEmbedding`` weight ``[V/p, d]`` (contiguous vocab ranges,
  ``VocabUtility.vocab_range_from_global_vocab_size``; 21504 / 8 = 2688 rows each) and the
  MLM output bias ``cls.predictions.bias`` (``model_parallel = True``, sized like the local
  embedding): concatenate on axis 0.
* ``replicated`` -- everything else (LayerNorms, position / token-type embeddings, pooler,
  MLM transform, ``seq_relationship``, row-parallel biases): identical on every rank,
  which :func:`merge_megatron_shards` checks.

Loading uses :func:`plug_jax.convert.io.load_torch_weights` (``torch.load(weights_only=True)``):
no pickled code runs. torch is imported only when a file is read.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.gpt3.convert_modelscope import normalize_state_dict

KINDS = ("column", "column_qkv", "column_kv", "row", "vocab", "replicated")
# kind -> (concatenation axis, number of interleaved parts per rank)
_KIND_LAYOUT = {"column": (0, 1), "column_qkv": (0, 3), "column_kv": (0, 2), "row": (1, 1),
                "vocab": (0, 1)}

# Rules are data: (regex searched in the un-prefixed key, kind). The first match wins.
# Key names from PLUG/model/modeling.py and modelscope/models/nlp/plug/backbone.py.
PLUG_RULES: tuple[tuple[str, str], ...] = (
    # VocabParallelEmbedding and the vocab-parallel MLM output bias.
    (r"^bert\.embeddings\.word_embeddings\.weight$", "vocab"),
    (r"^cls\.predictions\.bias$", "vocab"),
    # Encoder BertParallelSelfAttention: fused QKV, ColumnParallelLinear(stride=3); with
    # attn_separate=True (ModelScope config option, False in PLUG) plain query/key/value.
    (r"\.attention\.self\.query_key_value\.(weight|bias)$", "column_qkv"),
    (r"\.attention\.self\.(query|key|value)\.(weight|bias)$", "column"),
    # Encoder BertSelfOutput / BertIntermediate / BertOutput.
    (r"\.attention\.output\.dense\.weight$", "row"),
    (r"^bert\.encoder\.layer\.\d+\.intermediate\.dense\.(weight|bias)$", "column"),
    (r"^bert\.encoder\.layer\.\d+\.output\.dense\.weight$", "row"),
    # Decoder DecodeLayer: GPT2ParallelSelfAttention (fused QKV, stride=3),
    # PalmParallelCrossAttention (query stride 1, fused key_value stride 2), FFN.
    (r"^decoder\.decoder\.layer\.\d+\.attention\.query_key_value\.(weight|bias)$", "column_qkv"),
    (r"^decoder\.decoder\.layer\.\d+\.attention\.dense\.weight$", "row"),
    (r"^decoder\.decoder\.layer\.\d+\.cross_attention\.key_value\.(weight|bias)$", "column_kv"),
    (r"^decoder\.decoder\.layer\.\d+\.cross_attention\.(query|key|value)\.(weight|bias)$",
     "column"),
    (r"^decoder\.decoder\.layer\.\d+\.cross_attention\.dense\.weight$", "row"),
    (r"^decoder\.decoder\.layer\.\d+\.intermediate\.(weight|bias)$", "column"),
    (r"^decoder\.decoder\.layer\.\d+\.output\.weight$", "row"),
    # Everything else is replicated (and checked to be identical on every rank).
    (r".", "replicated"),
)

PLUG_NUM_RANKS = 8  # the published PLUG 27B checkpoint (model_parallel 8)

# mp_rank_03_model_states.pt (DeepSpeed, PLUG) or mp_rank_03/model_optim_rng.pt (Megatron-LM)
_FILE_RE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
_DIR_RE = re.compile(r"^mp_rank_(\d+)$")
_DIR_FILES = ("model_optim_rng.pt", "model_rng.pt")


class MegatronMergeError(ValueError):
    """Tensor-parallel shards that cannot be merged (one-line message)."""


# ------------------------------------------------------------------------------ rules
def _compile(rules: Iterable[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    out = []
    for pattern, kind in rules:
        if kind not in KINDS:
            raise ValueError(f"tensor-parallel rule {pattern!r} has unknown kind {kind!r}; "
                             f"choose one of {', '.join(KINDS)}")
        out.append((re.compile(pattern), kind))
    return out


def classify(key: str, rules: Iterable[tuple[str, str]] = PLUG_RULES) -> str:
    """The split kind of ``key`` under ``rules`` (first matching regex)."""
    for pattern, kind in _compile(rules):
        if pattern.search(key):
            return kind
    raise MegatronMergeError(f"no tensor-parallel rule matches tensor {key!r}; add a rule "
                             f"(regex, kind) for it, e.g. (r'.', 'replicated') as a catch-all")


def _kind(key: str, compiled: list[tuple[re.Pattern, str]]) -> str:
    for pattern, kind in compiled:
        if pattern.search(key):
            return kind
    raise MegatronMergeError(f"no tensor-parallel rule matches tensor {key!r}; add a rule "
                             f"(regex, kind) for it, e.g. (r'.', 'replicated') as a catch-all")


# ------------------------------------------------------------------------------ merge / split
def merge_megatron_shards(shards: Sequence[Mapping[str, Any]],
                          rules: Iterable[tuple[str, str]] = PLUG_RULES, *,
                          replicated_atol: float = 0.0) -> dict[str, np.ndarray]:
    """Merges N tensor-parallel rank state dicts (rank order) into the unsplit state dict.

    Args:
      shards: one flat ``{name: array}`` per rank, rank 0 first (numpy or torch).
      rules: ``(regex, kind)`` pairs, first match wins; kinds are ``column``,
        ``column_qkv``, ``column_kv``, ``row``, ``vocab`` and ``replicated`` (see the
        module docstring). :data:`PLUG_RULES` describes PLUG.
      replicated_atol: tolerance for replicated tensors (0: must be bit-identical).

    Every rank must have the same names, split tensors the same shape on every rank, and
    replicated tensors the same values; otherwise one :class:`MegatronMergeError` line
    names the tensor and the ranks. The merged arrays keep the shards' dtype (torch
    bfloat16 becomes float32).
    """
    return _merge(list(shards), rules, replicated_atol, consume=False)


def _merge(shards: list, rules: Iterable[tuple[str, str]], replicated_atol: float, *,
           consume: bool) -> dict[str, np.ndarray]:
    """The merge; ``consume=True`` pops each tensor from the shard dicts once merged."""
    if not shards:
        raise MegatronMergeError("no tensor-parallel shards to merge")
    compiled = _compile(rules)
    keys = set(shards[0])
    for r, s in enumerate(shards[1:], 1):
        if set(s) != keys:
            k = sorted(keys ^ set(s))[0]
            lacking, having = (r, 0) if k in keys else (0, r)
            raise MegatronMergeError(f"rank {lacking} lacks tensor {k!r} that rank {having} has; "
                                     f"all ranks must come from the same checkpoint")
    p = len(shards)
    out: dict[str, np.ndarray] = {}
    for k in sorted(keys):
        kind = _kind(k, compiled)
        parts = [_keep_dtype(s.pop(k) if consume else s[k]) for s in shards]
        shape = parts[0].shape
        for r, a in enumerate(parts[1:], 1):
            if a.shape != shape:
                raise MegatronMergeError(f"{kind} tensor {k!r} has shape {a.shape} on rank {r} "
                                         f"but {shape} on rank 0")
        if kind == "replicated":
            for r, a in enumerate(parts[1:], 1):
                same = (np.array_equal(a, parts[0]) if replicated_atol == 0 else
                        np.allclose(a, parts[0], rtol=0, atol=replicated_atol))
                if not same:
                    raise MegatronMergeError(
                        f"replicated tensor {k!r} differs between rank 0 and rank {r}; the "
                        f"shards are from different checkpoints, or the tensor is split and "
                        f"needs a tensor-parallel rule")
            out[k] = parts[0]
            continue
        axis, n_parts = _KIND_LAYOUT[kind]
        if len(shape) <= axis:
            raise MegatronMergeError(f"{kind} tensor {k!r} has shape {shape}; it needs an axis "
                                     f"{axis} to concatenate on")
        if shape[axis] % n_parts:
            raise MegatronMergeError(f"{kind} tensor {k!r} has {shape[axis]} rows per rank, not "
                                     f"divisible into {n_parts} interleaved parts")
        if n_parts == 1:
            out[k] = np.concatenate(parts, axis=axis)
        else:  # rank r holds [part_0 of r; part_1 of r; ...] -> [part_0 of all ranks; ...]
            pieces = [np.split(a, n_parts, axis=axis) for a in parts]
            out[k] = np.concatenate([pieces[r][j] for j in range(n_parts) for r in range(p)],
                                    axis=axis)
    return out


def split_tensor_parallel(state_dict: Mapping[str, Any], n: int,
                          rules: Iterable[tuple[str, str]] = PLUG_RULES
                          ) -> list[dict[str, np.ndarray]]:
    """Splits an unsplit state dict into ``n`` Megatron rank dicts (inverse of the merge).

    Use it to reshard weights back to a Megatron/DeepSpeed layout (save each with
    ``torch.save({'module': {k: torch.from_numpy(v) ...}}, f'mp_rank_{r:02d}_model_states.pt')``).
    Replicated tensors are copied to every rank; split dimensions must divide by
    ``n`` (times 3 / 2 for ``column_qkv`` / ``column_kv``).
    """
    if n < 1:
        raise ValueError(f"split_tensor_parallel: n must be >= 1, got {n}")
    compiled = _compile(rules)
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    for k, v in state_dict.items():
        a = _keep_dtype(v)
        kind = _kind(k, compiled)
        if kind == "replicated":
            for r in range(n):
                out[r][k] = a
            continue
        axis, n_parts = _KIND_LAYOUT[kind]
        if a.ndim <= axis or a.shape[axis] % (n * n_parts):
            raise MegatronMergeError(f"{kind} tensor {k!r} of shape {a.shape} cannot be split "
                                     f"{n} ways along axis {axis}"
                                     + (f" in {n_parts} parts" if n_parts > 1 else ""))
        blocks = [np.split(b, n, axis=axis) for b in np.split(a, n_parts, axis=axis)]
        for r in range(n):
            out[r][k] = np.concatenate([blocks[j][r] for j in range(n_parts)], axis=axis)
    return out


# ------------------------------------------------------------------------------ loading
def find_megatron_shards(path: str | os.PathLike) -> list[str]:
    """The rank files of a Megatron/DeepSpeed checkpoint directory, in rank order.

    Looks in ``path``, then ``path/model`` (ModelScope), then ``path/<tag>`` where
    ``<tag>`` is read from a DeepSpeed ``latest`` file or is the only sub-directory
    holding rank files (AliceMind ``plug_model/28000``). Accepts
    ``mp_rank_XX_model_states.pt`` files and ``mp_rank_XX/model_optim_rng.pt`` dirs.
    """
    d = os.fspath(path)
    if not os.path.isdir(d):
        raise cio.WeightsLoadError(f"checkpoint directory {d} does not exist")
    candidates = [d, os.path.join(d, "model")]
    latest = os.path.join(d, "latest")
    if os.path.isfile(latest):
        with open(latest, encoding="utf-8") as f:
            candidates.append(os.path.join(d, f.read().strip()))
    for c in candidates:
        if os.path.isdir(c) and _rank_entries(c):
            return _ranked(c)
    subs = [os.path.join(d, s) for s in sorted(os.listdir(d))
            if os.path.isdir(os.path.join(d, s)) and _rank_entries(os.path.join(d, s))]
    if len(subs) == 1:
        return _ranked(subs[0])
    if len(subs) > 1:
        names = ", ".join(os.path.basename(s) for s in subs[:3])
        raise cio.WeightsLoadError(f"several checkpoints in {d} ({names}); pass the directory "
                                   f"of the one to merge")
    raise cio.WeightsLoadError(f"no tensor-parallel shards in {d}: expected "
                               f"mp_rank_XX_model_states.pt files (or mp_rank_XX/"
                               f"model_optim_rng.pt) there or in {os.path.join(d, 'model')}")


def _rank_entries(d: str) -> list[str]:
    return [n for n in os.listdir(d) if n.startswith("mp_rank_")]


def _ranked(d: str) -> list[str]:
    """Rank-ordered files of one directory (duplicates and odd names are errors)."""
    found: dict[int, str] = {}
    for name in sorted(_rank_entries(d)):
        full = os.path.join(d, name)
        m_file, m_dir = _FILE_RE.match(name), _DIR_RE.match(name)
        if m_file and os.path.isfile(full):
            rank, file = int(m_file.group(1)), full
        elif m_dir and os.path.isdir(full):
            inner = [os.path.join(full, f) for f in _DIR_FILES
                     if os.path.isfile(os.path.join(full, f))]
            if not inner:
                raise cio.WeightsLoadError(f"{full} holds no {' or '.join(_DIR_FILES)}")
            rank, file = int(m_dir.group(1)), inner[0]
        else:
            raise cio.WeightsLoadError(
                f"unexpected file {full}: tensor-parallel shards must be named "
                f"mp_rank_XX_model_states.pt or mp_rank_XX/model_optim_rng.pt")
        if rank in found:
            raise cio.WeightsLoadError(f"rank {rank} appears twice in {d} "
                                       f"({os.path.basename(found[rank])}, {name})")
        found[rank] = file
    return [found[r] for r in sorted(found)]


def _rank_of(path: str) -> int:
    name, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
    m = _FILE_RE.match(name) or (_DIR_RE.match(parent) if name in _DIR_FILES else None)
    if not m:
        raise cio.WeightsLoadError(
            f"unexpected file {path}: tensor-parallel shards must be named "
            f"mp_rank_XX_model_states.pt or mp_rank_XX/model_optim_rng.pt")
    return int(m.group(1))


def _check_ranks(files: list[str], num_ranks: int | None, where: str) -> list[str]:
    ranks = {}
    for f in files:
        r = _rank_of(f)
        if r in ranks:
            raise cio.WeightsLoadError(f"rank {r} given twice ({ranks[r]}, {f})")
        ranks[r] = f
    n = num_ranks if num_ranks is not None else max(ranks) + 1
    missing = [r for r in range(n) if r not in ranks]
    if missing:
        names = ", ".join(f"mp_rank_{r:02d}" for r in missing[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise cio.WeightsLoadError(f"{names}{more} missing in {where}: a {n}-way tensor-parallel "
                                   f"checkpoint needs all ranks 00..{n - 1:02d}")
    extra = [r for r in ranks if r >= n]
    if extra:
        raise cio.WeightsLoadError(f"unexpected file {ranks[min(extra)]}: rank {min(extra)} is "
                                   f"beyond the {n} ranks expected")
    return [ranks[r] for r in range(n)]


def _load_one(path: str, allow_globals: Sequence[Any]) -> Mapping:
    if not allow_globals:
        return cio.load_weights_file(path)
    import torch
    with torch.serialization.safe_globals(list(allow_globals)):
        return cio.load_weights_file(path)


def load_megatron_shards(path_or_files: str | os.PathLike | Sequence[str | os.PathLike], *,
                         num_ranks: int | None = None, dtype: Any = np.float32,
                         allow_globals: Sequence[Any] = ()) -> list[dict[str, np.ndarray]]:
    """Loads the rank state dicts of a Megatron/DeepSpeed tensor-parallel checkpoint.

    Args:
      path_or_files: a checkpoint directory (see :func:`find_megatron_shards`) or the
        rank files themselves (any order; the rank is read from the name).
      num_ranks: the expected tensor-parallel size (8 for PLUG); by default one more
        than the highest rank found, so a missing last rank goes unnoticed unless the
        file records ``mp_world_size`` (DeepSpeed does) or ``num_ranks`` is given.
      dtype: numpy dtype of the returned arrays (float32 by default; ``None`` keeps
        the stored dtype, bfloat16 becoming float32). float32 doubles the memory of an
        fp16 checkpoint: PLUG 27B needs about 108 GB as float32, 54 GB with float16.
      allow_globals: extra classes ``torch.load(weights_only=True)`` may rebuild (for
        example ``argparse.Namespace`` in a full DeepSpeed checkpoint); nothing else in
        a file is ever unpickled.

    Each file is read with ``torch.load(weights_only=True, map_location='cpu')``; the
    ``module`` (DeepSpeed) / ``model`` / ``state_dict`` entry is unwrapped, nested dicts
    are flattened with ``.`` and ``module.`` / ``model.`` name prefixes are dropped.
    Errors (missing rank, unexpected file, unsafe or corrupt file, a rank count that
    disagrees with ``mp_world_size``) are one :class:`~plug_jax.convert.io.WeightsLoadError`
    line.
    """
    if isinstance(path_or_files, (str, os.PathLike)):
        p = os.fspath(path_or_files)
        files = [p] if os.path.isfile(p) else find_megatron_shards(p)
    else:
        files = [os.fspath(f) for f in path_or_files]
        if not files:
            raise cio.WeightsLoadError("no tensor-parallel shard files given")
    where = os.path.dirname(files[0]) or "."
    if _DIR_RE.match(os.path.basename(where)):  # mp_rank_XX/model_optim_rng.pt
        where = os.path.dirname(where) or "."
    files = _check_ranks(files, num_ranks, where)
    shards = []
    for r, f in enumerate(files):
        raw = _load_one(f, allow_globals)
        world = raw.get("mp_world_size")
        if isinstance(world, int) and world != len(files):
            raise cio.WeightsLoadError(f"{f} records mp_world_size={world} but {len(files)} rank "
                                       f"files were found in {where}; pass all "
                                       f"mp_rank_XX files of one checkpoint")
        sd = normalize_state_dict(raw)
        shard = {}
        for k, v in sd.items():
            if not (hasattr(v, "detach") or isinstance(v, np.ndarray)):
                raise cio.WeightsLoadError(f"{f}: entry {k!r} is a {type(v).__name__}, not a "
                                           f"tensor; the state dict must hold tensors only")
            shard[k] = cio.to_numpy(v, dtype) if dtype is not None else _keep_dtype(v)
        if not shard:
            raise cio.WeightsLoadError(f"{f} holds no tensors (rank {r})")
        shards.append(shard)
    return shards


def _keep_dtype(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        import torch
        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            t = t.to(torch.float32)
        return t.numpy()
    return np.asarray(x)


def merge_plug_checkpoint(path: str | os.PathLike | Sequence[str | os.PathLike], *,
                          num_ranks: int | None = PLUG_NUM_RANKS,
                          rules: Iterable[tuple[str, str]] = PLUG_RULES,
                          dtype: Any = np.float32, allow_globals: Sequence[Any] = (),
                          replicated_atol: float = 0.0) -> dict[str, np.ndarray]:
    """The unsplit PLUG state dict from its 8 published tensor-parallel files.

    ``path`` is the model directory (``model/mp_rank_0X_model_states.pt`` of ModelScope
    ``damo/nlp_plug_text-generation_27B``, or AliceMind's ``plug_model/28000/``), the
    directory holding the rank files, or the list of rank files. Returns
    ``{name: np.ndarray}`` with PLUG's own names (``bert.embeddings.word_embeddings.weight
    [21504, 8192]``, ``bert.encoder.layer.{i}.attention.self.query_key_value.weight
    [3*8192, 8192]`` as blockwise Q | K | V, ``decoder.decoder.layer.{i}...``, ...) and no
    ``module.`` / ``model.`` prefix. ``num_ranks=None`` accepts any tensor-parallel size.
    See :func:`load_megatron_shards` and :func:`merge_megatron_shards` for the other
    arguments and the checks.
    """
    shards = load_megatron_shards(path, num_ranks=num_ranks, dtype=dtype,
                                  allow_globals=allow_globals)
    # consume: each rank's copy is dropped once merged, so the peak stays near one model.
    return _merge(shards, rules, replicated_atol, consume=True)


__all__ = ["KINDS", "PLUG_NUM_RANKS", "PLUG_RULES", "MegatronMergeError", "classify",
           "find_megatron_shards", "load_megatron_shards", "merge_plug_checkpoint",
           "merge_megatron_shards", "split_tensor_parallel"]
