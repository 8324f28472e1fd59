"""The training loop, evaluation and inference entry points (called by ``plug_jax.main``).

One readable loop: build the mesh and partitioner, the model state directly sharded,
the data iterator, restore whatever ``MODEL_DIR`` (or ``init_checkpoint``) holds, then
``train_step`` until ``train_steps`` with periodic logging, evaluation and checkpoints.

Every argument is a plain Python value so the functions can be bound from gin (the run
files in ``gin_configs/runs/`` do that) or called from a notebook.

Guarantees:
* resume: the checkpoint holds params, optimizer state, step and the data position;
  the RNG of step ``s`` is ``fold_in(PRNGKey(seed), s)``, so a resumed run repeats the
  uninterrupted run bit for bit;
* SIGTERM (preemption) saves a checkpoint of the current step, waits for it, and the
  process exits 0; a later start with the same ``MODEL_DIR`` resumes from it;
* a non-finite loss or gradient norm never reaches the parameters (see
  :mod:`plug_jax.trainer.step`); with ``nonfinite='stop'`` the run stops at once with a
  message and the last checkpoint written is the last good state;
* bad input (mesh vs. batch, a checkpoint of another model, a damaged checkpoint) raises
  a one-line error before anything in ``MODEL_DIR`` is changed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.convert.io import flatten_tree, unflatten_tree
from plug_jax.partitioning import Partitioner, create_mesh
from plug_jax.partitioning.mesh import mesh_shape
from plug_jax.trainer import checkpointing as ckpt_lib
from plug_jax.trainer.metrics import MetricsLogger, format_duration, measure_matmul_flops
from plug_jax.trainer.state import TrainState
from plug_jax.trainer.step import finalize_eval, make_eval_step, make_train_step

RESTORE_MODES = ("full", "params_only", "params_fresh_opt")
NONFINITE_POLICIES = ("skip", "stop")


class TrainError(RuntimeError):
    """A one-line, user-facing failure of a run (non-finite stop, bad settings)."""


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Which seqio task or mixture feeds a run, and how it is batched."""

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    split: str = "train"
    batch_size: int = 8  # global batch size
    shuffle: bool = True
    seed: int = 0
    pack: bool = True
    # Feature converter (plug_jax.data.features registry): 'decoder' (decoder-only LM),
    # 'encdec' (encoder-decoder: PALM, PLUG; lengths {'inputs', 'targets'}), 'encdec_mlm'
    # (encdec + the encoder's MLM targets: PLUG stage 2), 'prefix_lm', 'encoder' (one
    # example per row, StructBERT; lengths {'inputs'}), 'image_text' (lengths
    # {'image': (H, W, C), 'targets'}), 'video_text' ({'frames': (T, H, W, C), 'targets'}).
    converter: str = "decoder"
    # Index-based input (plug_jax.data.indexed: each process reads only its own examples,
    # resume in O(1)): None uses it for training streams of tasks that support it; False
    # keeps the stream pipeline. examples_per_batch: the examples of one global batch
    # (None: B without packing, else estimated from the task's mean lengths).
    index_based: bool | None = None
    examples_per_batch: int | None = None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh degrees (``('data', 'fsdp', 'expert', 'model')``, one ``-1`` fills) and rules."""

    ici: Sequence[int] = (1, -1, 1, 1)
    dcn: Sequence[int] = (1, 1, 1, 1)
    rules: str = "fsdp"
    num_devices: int | None = None  # use only the first N devices (None: all)

    def partitioner(self) -> Partitioner:
        devices = jax.devices()
        if self.num_devices is not None:
            if not 0 < self.num_devices <= len(devices):
                raise TrainError(f"MeshConfig.num_devices={self.num_devices} but "
                                 f"{len(devices)} devices exist; fix: choose 1..{len(devices)}")
            devices = devices[:self.num_devices]
        return Partitioner(create_mesh(tuple(self.ici), tuple(self.dcn), devices), self.rules)


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise TrainError(f"{name}={value!r} is not one of {list(choices)}; fix: choose one of "
                         f"them (gin: --gin.{name}=...)")


def _batch_iterator(cfg: DatasetConfig, *, repeat: bool, start_step: int = 0,
                    shuffle: bool | None = None, split: str | None = None,
                    total_examples: int | None = None, data_state: Mapping | None = None):
    from plug_jax.data import curriculum
    from plug_jax.data.pipeline import get_batch_iterator
    if repeat and curriculum.is_curriculum(cfg.mixture_or_task_name):
        if data_state and "curriculum" in data_state:  # keep the saved stage boundaries
            return curriculum.CurriculumIterator.from_state(
                data_state, process_index=jax.process_index(),
                process_count=jax.process_count())
        return curriculum.CurriculumIterator(
            cfg.mixture_or_task_name, dict(cfg.task_feature_lengths), split or cfg.split,
            cfg.batch_size, total_examples=total_examples,
            shuffle=cfg.shuffle if shuffle is None else shuffle, seed=cfg.seed, pack=cfg.pack,
            process_index=jax.process_index(), process_count=jax.process_count(),
            start_step=start_step, converter=cfg.converter, index_based=cfg.index_based)
    name = cfg.mixture_or_task_name
    if curriculum.is_curriculum(name):  # evaluation of a curriculum: its final stage's data
        name = curriculum.get_curriculum(name).stages[-1].mixture_or_task_name
    index_based, per_batch = ((cfg.index_based, cfg.examples_per_batch) if repeat
                              else (None, None))
    if repeat and data_state:  # resume the way the checkpoint's position was written
        index_based = bool(data_state.get("index_based", False))
        per_batch = data_state.get("examples_per_batch")
    return get_batch_iterator(
        name, dict(cfg.task_feature_lengths), split or cfg.split,
        cfg.batch_size, shuffle=cfg.shuffle if shuffle is None else shuffle, seed=cfg.seed,
        repeat=repeat, pack=cfg.pack, process_index=jax.process_index(),
        process_count=jax.process_count(), start_step=start_step, converter=cfg.converter,
        index_based=index_based, examples_per_batch=per_batch)


def _shard_batch(part: Partitioner, batch: dict) -> dict:
    """This process's rows of a global batch -> global arrays with the batch sharding.

    One process: ``part.shard_batch``. Several: the data iterator gives process ``p`` rows
    ``p*B/P:(p+1)*B/P`` of global batch ``B``; those must be exactly the rows that the
    process's devices hold under the batch sharding (true for meshes whose devices are
    ordered by process, as ``create_mesh`` orders them), else the global batch would differ
    from the one-process run.
    """
    if jax.process_count() == 1:
        return part.shard_batch(batch)
    out = {}
    for name, x in batch.items():
        x = np.asarray(x)
        if x.ndim == 0 or (x.shape[0] * jax.process_count()) % part.batch_size_multiple:
            return part.shard_batch(batch)  # raises the one-line shape error
        shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        sharding = part.data_sharding(x.ndim)
        key = (shape, sharding)
        if key not in _CHECKED_ROWS:
            rows = sorted({idx[0].indices(shape[0])[:2]
                           for idx in sharding.addressable_devices_indices_map(shape).values()})
            lo, hi = rows[0][0], rows[-1][1]
            want = (jax.process_index() * x.shape[0], (jax.process_index() + 1) * x.shape[0])
            if (lo, hi) != want or any(a[1] < b[0] for a, b in zip(rows, rows[1:])):
                raise TrainError(
                    f"process {jax.process_index()} reads batch rows {want[0]}:{want[1]} but "
                    f"its devices hold rows {rows} of the global batch under mesh "
                    f"{dict(part.mesh.shape)}; fix: order the mesh devices by process (use "
                    f"the dcn degrees for the process split)")
            _CHECKED_ROWS.add(key)
        out[name] = jax.make_array_from_process_local_data(sharding, x, shape)
    return out


_CHECKED_ROWS: set = set()


def model_feature_specs(cfg: DatasetConfig) -> dict:
    """Model feature -> ``FeatureSpec`` (dtype, per-example shape) that ``cfg.converter``
    gives for ``cfg.task_feature_lengths`` and ``cfg.pack``; from the converter registry
    (``plug_jax.data.features``), without TensorFlow (used for abstract shapes, the batch
    shardings and ``plug-plan``)."""
    from plug_jax.data import features
    try:
        return features.feature_spec(cfg.converter, cfg.task_feature_lengths, pack=cfg.pack)
    except ValueError as e:
        raise TrainError(str(e)) from None


def model_feature_lengths(cfg: DatasetConfig) -> dict[str, int]:
    """Model feature -> length for the rank-1 (token) features of ``cfg.converter``."""
    return {k: s.shape[0] for k, s in model_feature_specs(cfg).items() if len(s.shape) == 1}


def _dummy_batch(cfg: DatasetConfig) -> dict:
    """All-zero global batch with each feature's dtype and ``[batch, *shape]``."""
    return {name: spec.zeros(cfg.batch_size) for name, spec in model_feature_specs(cfg).items()}


def _vocab_fingerprint(cfg: DatasetConfig) -> str | None:
    try:
        from plug_jax.data.pipeline import task_vocabulary
        from plug_jax.data.vocab import vocab_fingerprint
        return vocab_fingerprint(task_vocabulary(cfg.mixture_or_task_name))
    except Exception:  # noqa: BLE001 - a task without a SentencePiece vocab
        return None


# ---------------------------------------------------------------------- state
class StateBuilder:
    """Abstract state, shardings and directly sharded initialisation for a model."""

    def __init__(self, model, part: Partitioner, tx, example_batch: dict):
        self.model, self.part, self.tx = model, part, tx
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in example_batch.items()}
        self._batch = batch

        def boxed_arrays(rng):
            params = model.init_params(rng, batch)
            out = {"step": jnp.zeros((), jnp.int32), "params": params,
                   "opt_state": tx.init(params)}
            if hasattr(model, "init_state"):
                ms = model.init_state(params, jax.random.fold_in(rng, 0x5747E))
                if ms is not None:
                    out["model_state"] = ms
            return out

        self._boxed_arrays = boxed_arrays
        with _activate(part):
            self.boxed_abstract = jax.eval_shape(boxed_arrays, jax.random.PRNGKey(0))
        self.shardings = part.param_shardings(self.boxed_abstract)  # unboxed structure
        self.abstract = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            nn.unbox(self.boxed_abstract), self.shardings)

    def init(self, rng) -> dict:
        fn = lambda r: nn.unbox(self._boxed_arrays(r))  # noqa: E731
        with _activate(self.part):
            return jax.jit(fn, out_shardings=self.shardings)(rng)

    def state(self, arrays: dict) -> TrainState:
        return TrainState(step=arrays["step"], params=arrays["params"],
                          opt_state=arrays["opt_state"], tx=self.tx,
                          model_state=arrays.get("model_state"))

    def model_state_from(self, params, rng) -> Any:
        """The model's fresh state for ``params`` (e.g. momentum copies equal to restored
        parameters), sharded like the initial one; ``None`` for a model without state."""
        if "model_state" not in self.abstract:
            return None
        fn = lambda p, r: nn.unbox(self.model.init_state(p, r))  # noqa: E731
        with _activate(self.part):
            return jax.jit(fn, out_shardings=self.shardings["model_state"])(params, rng)

    def state_shardings(self) -> TrainState:
        return self.state(self.shardings)

    def param_keys(self) -> dict[str, tuple]:
        return ckpt_lib._flat_keys(self.abstract["params"])


@contextlib.contextmanager
def _activate(part: Partitioner):
    from plug_jax.partitioning import activate
    with activate(part.mesh, part.rules):
        yield


def _restore(checkpointer: ckpt_lib.TrainCheckpointer, step: int, builder: StateBuilder,
             mode: str, fresh: dict, identity: Mapping) -> tuple[dict, dict | None]:
    """Returns ``(state arrays, data state or None)`` restored from ``step`` with ``mode``."""
    checkpointer.check_identity(step, identity) if mode == "full" else None
    where = checkpointer.step_dir(step)
    if mode == "full":
        out = checkpointer.restore(step, builder.abstract, items=("state", "data"))
        _say(f"restored step {step} (mode full: params, optimizer state, data position) "
             f"from {where}")
        return out["state"], out["data"]
    saved = checkpointer.saved_param_shapes(step)
    model_keys = builder.param_keys()
    matched, missing, unexpected, mismatch = ckpt_lib.key_match_report(model_keys, saved)
    _say(f"restore {where} (mode {mode}): {len(matched)} parameter arrays matched, "
         f"{len(missing)} missing in the checkpoint (kept freshly initialised), "
         f"{len(unexpected)} in the checkpoint but not in the model (ignored), "
         f"{len(mismatch)} with another shape")
    for title, keys in (("missing", missing), ("unexpected", unexpected)):
        for k in keys[:20]:
            _say(f"  {title}: {k}")
    if mismatch:
        k = mismatch[0]
        raise ckpt_lib.CheckpointError(
            f"checkpoint parameter {k} has shape {saved[k]} but the model's is "
            f"{model_keys[k]}; fix: restore a checkpoint of the same model size")
    if not matched:
        raise ckpt_lib.CheckpointError(
            f"no parameter of {where} matches the model; fix: check the checkpoint path "
            f"and the model family / preset")
    flat_abstract = {k: v for k, v in flatten_tree(builder.abstract["params"]).items()
                     if k in matched}
    target = {"params": unflatten_tree(flat_abstract)}
    if mode == "params_fresh_opt":
        target["step"] = builder.abstract["step"]
    out = checkpointer.restore(step, target, items=("state",), partial=True)["state"]
    flat = flatten_tree(fresh["params"])
    flat.update(flatten_tree(out["params"]))
    arrays = dict(fresh)
    arrays["params"] = unflatten_tree(flat)
    if "model_state" in fresh:
        arrays["model_state"] = _restore_model_state(checkpointer, step, builder,
                                                     arrays["params"])
    data_state = None
    if mode == "params_fresh_opt":
        arrays["step"] = out["step"]
        data_state = checkpointer.restore(step, None, items=("data",))["data"]
    return arrays, data_state


def _restore_model_state(checkpointer, step: int, builder: StateBuilder, params):
    """The model state after a parameters-only restore: the checkpoint's own when it saved
    one of the same layout (e.g. ALBEF momentum encoders and queues of a pre-training run),
    else a fresh one derived from the restored ``params`` (momentum copies = parameters)."""
    want = ckpt_lib._flat_keys(builder.abstract["model_state"])
    saved = checkpointer.saved_model_state_shapes(step)
    if saved == want:
        _say(f"restored the model state ({len(want)} arrays) from {checkpointer.step_dir(step)}")
        target = {"model_state": builder.abstract["model_state"]}
        return checkpointer.restore(step, target, items=("state",),
                                    partial=True)["state"]["model_state"]
    _say("model state " + ("of another layout in the checkpoint" if saved else
                           "not in the checkpoint") + ": derived from the restored parameters")
    return builder.model_state_from(params, jax.random.PRNGKey(0x5747E))


def _file_digest(path: str) -> str:
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _check_carried_vocabulary(path: str, cfg: DatasetConfig) -> None:
    """A converted checkpoint that carries a vocabulary trains only on a task that tokenizes
    with that same vocabulary file (other ids would index the wrong embedding rows)."""
    from plug_jax.convert import vocabulary as carried
    mine = carried.carried_path(path)
    if mine is None:
        return
    from plug_jax.data.pipeline import task_vocabulary
    vocab = task_vocabulary(cfg.mixture_or_task_name)
    theirs = (getattr(vocab, "vocab_file", None)
              or getattr(vocab, "sentencepiece_model_file", None))
    if theirs and os.path.isfile(theirs) and _file_digest(theirs) == _file_digest(mine):
        return
    raise ckpt_lib.CheckpointError(
        f"INIT_CHECKPOINT {path} carries vocabulary {os.path.basename(mine)}, but task "
        f"{cfg.mixture_or_task_name} tokenizes with {os.path.basename(theirs or '?')}; fix: "
        f"train on your files with --gin_file=runs/local_data.gin placed before "
        f"runs/converted.gin (LOCAL_VOCABULARY is then the checkpoint's vocabulary)")


class ConvertedCheckpoint:
    """A plug-convert output (``DIR/{params/,config.json,metadata.json[,vocab/]}``) as a source
    of params: ``INIT_CHECKPOINT`` for plug-train, ``MODEL_DIR`` for plug-infer, plug-eval and
    plug-export (runs/converted.gin). Read whole on the host, then placed with the model's
    shardings; the family, parameter names and shapes must match the model's."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        _, self._params, self.metadata = ckpt_lib.load_params(self.path)

    def restore_into(self, builder: StateBuilder, fresh: dict, family: str | None) -> dict:
        """``fresh`` state arrays with the params replaced by the checkpoint's (and, for a
        model that keeps a state, that state from :meth:`model_state_for`)."""
        out = dict(fresh, params=self.params_for(builder, family))
        if "model_state" in fresh:
            out["model_state"] = self.model_state_for(builder, out["params"])
        return out

    def model_state_for(self, builder: StateBuilder, params):
        """The model state: each array of the conversion's ``model_state.npz`` (e.g. the
        released momentum copies and queues) whose name and shape fit the model's, the rest
        derived from ``params`` (momentum copies = the converted parameters)."""
        derived = builder.model_state_from(params, jax.random.PRNGKey(0x5747E))
        path = os.path.join(self.path, ckpt_lib.MODEL_STATE_FILE)
        if not os.path.isfile(path):
            _say("model state derived from the converted parameters (the conversion kept "
                 "none)")
            return derived
        with np.load(path, allow_pickle=False) as z:
            saved = {k: z[k] for k in z.files}
        flat = flatten_tree(derived)
        abstract = flatten_tree(builder.abstract["model_state"])
        loaded, kept = 0, []
        for k, a in abstract.items():
            if k in saved and tuple(saved[k].shape) == tuple(a.shape):
                host = np.asarray(saved[k]).astype(a.dtype)
                flat[k] = jax.make_array_from_callback(a.shape, a.sharding,
                                                       lambda idx, h=host: h[idx])
                loaded += 1
            else:
                kept.append(k if k not in saved else
                            f"{k} (saved {tuple(saved[k].shape)}, model {tuple(a.shape)})")
        _say(f"model state: {loaded} arrays from {path}, {len(kept)} derived from the "
             f"parameters" + (f" (first: {kept[0]})" if kept else ""))
        return unflatten_tree(flat)

    def params_for(self, builder: StateBuilder, family: str | None):
        have = self.metadata.get("family")
        if family is not None and have != family:
            raise ckpt_lib.CheckpointError(
                f"{self.path} holds a {have!r} checkpoint but the model is {family!r}; fix: "
                f"use the experiment gin of family {have!r}")
        saved = ckpt_lib._flat_keys(self._params)
        model_keys = builder.param_keys()
        matched, missing, unexpected, mismatch = ckpt_lib.key_match_report(model_keys, saved)
        if mismatch or missing or unexpected:
            if mismatch:
                k = mismatch[0]
                what = f"parameter {k} has shape {saved[k]} but the model's is {model_keys[k]}"
            elif missing:
                what = (f"{len(missing)} model parameters are missing from it (first: "
                        f"{missing[0]})")
            else:
                what = (f"{len(unexpected)} of its parameters are not in the model (first: "
                        f"{unexpected[0]})")
            raise ckpt_lib.CheckpointError(
                f"converted checkpoint {self.path} does not fit the model: {what}; fix: take "
                f"the model config from the checkpoint (--gin_file=runs/converted.gin "
                f"--gin.CONVERTED='{self.path}'), with its scan_layers setting")
        flat = flatten_tree(self._params)
        abstract = flatten_tree(builder.abstract["params"])
        placed = {}
        for k, a in abstract.items():  # each process places only its own shards
            host = np.asarray(flat[k]).astype(a.dtype)
            placed[k] = jax.make_array_from_callback(a.shape, a.sharding,
                                                     lambda idx, h=host: h[idx])
        source = self.metadata.get("source") or {}
        _say(f"restored {len(placed)} parameter arrays from converted checkpoint {self.path} "
             f"(from {source.get('format', '?')}, preset {self.metadata.get('preset')})")
        return unflatten_tree(placed)


# ---------------------------------------------------------------------- train
class _Preemption:
    """Turns SIGTERM into a flag the loop checks after every step."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread (e.g. a notebook worker)
            self._old = None
        return self

    def _handler(self, signum, frame):
        del signum, frame
        self.requested = True

    def stop_now(self, step: int, log_period: int) -> bool:
        """Whether to save and stop after ``step``; with several processes all agree.

        Processes may get the signal after different steps, so every ``min(log_period,
        10)`` steps they exchange their flags (a tiny host all-gather) and stop together.
        """
        if jax.process_count() == 1:
            return self.requested
        if step % max(1, min(int(log_period or 1), 10)):
            return False
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flags))

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


def train(*, model, model_dir: str, train_steps: int, train_dataset_cfg: DatasetConfig,
          eval_dataset_cfg: DatasetConfig | None = None, mesh: MeshConfig = MeshConfig(),
          optimizer: Callable = None, learning_rate: Callable | float = 1e-3,
          num_microbatches: int = 1, seed: int = 0, log_period: int = 10,
          eval_period: int = 0, eval_steps: int = 20, checkpoint_period: int = 100,
          keep_checkpoints: int | None = 3, async_checkpoints: bool = True,
          nonfinite: str = "skip", restore_mode: str = "full",
          init_checkpoint: str | None = None, peak_flops: float | None = None,
          metric_writer: Any = None, config_text: Callable[[], str] | str = "",
          on_start: Callable[[str], None] | None = None,
          extra_metadata: Mapping | None = None, eval_baseline: bool = False,
          aux_loss_factors: Mapping[str, float] | None = None,
          nan_at_steps: Sequence[int] = ()) -> dict:
    """Trains ``model`` and returns ``{'step', 'final_eval', 'stopped'}``.

    Args (the gin run files bind most of them):
      model: a task wrapper from :mod:`plug_jax.models` (e.g. ``DecoderOnlyLM``).
      model_dir: checkpoints, ``config.gin``, ``metrics.jsonl`` and TensorBoard events.
      train_steps: the step to train to (a resumed run continues up to it).
      train_dataset_cfg / eval_dataset_cfg: data (eval uses its ``split``, no shuffle).
      mesh: mesh degrees and rule preset.
      optimizer: ``f(learning_rate) -> optax.GradientTransformation`` (e.g.
        ``plug_jax.optim.adamw``, other hyper-parameters bound in gin).
      learning_rate: a schedule ``step -> rate`` or a float.
      num_microbatches: gradient accumulation steps per train step (``lax.scan``).
      log_period / eval_period / checkpoint_period: in steps (0 disables eval).
      nonfinite: ``'skip'`` the step or ``'stop'`` the run on a non-finite loss or
        gradient norm.
      restore_mode: ``'full'``, ``'params_only'`` or ``'params_fresh_opt'``; applies to the
        checkpoint found in ``model_dir`` or else to ``init_checkpoint``.
      peak_flops: peak FLOP/s of all devices together for MFU; ``None`` measures the
        float32 matmul rate of this machine once (CPU runs).
      metric_writer: object with ``write_scalars(step, dict)`` and ``flush()`` (a clu
        writer), or a function ``model_dir -> writer``.
      config_text: the operative gin config (or a function returning it), saved in
        checkpoints.
      on_start: called with ``model_dir`` once it exists (``main`` writes config.gin).
      eval_baseline: with evaluation, also score a unigram model (train-split token
        frequencies) on the same eval batches and print it beside each evaluation: the
        loss / accuracy that a model which learned nothing beyond frequencies reaches.
      aux_loss_factors: weights of the auxiliary losses the network sows (MoE load balance
        and router z-loss), added to the objective by the train step; ``None`` gives
        ``plug_jax.trainer.step.DEFAULT_AUX_LOSS_FACTORS``.
      nan_at_steps: testing aid: the loss of these steps is made NaN (never set in runs).
    """
    _check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
    _check_choice("restore_mode", restore_mode, RESTORE_MODES)
    if optimizer is None:
        from plug_jax.optim import adamw as optimizer
    if int(train_steps) < 0:
        raise TrainError(f"train_steps must be >= 0, got {train_steps}")
    model_dir = os.path.abspath(model_dir)
    part = mesh.partitioner()
    multiple = part.batch_size_multiple
    batch = train_dataset_cfg.batch_size
    k = int(num_microbatches or 1)
    if batch % k or (batch // k) % multiple:
        raise TrainError(
            f"global batch size {batch} with {k} microbatches gives microbatches of "
            f"{batch / k:g} rows, which the batch mesh axes ('data', 'fsdp', 'expert') of "
            f"total size {multiple} (mesh {dict(part.mesh.shape)}) do not divide; fix: use a "
            f"batch size that is a multiple of {k * multiple} or change the mesh")
    schedule = learning_rate if callable(learning_rate) else (lambda s: jnp.float32(learning_rate))
    tx = optimizer(learning_rate=schedule)
    dummy_batch = _dummy_batch(train_dataset_cfg)
    builder = StateBuilder(model, part, tx, dummy_batch)
    lengths = train_dataset_cfg.task_feature_lengths
    length = int(lengths["targets"] if "targets" in lengths else lengths["inputs"])
    identity = dict(model.metadata())
    identity["vocab_fingerprint"] = _vocab_fingerprint(train_dataset_cfg)
    identity.update(extra_metadata or {})
    identity["mesh"] = dict(part.mesh.shape)
    identity["rules"] = mesh.rules

    # Look at MODEL_DIR before writing anything into it.
    checkpointer = ckpt_lib.TrainCheckpointer(model_dir, keep_checkpoints, async_checkpoints,
                                              create=False)
    latest = checkpointer.latest_step() if os.path.isdir(checkpointer.directory) else None
    source, source_step = None, None
    if latest is not None:
        source, source_step = checkpointer, latest
    elif init_checkpoint and ckpt_lib.is_params_checkpoint(init_checkpoint):
        source = ConvertedCheckpoint(init_checkpoint)  # plug-convert's output
        _check_carried_vocabulary(source.path, train_dataset_cfg)
    elif init_checkpoint:
        path = os.path.abspath(os.path.normpath(init_checkpoint))
        step_name = os.path.basename(path)
        if step_name.isdigit():  # MODEL_DIR/checkpoints/<step>
            src_dir = os.path.dirname(os.path.dirname(path))
        elif step_name == ckpt_lib.CHECKPOINT_SUBDIR:  # MODEL_DIR/checkpoints
            src_dir = os.path.dirname(path)
        else:  # MODEL_DIR
            src_dir = path
        src = ckpt_lib.TrainCheckpointer(src_dir, None, False, create=False)
        has = os.path.isdir(src.directory)
        source_step = int(step_name) if step_name.isdigit() else (
            src.latest_step() if has else None)
        if source_step is None or not has or source_step not in src.all_steps():
            raise ckpt_lib.CheckpointError(
                f"init_checkpoint {init_checkpoint} holds no checkpoint; fix: point it at a "
                f"MODEL_DIR of an earlier run or at one of its checkpoints/<step> directories")
        source = src

    rng = jax.random.PRNGKey(seed)
    arrays = builder.init(jax.random.fold_in(rng, 0x1A17))
    data_state = None
    if isinstance(source, ConvertedCheckpoint):
        if restore_mode != "params_only":
            _say(f"note: {source.path} is a converted params checkpoint (no optimizer state "
                 f"or data position): restoring its params only (RESTORE_MODE "
                 f"{restore_mode!r} ignored)")
        arrays = source.restore_into(builder, arrays, identity.get("family"))
    elif source is not None:
        arrays, data_state = _restore(source, source_step, builder, restore_mode, arrays,
                                      identity)
    state = builder.state(arrays)
    start = int(jax.device_get(state.step))
    data_start = int(data_state["step"]) if data_state else 0
    if data_state and data_start != start:
        _say(f"note: data position {data_start} differs from the step {start}")

    # From here on MODEL_DIR is written.
    os.makedirs(model_dir, exist_ok=True)
    checkpointer = ckpt_lib.TrainCheckpointer(model_dir, keep_checkpoints, async_checkpoints)
    get_config = config_text if callable(config_text) else (lambda: config_text)
    if on_start is not None:
        on_start(model_dir)
    if callable(metric_writer) and not hasattr(metric_writer, "write_scalars"):
        metric_writer = metric_writer(model_dir) if jax.process_index() == 0 else None
    logger = MetricsLogger(model_dir, metric_writer)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    if hasattr(model, "flops_per_step"):  # encoder-decoder: both lengths matter
        flops_per_step = model.flops_per_step(batch, dict(train_dataset_cfg.task_feature_lengths))
    else:
        flops_per_step = model.flops_per_token(length) * batch * length
    if peak_flops is None:
        peak_flops = measure_matmul_flops()
        peak_note = f"measured float32 matmul rate {peak_flops / 1e9:.1f} GFLOP/s"
    else:
        peak_note = f"peak {peak_flops / 1e12:.1f} TFLOP/s"
    _say(f"model {identity.get('family')}/{identity.get('preset')}: {n_params:,} params; mesh "
         f"{dict(part.mesh.shape)} rules {mesh.rules!r}; batch {batch} x {length} tokens, "
         f"{k} microbatch(es); steps {start} -> {train_steps}; MFU vs {peak_note}")

    train_step = make_train_step(model, k, schedule, aux_loss_factors)
    if nan_at_steps:
        bad = jnp.asarray(sorted(nan_at_steps), jnp.int32)
        inner = train_step

        def train_step(st, b, r):  # noqa: F811 - testing aid only
            poisoned = jnp.any(bad == st.step + 1)
            b = dict(b)
            w = b["decoder_loss_weights"].astype(jnp.float32)
            b["decoder_loss_weights"] = jnp.where(poisoned, w * jnp.nan, w)
            return inner(st, b, r)

    state_sh = builder.state_shardings()
    batch_sh = part.batch_shardings(dummy_batch)  # leading dim over the batch axes
    step_fn = part.jit(train_step, in_shardings=(state_sh, batch_sh, None),
                       out_shardings=(state_sh, None), donate_argnums=(0,))
    eval_fn = part.jit(make_eval_step(model)) if eval_dataset_cfg else None
    outputs_fn = (part.jit(model.eval_outputs)
                  if eval_dataset_cfg and hasattr(model, "eval_outputs") else None)

    def save(step: int, force: bool = False):
        data = train_it.state() if train_it is not None else {"step": step}
        meta = dict(identity)
        meta["step"] = step
        checkpointer.save(step, state.arrays(), data, get_config(), meta, force=force)

    def run_eval(step: int) -> dict:
        res = _evaluate_batches(model, part, state.params, eval_dataset_cfg, eval_steps,
                                eval_fn, outputs_fn)
        row = {f"eval/{n}": v for n, v in res.items()}
        base = unigram() if eval_baseline else None
        if base is not None:
            row.update({"eval/unigram_loss": base["loss"], "eval/unigram_accuracy": base["accuracy"]})
        logger.write(step, row)
        _say(f"eval @ step {step}: {_eval_summary(model, res)}")
        if base is not None:
            beats = res["loss"] < base["loss"] and res["accuracy"] > base["accuracy"]
            _say(f"  unigram baseline on the same batches: loss {base['loss']:.4f}  token "
                 f"accuracy {base['accuracy']:.4f}  -> the model "
                 f"{'beats' if beats else 'does NOT beat'} it")
        return res

    baseline_cache = []

    def unigram() -> dict:
        if not baseline_cache:
            from plug_jax.data.pipeline import unigram_baseline
            cfg = eval_dataset_cfg
            baseline_cache.append(unigram_baseline(
                cfg.mixture_or_task_name, dict(cfg.task_feature_lengths), model.config.vocab_size,
                num_batches=50, global_batch_size=cfg.batch_size, seed=cfg.seed,
                pack=cfg.pack, train_split=train_dataset_cfg.split, eval_split=cfg.split,
                num_eval_batches=eval_steps))
        return baseline_cache[0]

    train_it = None
    final_eval = None
    stopped = None
    if start < train_steps:
        train_it = _batch_iterator(train_dataset_cfg, repeat=True, start_step=data_start,
                                   total_examples=train_steps * batch, data_state=data_state)
        if getattr(train_it, "index_based", False):
            _say(f"input: index-based, {train_it.examples_per_batch} examples per global batch "
                 f"from global batch {data_start}; this process builds its "
                 f"{train_it.local_batch_size} of {train_it.global_batch_size} rows")
        if hasattr(train_it, "stage"):
            _say(f"curriculum {train_it.curriculum.name!r}: stages "
                 f"{[st.mixture_or_task_name for st in train_it.curriculum.stages]} switching "
                 f"at global batches {list(train_it.batch_boundaries)}; now in stage "
                 f"{train_it.stage} ({train_it.stage_name})")
    else:
        _say(f"nothing to train: the checkpoint is at step {start} >= train_steps {train_steps}")
    t_window, steps_window, t_start = time.time(), 0, time.time()
    start_for_eta, first_step_s = start, 0.0
    pending_skips = []
    with _Preemption() as preempt:
        step = start
        while step < train_steps:
            stage_before = getattr(train_it, "stage", None)
            b = _shard_batch(part, next(train_it))
            if stage_before is not None and step > start and step in train_it.batch_boundaries:
                _say(f"curriculum: step {step + 1} starts stage {stage_before} "
                     f"({train_it.curriculum.stages[stage_before].mixture_or_task_name})")
            state, metrics = step_fn(state, b, rng)
            step += 1
            if step == start + 1:  # keep compilation out of the speed figures
                jax.block_until_ready(metrics)
                first_step_s = time.time() - t_start
                _say(f"first step (compilation included) took {first_step_s:.1f}s")
                t_window = t_start = time.time()
                start_for_eta = step
            else:
                steps_window += 1
            if nonfinite == "stop":
                if int(metrics["skipped"]):
                    last = checkpointer.latest_step()
                    checkpointer.close()
                    logger.close()
                    raise TrainError(
                        f"non-finite loss or gradient norm at step {step} (loss "
                        f"{float(metrics['loss'])}, grad_norm {float(metrics['grad_norm'])}); "
                        f"stopping (nonfinite='stop'); the last good checkpoint is step "
                        f"{last} in {checkpointer.directory}; fix: lower the learning rate or "
                        f"set --gin.NONFINITE=\"'skip'\"")
            else:
                pending_skips.append(metrics["skipped"])
            if step % log_period == 0 or step == train_steps:
                metrics = jax.device_get(metrics)
                skipped = int(sum(int(s) for s in jax.device_get(pending_skips)))
                pending_skips = []
                now = time.time()
                if steps_window == 0:  # only the first (compiling) step in this window
                    dt, steps_window = first_step_s, 1
                else:
                    dt = max(now - t_window, 1e-9)
                tok_s = steps_window * batch * length / dt
                # Scalars as floats; per-layer MoE statistics as (nested) lists.
                row = {k_: float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()
                       for k_, v in metrics.items() if k_ not in ("skipped",)}
                row.update(tokens_per_sec=tok_s, examples_per_sec=steps_window * batch / dt,
                           steps_per_sec=steps_window / dt,
                           mfu=flops_per_step * steps_window / dt / peak_flops,
                           skipped_steps=skipped)
                if stage_before is not None:  # the stage this step's batch came from
                    row["data_stage"] = stage_before
                logger.write(step, row)
                done = step - start_for_eta
                eta = (train_steps - step) * (now - t_start) / max(done, 1)
                speed = (f"{tok_s:,.0f} tok/s" if getattr(model, "token_loss", True)
                         else f"{row['examples_per_sec']:,.1f} examples/s")
                _say(f"step {step}/{train_steps} | loss {row['loss']:.4f} | "
                     f"{row['steps_per_sec']:.2f} steps/s | {speed} | "
                     f"mfu {100 * row['mfu']:.1f}% | ETA {format_duration(eta)}"
                     + (f" | skipped {skipped} non-finite step(s)" if skipped else ""))
                t_window, steps_window = time.time(), 0
            if eval_fn is not None and eval_period and step % eval_period == 0:
                t0 = time.time()
                final_eval = run_eval(step)
                t_window += time.time() - t0  # keep eval out of the training speed
                t_start += time.time() - t0
            if preempt.stop_now(step, log_period):
                save(step, force=True)
                checkpointer.wait()
                _say(f"SIGTERM: saved checkpoint of step {step} in {checkpointer.directory}; "
                     f"start the same command again to resume")
                stopped = "preempted"
                break
            if checkpoint_period and step % checkpoint_period == 0 and step < train_steps:
                t0 = time.time()
                save(step)
                t_window += time.time() - t0
        if stopped is None:
            if eval_fn is not None and (final_eval is None or not eval_period
                                        or step % eval_period):
                final_eval = run_eval(step)
            if checkpointer.latest_step() != step:
                save(step, force=True)
    checkpointer.close()
    logger.close()
    return {"step": step, "final_eval": final_eval, "stopped": stopped, "state": state,
            "model_dir": model_dir,
            "partitioner": part, "builder": builder}


# ---------------------------------------------------------------- eval / infer
def load_for_inference(model, model_dir: str, dataset_cfg: DatasetConfig,
                       mesh: MeshConfig = MeshConfig(), step: int | None = None):
    """``(params, step)`` restored from ``model_dir``'s checkpoints (params only)."""
    checkpointer = ckpt_lib.TrainCheckpointer(model_dir, None, False, create=False)
    trained = os.path.isdir(checkpointer.directory) and checkpointer.latest_step() is not None
    if not trained and step in (None, 0) and ckpt_lib.is_params_checkpoint(model_dir):
        # a plug-convert output: its params, as "step 0"
        part = mesh.partitioner()
        from plug_jax.optim import adamw
        builder = StateBuilder(model, part, adamw(1e-3), _dummy_batch(dataset_cfg))
        params = ConvertedCheckpoint(model_dir).params_for(builder, model.metadata().get(
            "family"))
        return params, 0, part
    if not trained:
        raise ckpt_lib.CheckpointError(
            f"{model_dir} holds no checkpoint; fix: train first (plug-train) or pass the "
            f"MODEL_DIR of a trained run")
    step = checkpointer.latest_step() if step is None else step
    part = mesh.partitioner()
    from plug_jax.optim import adamw
    builder = StateBuilder(model, part, adamw(1e-3), _dummy_batch(dataset_cfg))
    identity = dict(model.metadata())
    checkpointer.check_identity(step, identity)
    target = {"params": builder.abstract["params"]}
    params = checkpointer.restore(step, target, items=("state",), partial=True)["state"]["params"]
    checkpointer.close()
    return params, step, part


def _gather_rows(tree):
    """A pytree of global arrays (batch axis first) -> numpy on this host (all processes'
    rows)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree,
                                                                                    tiled=True))
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _evaluate_batches(model, part: Partitioner, params, cfg: DatasetConfig, eval_steps: int,
                      eval_fn, outputs_fn=None) -> dict:
    """Sums of ``eval_fn`` over at most ``eval_steps`` batches -> loss and metrics; with
    ``outputs_fn`` (``model.eval_outputs``), also the per-example outputs of every batch,
    gathered and passed once to ``model.whole_set_metrics`` (retrieval over all candidates,
    corpus-level scores)."""
    sums, gathered = None, []
    it = _batch_iterator(cfg, repeat=False, shuffle=False)
    for i, b in enumerate(it):
        if i >= eval_steps:
            break
        sharded = _shard_batch(part, b)
        out = jax.device_get(eval_fn(params, sharded))
        sums = out if sums is None else {n: sums[n] + out[n] for n in sums}
        if outputs_fn is not None:
            gathered.append(_gather_rows(outputs_fn(params, sharded)))
    if sums is None:
        raise TrainError(f"evaluation split {cfg.split!r} of {cfg.mixture_or_task_name} gave "
                         f"no batches")
    res = finalize_eval(sums, perplexity=getattr(model, "token_loss", True))
    if gathered:
        outputs = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *gathered)
        res.update(model.whole_set_metrics(params, outputs))
    return res


def _eval_summary(model, res: Mapping) -> str:
    """One line of eval numbers: LMs print loss, perplexity and token accuracy; models with
    an ``accuracy_name`` (encoders, dual encoders) print loss, that accuracy, their
    objective terms and whole-set metrics (R@K)."""
    name = getattr(model, "accuracy_name", None)
    if name is None:
        own = ""
        for k in getattr(model, "summary_metrics", ()):
            if isinstance(res.get(k), float):
                own += f"  {k.replace('_', ' ')} {res[k]:.4f}"
                per = [(n.split("/", 1)[1], v) for n, v in res.items()
                       if n.startswith(k + "/") and isinstance(v, float)]
                if per:
                    own += " (" + ", ".join(f"{n} {v:.3f}" for n, v in per) + ")"
        head = f"loss {res['loss']:.4f}"
        if "perplexity" in res:
            head += f"  perplexity {res['perplexity']:.2f}"
        if "accuracy" in res:  # not for models without token predictions (image tokenizer)
            head += f"  token accuracy {res['accuracy']:.4f}"
        return head + own
    groups = getattr(model, "eval_groups", ("mlm_loss", "mlm_accuracy", "structural_loss",
                                            "structural_accuracy"))
    extra = "".join(f"  {k.replace('_', ' ')} {res[k]:.4f}" for k in groups
                    if isinstance(res.get(k), float))
    recall = [k for k in res if "_r@" in k]
    if recall:
        extra += "  |  whole set ({} candidates): {}  mean recall {:.4f}".format(
            int(res.get("retrieval_candidates", 0)),
            " ".join(f"{k} {res[k]:.3f}" for k in recall), res["mean_recall"])
        ranks = [k for k in res if k.endswith(("_median_rank", "_mean_rank"))]
        if ranks:
            extra += "  " + " ".join(f"{k} {res[k]:.1f}" for k in ranks)
    return (f"loss {res['loss']:.4f}  {name} {res['accuracy']:.4f}  "
            f"({int(res['tokens'])} examples){extra}")


def evaluate(*, model, model_dir: str, eval_dataset_cfg: DatasetConfig,
             mesh: MeshConfig = MeshConfig(), eval_steps: int = 20,
             metric_writer: Any = None, prompts_jsonl: str | None = None) -> dict:
    """Loss, perplexity and token accuracy of the latest checkpoint in ``model_dir``.

    ``prompts_jsonl`` (dual encoders): evaluate retrieval over your own pairs instead, one
    JSON object per line with ``image`` (or ``video``) and ``text``; lines with equal text
    are positives of each other."""
    params, step, part = load_for_inference(model, model_dir, eval_dataset_cfg, mesh)
    if prompts_jsonl:
        res = _evaluate_jsonl_pairs(model, jax.device_get(params), eval_dataset_cfg,
                                    prompts_jsonl)
        _say(f"eval of {model_dir} @ step {step} on {prompts_jsonl}: " + "  ".join(
            f"{k} {v:.4f}" for k, v in res.items()))
        return res
    eval_fn = part.jit(make_eval_step(model))
    outputs_fn = part.jit(model.eval_outputs) if hasattr(model, "eval_outputs") else None
    res = _evaluate_batches(model, part, params, eval_dataset_cfg, eval_steps, eval_fn,
                            outputs_fn)
    logger = MetricsLogger(model_dir, metric_writer)
    logger.write(step, {f"eval/{n}": v for n, v in res.items()})
    logger.close()
    _say(f"eval of {model_dir} @ step {step} on {eval_dataset_cfg.mixture_or_task_name}/"
         f"{eval_dataset_cfg.split}: {_eval_summary(model, res)}")
    return res


def inference_vocabulary(model_dir: str, dataset_cfg: DatasetConfig):
    """``(vocabulary, carried)``: the vocabulary a converted checkpoint in ``model_dir``
    carries (plug-convert; ``carried=True``), else the task's."""
    if ckpt_lib.is_params_checkpoint(model_dir):
        from plug_jax.convert import vocabulary as carried_vocab
        vocab = carried_vocab.carried_vocabulary(model_dir)
        if vocab is not None:
            return vocab, True
    from plug_jax.data.pipeline import task_vocabulary
    return task_vocabulary(dataset_cfg.mixture_or_task_name), False


def _vocab_name(vocabulary) -> str:
    path = (getattr(vocabulary, "vocab_file", None)
            or getattr(vocabulary, "sentencepiece_model_file", None) or "?")
    kind = "WordPiece" if hasattr(vocabulary, "vocab_file") else "SentencePiece"
    return f"{kind} {os.path.basename(path)}, {vocabulary.vocab_size} tokens"


def _check_weights_dtype(weights_dtype) -> str:
    from plug_jax.layers import quant
    try:
        return quant.check_weights_dtype(weights_dtype)
    except ValueError as e:
        raise TrainError(str(e)) from None


def load_weights_dtype(model, params, dataset_cfg: DatasetConfig, weights_dtype: str,
                       log: bool = True):
    """``params`` (float, as restored) with the model's matmul weights in ``weights_dtype``
    (``float32``: unchanged): bf16, or int8 with per-output-channel scales
    (:mod:`plug_jax.layers.quant`; the weights are found by tracing ``model.init_params``
    on the task's dummy batch). Prints the weight bytes before and after."""
    from plug_jax.layers import quant
    weights_dtype = _check_weights_dtype(weights_dtype)
    if weights_dtype == "float32":
        return params
    before = quant.param_bytes(params)
    try:
        out = quant.quantize_model_params(model, params, _dummy_batch(dataset_cfg),
                                          weights_dtype)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if log and jax.process_index() == 0:
        print(f"weights: {weights_dtype}, {quant.param_bytes(out) / 1e6:.1f} MB "
              f"(restored: {before / 1e6:.1f} MB); activations stay float", flush=True)
    return out


def infer(*, model, model_dir: str, dataset_cfg: DatasetConfig, prompts: Sequence[str],
          mesh: MeshConfig = MeshConfig(rules="dp"), max_new_tokens: int = 48,
          methods: Sequence[str] = ("greedy", "top_p", "beam"), temperature: float = 0.8,
          top_k: int = 0, top_p: float = 0.9, num_beams: int = 4,
          length_penalty: float = 1.0, length_penalty_form: str = "power", seed: int = 0,
          repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
          min_length: int = 0, guidance: float = 1.0, vocabulary=None,
          params=None, prompts_jsonl: str | None = None,
          weights_dtype: str = "float32", chat: bool = False,
          show_passages: bool = False, chat_stream=None) -> list[dict]:
    """Prints continuations of ``prompts`` with each decoding method; returns them.

    Dual encoders (models with ``rank``) rank texts for images instead: see
    :func:`_infer_ranking`. ``prompts_jsonl`` adds the prompts of a JSONL file (one object
    per line: ``text``, ``image``, ``video``; :mod:`plug_jax.data.media`). Models that
    generate from images (``reads_media``) decode from ``image:PATH|question`` prompts:
    :func:`_infer_media`. Text-to-image models (``writes_images``) draw pictures of the
    prompts (titles) and write PNGs (``guidance``: classifier-free guidance scale; 1 = off):
    :meth:`plug_jax.models.text_to_image.TextToImageLM.infer_images`. ``weights_dtype`` (``bfloat16`` / ``int8``): the matmul weights
    are converted from the restored float ones and stored in that precision
    (:func:`load_weights_dtype`). ``repetition_penalty``, ``no_repeat_ngram_size`` and
    ``min_length`` (off by default) apply to every text decoding method
    (:func:`plug_jax.decoding.process_logits`; ChatPLUG's released defaults are 1.2, 6
    and 10). ``chat``: a multi-turn chat instead (families whose spec has a ``chat`` extra:
    ChatPLUG, ``plug_jax/families/chatplug/chat.py``): ``prompts`` are the user's turns in
    order (none: read from ``chat_stream``, default standard input), decoded with the
    first of ``methods``; ``show_passages`` prints the passages each response read."""
    weights_dtype = _check_weights_dtype(weights_dtype)
    chat_fn = _chat_hook(model) if chat else None
    if show_passages and not chat:
        raise TrainError("--show_passages applies to the chat mode; fix: add --chat")
    carried = False
    if vocabulary is None:
        vocabulary, carried = inference_vocabulary(model_dir, dataset_cfg)
    # Read every image / video and check the prompts before restoring anything.
    items = None
    if hasattr(model, "rank") or getattr(model, "reads_media", False):
        items = _load_media_prompts(list(prompts), prompts_jsonl, dataset_cfg)
    else:
        if prompts_jsonl:  # text models: a line naming an image or video is refused
            from plug_jax.data import media
            prompts = list(prompts) + [ex.get("text", "") for ex in media.load_prompts(
                [], prompts_jsonl, image_size=None, num_frames=None)]
        _refuse_media(prompts, model)
    if params is None:
        params, step, _ = load_for_inference(model, model_dir, dataset_cfg, mesh)
    else:
        step = None
    if jax.process_count() > 1:  # params sharded over processes: gather them
        from jax.experimental import multihost_utils
        params = multihost_utils.process_allgather(params, tiled=True)
    params = jax.device_get(params)
    params = load_weights_dtype(model, params, dataset_cfg, weights_dtype)
    decode_kw = dict(max_new_tokens=max_new_tokens, methods=methods, temperature=temperature,
                     top_k=top_k, top_p=top_p, num_beams=num_beams,
                     length_penalty=length_penalty, length_penalty_form=length_penalty_form,
                     seed=seed, guidance=guidance, repetition_penalty=repetition_penalty,
                     no_repeat_ngram_size=no_repeat_ngram_size, min_length=min_length)
    if chat_fn is not None:
        import gin
        try:  # gin's configured version when a gin file binds it (chat.run_chat.index_dir)
            chat_fn = gin.get_configurable(chat_fn)
        except (KeyError, ValueError):
            pass
        return chat_fn(
            model=model, params=params, vocabulary=vocabulary, dataset_cfg=dataset_cfg,
            prompts=list(prompts), decode_kw=decode_kw, show_passages=show_passages,
            model_dir=model_dir, step=step, stream=chat_stream)
    if hasattr(model, "rank"):  # dual encoders: rank texts for images (or videos)
        return _infer_ranking(model, params, dataset_cfg, items, vocabulary, model_dir, step)
    if getattr(model, "writes_images", False):  # title -> picture codes -> PNG (M6)
        return model.infer_images(params, dataset_cfg, list(prompts), vocabulary, model_dir,
                                  decode_kw, step)
    if getattr(model, "reads_media", False):  # text from an encoded image (mPLUG)
        return _infer_media(model, params, dataset_cfg, items, vocabulary, model_dir, step,
                            decode_kw)
    if carried and jax.process_index() == 0:  # show that the carried vocabulary is used
        print(f"vocabulary carried by {model_dir}: {_vocab_name(vocabulary)}", flush=True)
        for p in prompts:
            ids_ = [int(i) for i in vocabulary.encode(p)]
            shown = " ".join(map(str, ids_[:16])) + (" ..." if len(ids_) > 16 else "")
            print(f"  tokenize {p!r} -> {len(ids_)} ids [{shown}] -> detokenize "
                  f"{vocabulary.decode(ids_)!r}", flush=True)
    if hasattr(model, "infer_texts"):  # encoders: labels (and [MASK] fills), no decoding
        results = model.infer_texts(params, vocabulary, list(prompts))
        if jax.process_index() == 0:
            print(f"predictions from {model_dir}" + (f" @ step {step}" if step is not None
                                                     else ""))
            for res in results:
                fill = (f"  [MASK] -> {' '.join(res['mask_fill'])}" if res.get("mask_fill")
                        else "")
                print(f"[{res['label_name']} p={res['probability']:.3f}] "
                      f"{res['prompt']!r}{fill}", flush=True)
        return results
    encoded = [list(vocabulary.encode(p)) for p in prompts]
    eos = getattr(vocabulary, "eos_id", None)
    encoder_decoder = getattr(model, "encoder_decoder", False)
    if encoder_decoder and eos is not None:
        # encoder inputs end with EOS where the task's do (as in training and plug-eval)
        from plug_jax.data.pipeline import task_adds_eos
        if task_adds_eos(dataset_cfg.mixture_or_task_name):
            encoded = [e + [eos] for e in encoded]
    width = max(len(e) for e in encoded)
    ids = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    if encoder_decoder:
        # The prompts are the encoder's inputs; the decoder starts from its start token 0.
        for r, e in enumerate(encoded):
            ids[r, :len(e)] = e
        params = {"model": params, "encoder_ids": ids}
        ids = np.zeros((len(prompts), 1), np.int32)
        mask = np.ones((len(prompts), 1), np.int32)
    else:
        for r, e in enumerate(encoded):
            ids[r, width - len(e):] = e
            mask[r, width - len(e):] = 1
    results = []
    for method, texts in _decode_with_methods(model, params, ids, mask, vocabulary,
                                              decode_kw):
        for prompt, text in zip(prompts, texts):
            results.append({"method": method, "prompt": prompt, "continuation": text})
    if jax.process_index() == 0:
        print(f"continuations from {model_dir}" + (f" @ step {step}" if step is not None else ""))
        for res in results:
            print(f"[{res['method']}] {res['prompt']} ▸ {res['continuation']}", flush=True)
    return results


def _chat_hook(model):
    """The family's chat loop (``FamilySpec.extras['chat']``), or a one-line error."""
    from plug_jax.families import registry
    family = getattr(model, "family", None)
    fn = registry.get(family).extras.get("chat") if family in registry.names() else None
    if fn is None:
        raise TrainError(f"family {family!r} has no chat mode (a family declares one as "
                         f"FamilySpec.extras['chat']); fix: drop --chat")
    return fn


def _decode_with_methods(model, params, ids, mask, vocabulary, kw: dict) -> list:
    """``[(method, [decoded text per row])]`` for each of ``kw['methods']`` (a list, not a
    generator: exceptions from the decoding functions propagate unchanged)."""
    from plug_jax import decoding
    step_fn, init_cache = model.decode_fns()
    eos = getattr(vocabulary, "eos_id", None)
    n = kw["max_new_tokens"]
    proc = dict(repetition_penalty=kw.get("repetition_penalty", 1.0),
                no_repeat_ngram_size=kw.get("no_repeat_ngram_size", 0),
                min_length=kw.get("min_length", 0))
    results = []
    for method in kw["methods"]:
        if method == "greedy":
            out = decoding.generate(step_fn, init_cache, params, ids, mask, n,
                                    eos_id=eos, **proc).tokens
        elif method in ("sample", "top_p", "top_k"):
            out = decoding.generate(step_fn, init_cache, params, ids, mask, n,
                                    method="sample", temperature=kw["temperature"],
                                    top_k=kw["top_k"],
                                    top_p=kw["top_p"] if method != "top_k" else 1.0,
                                    eos_id=eos, rng=jax.random.PRNGKey(kw["seed"]),
                                    **proc).tokens
        elif method == "beam":
            out = decoding.beam_search(step_fn, init_cache, params, ids, mask, n,
                                       num_beams=kw["num_beams"],
                                       length_penalty=kw["length_penalty"],
                                       length_penalty_form=kw["length_penalty_form"],
                                       eos_id=eos, **proc).sequences
        else:
            raise TrainError(f"unknown decoding method {method!r}; fix: use greedy, top_p, "
                             f"top_k or beam")
        out = np.asarray(out)
        texts = []
        for r in range(out.shape[0]):
            toks = [int(t) for t in out[r]]
            if eos is not None and eos in toks:
                toks = toks[:toks.index(eos)]
            texts.append(vocabulary.decode([t for t in toks if t > 0]))
        results.append((method, texts))
    return results


def _infer_media(model, params, dataset_cfg: DatasetConfig, items: list[dict], vocabulary,
                 model_dir: str, step, decode_kw: dict) -> list[dict]:
    """Text generated from images (models with ``reads_media``: mPLUG captioning / VQA).

    Each ``image:PATH|text`` prompt is one query: the image, and the text as the question
    (models whose encoder reads text; a captioning model ignores it). Plain text prompts
    are asked of every image; given to a captioning model they are candidate captions,
    ranked for every image by likelihood (:func:`_rank_texts_by_likelihood`). With no image prompt, the first four examples of
    ``dataset_cfg``'s split are used with their own questions (and the plain prompts, if
    any). The image is encoded once per query and the text decoded over a KV cache with
    each method. Prints ``[method] image | question ▸ answer``; returns ``[{'method',
    'image', 'prompt', 'continuation'}]``. Grounding models (``infer_boxes``: a phrase ->
    a box) answer with boxes instead (:meth:`plug_jax.models.grounding.GroundingLM.infer_boxes`)."""
    if hasattr(model, "infer_boxes"):
        return model.infer_boxes(params, dataset_cfg, items, vocabulary, model_dir, step)
    key = model.media_key
    reads_text = bool(getattr(model, "encoder_text", True))
    other = [it for it in items if "frames" in it]
    if other:
        raise TrainError(f"{model.family} reads images; {other[0].get('source')} is a video; "
                         f"fix: pass image:PATH prompts")
    images = [(it.get("source", f"prompt {i}"), it[key], it.get("text", ""))
              for i, it in enumerate(items) if key in it]
    plain = [it["text"] for it in items if key not in it and it.get("text")]
    eos = getattr(vocabulary, "eos_id", None)
    width = int(dict(dataset_cfg.task_feature_lengths).get("inputs", 0) or 0)
    queries: list[tuple[str, np.ndarray, Any]] = []  # (name, pixels, question ids or text)
    if not images:
        it = _batch_iterator(dataclasses.replace(dataset_cfg, batch_size=4), repeat=False,
                             shuffle=False)
        b = next(iter(it))
        for r in range(np.asarray(b[key]).shape[0]):
            name = f"{dataset_cfg.split}[{r}]"
            if plain or not (reads_text and "encoder_input_tokens" in b):
                for t in (plain or [""]):
                    queries.append((name, np.asarray(b[key][r]), t))
            else:
                queries.append((name, np.asarray(b[key][r]),
                                [int(x) for x in b["encoder_input_tokens"][r] if x > 0]))
    else:
        for name, pixels, text in images:
            for t in ([text] if text or not plain else []) + plain:
                queries.append((name, pixels, t))
    if not queries:
        raise TrainError("nothing to infer: give image:PATH prompts (or none, to use the "
                         "validation images)")
    if not reads_text and plain and hasattr(model, "text_scores"):
        return _rank_texts_by_likelihood(model, params, dataset_cfg, queries, plain,
                                         vocabulary, model_dir, step)
    width = width or 1
    enc = np.zeros((len(queries), width), np.int32)
    shown = []
    for r, (_, _, q) in enumerate(queries):
        if isinstance(q, str):
            ids_ = list(vocabulary.encode(q)) if (q and reads_text) else []
            if ids_ and eos is not None:
                ids_ = ids_[:width - 1] + [eos]
            shown.append(q if reads_text else "")
        else:
            ids_ = q[:width]
            ids_no_eos = [t for t in ids_ if t != eos]
            shown.append(vocabulary.decode(ids_no_eos))
        enc[r, :len(ids_[:width])] = ids_[:width]
    feats = {key: np.stack([p for _, p, _ in queries]).astype(np.float32)}
    if reads_text:
        feats["encoder_input_tokens"] = enc
    p = {"model": params, "encoder_features": feats}
    ids = np.zeros((len(queries), 1), np.int32)
    mask = np.ones((len(queries), 1), np.int32)
    results = []
    for method, texts in _decode_with_methods(model, p, ids, mask, vocabulary, decode_kw):
        for (name, _, _), q, text in zip(queries, shown, texts):
            results.append({"method": method, "image": name, "prompt": q,
                            "continuation": text})
    if jax.process_index() == 0:
        print(f"generated from images by {model_dir}"
              + (f" @ step {step}" if step is not None else ""))
        for res in results:
            q = f" | {res['prompt']}" if res["prompt"] else ""
            print(f"[{res['method']}] {res['image']}{q} ▸ {res['continuation']}", flush=True)
    return results


def _rank_texts_by_likelihood(model, params, dataset_cfg, queries, texts, vocabulary,
                              model_dir, step) -> list[dict]:
    """A captioning model given texts ranks them for each image by their mean
    log-probability per token (``model.text_scores``)."""
    seen, images = set(), []
    for name, pixels, _ in queries:
        if name not in seen:
            seen.add(name)
            images.append((name, pixels))
    scores = np.asarray(jax.device_get(model.text_scores(
        params, np.stack([p for _, p in images]).astype(np.float32),
        _text_ids(texts, vocabulary, dataset_cfg))))
    results = []
    for (name, _), row in zip(images, scores):
        order = np.argsort(-row, kind="stable")
        results.append({"image": name, "ranking": [(texts[j], float(row[j])) for j in order]})
    if jax.process_index() == 0:
        print(f"texts ranked by likelihood by {model_dir}"
              + (f" @ step {step}" if step is not None else ""))
        for res in results:
            print(f"[rank] {res['image']}", flush=True)
            for text, score in res["ranking"]:
                print(f"  {score:8.3f}  {text}", flush=True)
    return results


def _media_sizes(dataset_cfg: DatasetConfig) -> dict:
    lengths = dict(dataset_cfg.task_feature_lengths)
    image = lengths.get("image")
    frames = lengths.get("frames")
    size = tuple(image[:2]) if image else (tuple(frames[1:3]) if frames else (224, 224))
    return {"image_size": size, "num_frames": int(frames[0]) if frames else 8}


def _load_media_prompts(prompts, jsonl, dataset_cfg: DatasetConfig) -> list[dict]:
    from plug_jax.data import media
    return media.load_prompts(list(prompts), jsonl, **_media_sizes(dataset_cfg))


def _evaluate_jsonl_pairs(model, params, dataset_cfg: DatasetConfig, jsonl: str) -> dict:
    if not hasattr(model, "rank"):
        raise TrainError(f"plug-eval --prompts_jsonl scores retrieval over image-text pairs, "
                         f"which {type(model).__name__} ({model.family}) does not do; fix: "
                         f"evaluate on the gin-bound eval split (drop --prompts_jsonl)")
    from plug_jax.data.pipeline import task_vocabulary
    from plug_jax.metrics import retrieval
    items = _load_media_prompts([], jsonl, dataset_cfg)
    key = "frames" if "frames" in dict(dataset_cfg.task_feature_lengths) else "image"
    bad = [i + 1 for i, it in enumerate(items) if key not in it or not it.get("text")]
    if bad:
        raise TrainError(f"{jsonl}: pair {bad[0]} lacks {'a video' if key == 'frames' else 'an image'}"
                         f" or a text; fix: give every line both")
    vocabulary = task_vocabulary(dataset_cfg.mixture_or_task_name)
    texts = [it["text"] for it in items]
    scores = np.asarray(jax.device_get(model.rank(
        params, {key: np.stack([it[key] for it in items]).astype(np.float32)},
        {"decoder_target_tokens": _text_ids(texts, vocabulary, dataset_cfg)})), np.float64)
    keys = np.asarray(texts, dtype=object)
    pos = np.array([[a == b for b in keys] for a in keys])
    a, b = model.side_names
    return retrieval.two_way_recall(scores, pos, model.recall_ks, names=(f"{a}2{b}", f"{b}2{a}"))


def _text_ids(texts, vocabulary, dataset_cfg: DatasetConfig) -> np.ndarray:
    """Texts -> ``[N, targets length]`` ids ending in EOS (as the task tokenizes them)."""
    length = int(dict(dataset_cfg.task_feature_lengths)["targets"])
    eos = getattr(vocabulary, "eos_id", 1)
    ids = np.zeros((len(texts), length), np.int32)
    for r, t in enumerate(texts):
        e = list(vocabulary.encode(t))[:length - 1] + [eos]
        ids[r, :len(e)] = e
    return ids


def _refuse_media(prompts, model) -> None:
    for p in prompts:
        if p.lstrip().startswith(("image:", "video:")):
            raise TrainError(f"prompt {p!r} names an image or video but {model.family} "
                             f"({type(model).__name__}) reads text only; fix: drop the "
                             f"image:/video: prefix or use an image-text family")


def _infer_ranking(model, params, dataset_cfg: DatasetConfig, items: list[dict],
                   vocabulary, model_dir: str, step) -> list[dict]:
    """Dual-encoder inference: every image (or video) prompt against every text.

    Images come from ``image:PATH`` / ``video:PATH`` prompts (and ``prompts_jsonl``); texts
    from plain prompts and from the text after ``|``. With no image prompt, the first four
    examples of ``dataset_cfg``'s split are used, and with no text their captions (so a
    bare ``plug-infer`` shows the model matching held-out images to their captions). Prints,
    for each image, the texts by score, and with several images (``videos:DIR``: every video
    of a folder), for each text its top five images / videos; returns
    ``[{'image', 'ranking': [(text, score)]}]`` then ``[{'text', 'ranking': [(image, score)]}]``.
    """
    media_key = "frames" if "frames" in dict(dataset_cfg.task_feature_lengths) else "image"
    rows = [(it.get("source", f"prompt {i}"), it[media_key])
            for i, it in enumerate(items) if media_key in it]
    other = "image" if media_key == "frames" else "frames"
    if any(other in it for it in items):
        raise TrainError(f"{model.family} reads {media_key!r} inputs; a prompt gives "
                         f"{other!r}; fix: pass {'video:' if media_key == 'frames' else 'image:'}"
                         f" prompts")
    texts = [it["text"] for it in items if it.get("text")]
    if not rows:
        it = _batch_iterator(dataclasses.replace(dataset_cfg, batch_size=4), repeat=False,
                             shuffle=False)
        b = next(iter(it))
        toks = np.asarray(b["decoder_target_tokens"])
        for r in range(toks.shape[0]):
            rows.append((f"{dataset_cfg.split}[{r}]", np.asarray(b[media_key][r])))
        if not texts:
            eos = getattr(vocabulary, "eos_id", 1)
            for r in range(toks.shape[0]):
                t = [int(x) for x in toks[r] if x > 0]
                texts.append(vocabulary.decode(t[:t.index(eos)] if eos in t else t))
    if not texts:
        raise TrainError("no texts to rank: give plain text prompts (or 'image:PATH|text')")
    scores = np.asarray(jax.device_get(model.rank(
        params, {media_key: np.stack([x for _, x in rows]).astype(np.float32)},
        {"decoder_target_tokens": _text_ids(texts, vocabulary, dataset_cfg)})))
    results = []
    for (name, _), row in zip(rows, scores):
        order = np.argsort(-row, kind="stable")
        results.append({"image": name, "ranking": [(texts[j], float(row[j])) for j in order]})
    # With several images / videos (e.g. videos:DIR), each text is also a query over them.
    queries = []
    if len(rows) > 1:
        for j, text in enumerate(texts):
            order = np.argsort(-scores[:, j], kind="stable")
            queries.append({"text": text, "ranking": [(rows[i][0], float(scores[i, j]))
                                                      for i in order]})
    if jax.process_index() == 0:
        print(f"rankings from {model_dir}" + (f" @ step {step}" if step is not None else ""))
        for res in results:
            best, score = res["ranking"][0]
            print(f"[{media_key}] {res['image']} ▸ {best!r} (score {score:.2f}; "
                  f"{len(texts)} texts)", flush=True)
        for q in queries:
            top = ", ".join(f"{name} ({score:.2f})" for name, score in q["ranking"][:5])
            print(f"[text] {q['text']!r} ▸ {top} (top {min(5, len(rows))} of {len(rows)} "
                  f"{'videos' if media_key == 'frames' else 'images'})", flush=True)
    return results + queries


__all__ = ["DatasetConfig", "MeshConfig", "TrainError", "train", "evaluate", "infer",
           "load_for_inference", "StateBuilder"]
