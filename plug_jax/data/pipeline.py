"""Batches of numpy arrays from seqio tasks, with a checkpointable position.

``get_batch_iterator`` turns a seqio Task or Mixture into an iterator of global batches
(``DecoderFeatureConverter``, packed by default) and hands each process its rows:

* the feature converter is looked up by name in :mod:`plug_jax.data.features`, which also
  gives each model feature's dtype and per-example shape (``BatchIterator.feature_specs``);
  every batch is cast to those dtypes and checked against those shapes (int32 token
  features, float32 pixels, ...);

* every process builds the same global batch stream (all shuffles are seeded) and keeps rows
  ``p*B/P : (p+1)*B/P`` of global batch ``n``, so the stream does not depend on the process
  count and a run can resume on a different number of processes;
* ``BatchIterator.step`` counts global batches; ``state()`` is a small JSON-able dict and
  ``BatchIterator.from_state`` (or ``start_step=``) resumes at exactly the batch the state
  points to. Resuming skips ``step`` batches through the tf.data pipeline, so it costs
  about as much as producing them (tokenizing and packing, no model work).

TensorFlow runs on the CPU only (GPUs hidden, logging quiet).
"""
from __future__ import annotations

import atexit
import difflib
import gc
import logging
import weakref
from typing import Any, Mapping, Optional

import numpy as np

from plug_jax.data import configure_tensorflow, features, indexed

tf = configure_tensorflow()

import seqio  # noqa: E402

STATE_VERSION = 1
# Feature converters by name -> their tf.data implementation (a read-only view of the
# registry in plug_jax.data.features: decoder, encdec, prefix_lm, encoder, encdec_mlm,
# image_text, video_text and whatever else is registered there).
FEATURE_CONVERTERS = features.ConverterView()
DECODER_FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions")


class _DropFunctionSourceWarning(logging.Filter):
    """seqio warns that uncached FunctionDataSources shuffle poorly; Shop World sources
    permute indices fully before generating text, so the warning does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "uncached FunctionDataset" not in str(record.msg)


logging.getLogger("absl").addFilter(_DropFunctionSourceWarning())


_LIVE_ITERATORS: "weakref.WeakSet[BatchIterator]" = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
    """Delete tf.data iterators while the runtime is intact.

    A tf.data iterator that still has prefetch work in flight when the interpreter tears
    down its modules can deadlock in its destructor (the process never exits); deleting it
    from an atexit hook, before the teardown, is clean.
    """
    for it in list(_LIVE_ITERATORS):
        it.close()
    gc.collect()


def _provider(name: str) -> seqio.DatasetProviderBase:
    registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if name not in registered:
        try:  # the project's own registrations are one import away
            import plug_jax.tasks  # noqa: F401,PLC0415
        except ImportError:
            pass
        registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if name not in registered:
        close = difflib.get_close_matches(name, sorted(registered), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown seqio task or mixture {name!r}{hint}; import the module "
                         f"that registers it first (plug_jax.tasks registers the project's)")
    return seqio.get_mixture_or_task(name)


def _features(mixture_or_task_name: str) -> Mapping[str, seqio.Feature]:
    """Output features of a task, mixture or (its first stage's) curriculum."""
    from plug_jax.data import curriculum_registry as curriculum  # noqa: PLC0415
    if mixture_or_task_name not in seqio.TaskRegistry.names() and \
            mixture_or_task_name not in seqio.MixtureRegistry.names() and \
            curriculum.is_curriculum(mixture_or_task_name):
        mixture_or_task_name = curriculum.get_curriculum(
            mixture_or_task_name).stages[0].mixture_or_task_name
    return _provider(mixture_or_task_name).output_features


def task_adds_eos(mixture_or_task_name: str, feature: str = "inputs") -> bool:
    """Whether the task's ``feature`` ends with EOS (``plug-infer`` ends encoder prompts the
    same way). False if the task has no such feature."""
    f = _features(mixture_or_task_name).get(feature)
    return bool(f is not None and f.add_eos)


def task_vocabulary(mixture_or_task_name: str, feature: str = "targets") -> seqio.Vocabulary:
    """The vocabulary of ``feature`` in a registered task or mixture (for decoding prompts,
    printing samples and ``vocab_fingerprint``). For a curriculum: its first stage's."""
    features = _features(mixture_or_task_name)
    if feature == "targets" and feature not in features and "inputs" in features:
        feature = "inputs"  # an encoder-only (classification) task
    if feature not in features:
        raise ValueError(f"{mixture_or_task_name!r} has no output feature {feature!r}; use one "
                         f"of {sorted(features)}")
    return features[feature].vocabulary


def _check_args(name: str, provider, task_feature_lengths, split: str, global_batch_size: int,
                process_index: int, process_count: int, start_step: int,
                converter: str = "decoder") -> None:
    if not isinstance(global_batch_size, (int, np.integer)) or global_batch_size < 1:
        raise ValueError(f"global_batch_size must be a positive integer, got "
                         f"{global_batch_size!r}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count="
                         f"{process_count}); pass jax.process_index() and jax.process_count()")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                         f"process_count={process_count}; use a multiple of {process_count}, "
                         f"e.g. {-(-global_batch_size // process_count) * process_count}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    splits = getattr(provider, "splits", None)
    if splits and split not in splits:
        raise ValueError(f"{name!r} has no split {split!r}; use one of {sorted(splits)}")
    features.feature_spec(converter, task_feature_lengths)  # the lengths it needs


class EncoderFeatureConverter:
    """Encoder-only model features (StructBERT pre-training and classification).

    Task features: ``inputs`` (required), optionally ``token_type_ids``, ``targets`` with
    ``mlm_weights`` / ``structural_weights`` (the ``mlm`` and ``word_structural``
    preprocessors), and ``label`` (an int32 scalar). Every row holds one example, trimmed /
    zero-padded to ``task_feature_lengths['inputs']``: the sentence heads read the row's
    first token, so rows are never packed and ``pack`` has no effect. Model features (all
    int32, ``[batch, length]``, missing task features give zeros):

    ``encoder_input_tokens``, ``encoder_token_types``, ``mlm_targets``, ``mlm_weights``,
    ``structural_weights`` and ``label`` (``[batch, 1]``; padding rows of a finite eval
    epoch have all-zero tokens and are not counted).
    """

    MODEL_FEATURES = ("encoder_input_tokens", "encoder_token_types", "mlm_targets",
                      "mlm_weights", "structural_weights")

    def __init__(self, pack: bool = False):
        self.pack = bool(pack)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
        return _lengths_of(features.feature_spec("encoder", task_feature_lengths))

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
        n = self.get_model_feature_lengths(task_feature_lengths)["encoder_input_tokens"]
        spec = ds.element_spec
        if "inputs" not in spec:
            raise ValueError(f"the 'encoder' feature converter needs an 'inputs' feature; the "
                             f"task gives {sorted(spec)}")

        def fit(x):
            x = tf.cast(x, tf.int32)[:n]
            return tf.pad(x, [[0, n - tf.size(x)]])

        def convert(ex):
            tokens = fit(ex["inputs"])
            zeros = tf.zeros([n], tf.int32)
            out = {"encoder_input_tokens": tokens,
                   "encoder_token_types": fit(ex["token_type_ids"]) if "token_type_ids" in ex
                   else zeros,
                   "mlm_targets": fit(ex["targets"]) if "targets" in ex else zeros}
            for name in ("mlm_weights", "structural_weights"):
                out[name] = fit(ex[name]) if name in ex else zeros
            out["label"] = tf.reshape(tf.cast(ex["label"], tf.int32), [1]) if "label" in ex \
                else tf.zeros([1], tf.int32)
            return out

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


class EncDecMlmFeatureConverter:
    """``encdec`` batches plus the encoder's MLM targets (PLUG / PALM stage 2).

    Task features: ``inputs`` (the context, MLM-corrupted), ``targets`` (the continuation)
    and, optionally, ``mlm_targets`` (the uncorrupted context) with ``mlm_weights`` (1 at
    masked positions); a task without them (MLM switched off) gets zero weights. The
    features seqio's ``EncDecFeatureConverter`` gives (same values: packed with
    ``seqio.utils.trim_and_pack_dataset``, decoder inputs shifted within segments) plus
    ``encoder_mlm_targets`` and ``encoder_mlm_weights``, aligned with
    ``encoder_input_tokens``.
    """

    def __init__(self, pack: bool = True):
        self.pack = bool(pack)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
        return _lengths_of(features.feature_spec("encdec_mlm", task_feature_lengths,
                                                 pack=self.pack))

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
        lengths = self.get_model_feature_lengths(task_feature_lengths)
        li, lt = lengths["encoder_input_tokens"], lengths["decoder_target_tokens"]
        has_mlm = "mlm_targets" in ds.element_spec

        def select(ex):
            # seqio's packing takes a feature's zeros for padding, so the weights travel as
            # weight + 1 (never 0) and stay aligned with the inputs; undone after packing.
            inputs = tf.cast(ex["inputs"], tf.int32)
            return {"inputs": inputs, "targets": tf.cast(ex["targets"], tf.int32),
                    "mlm_targets": tf.cast(ex["mlm_targets"], tf.int32) if has_mlm else inputs,
                    "mlm_weights": (tf.cast(ex["mlm_weights"], tf.int32) if has_mlm
                                    else tf.zeros_like(inputs)) + 1}

        ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
        packed_lengths = {"inputs": li, "targets": lt, "mlm_targets": li, "mlm_weights": li}
        ds = (seqio.utils.trim_and_pack_dataset(ds, packed_lengths) if self.pack
              else seqio.utils.trim_and_pad_dataset(ds, packed_lengths))

        def convert(ex):
            dec = {k: v[None] for k, v in ex.items() if k.startswith("targets")}
            out = {k: v[0] for k, v in _batched_lm_features(dec).items()}
            out["encoder_input_tokens"] = ex["inputs"]
            out["encoder_mlm_targets"] = ex["mlm_targets"]
            out["encoder_mlm_weights"] = tf.maximum(ex["mlm_weights"] - 1, 0)
            if self.pack:
                out["encoder_segment_ids"] = ex["inputs_segment_ids"]
                out["encoder_positions"] = ex["inputs_positions"]
            else:  # seqio's unpacked layout: no segment ids / positions
                out.pop("decoder_segment_ids", None)
                out.pop("decoder_positions", None)
            return out

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def _lengths_of(specs: Mapping[str, features.FeatureSpec]) -> dict[str, int]:
    """``{feature: length}`` of rank-1 specs (``get_model_feature_lengths``' layout)."""
    return {k: s.shape[0] for k, s in specs.items() if len(s.shape) == 1}


def feature_converter(name: str, pack: bool = True):
    """The tf.data feature converter registered as ``name`` (a seqio ``FeatureConverter``,
    :class:`EncoderFeatureConverter`, ...): ``converter(ds, task_feature_lengths)``. What it
    gives is ``features.feature_spec(name, task_feature_lengths, pack)``."""
    return features.tf_converter(name, pack)


def _conform(ds: tf.data.Dataset, specs: Mapping[str, features.FeatureSpec],
             converter: str) -> tf.data.Dataset:
    """Batches cast to the spec's dtypes, with the spec's shapes (checked here when static,
    by ``ensure_shape`` when not)."""
    got = ds.element_spec
    if set(got) != set(specs):
        raise ValueError(f"feature converter {converter!r} gives features {sorted(got)} but "
                         f"its FeatureSpec lists {sorted(specs)}; fix: make its spec_fn and "
                         f"tf_impl agree (plug_jax.data.features)")
    casts, shapes = {}, {}
    for k, spec in specs.items():
        want = tf.as_dtype(spec.dtype)
        have = got[k]
        if not have.shape[1:].is_compatible_with(spec.shape):
            raise ValueError(f"feature converter {converter!r} gives {k!r} of shape "
                             f"{tuple(have.shape[1:])} per example but its FeatureSpec says "
                             f"{spec.shape}; fix: check task_feature_lengths or the spec_fn")
        if have.dtype != want:
            if have.dtype.is_floating and not want.is_floating:
                raise ValueError(f"feature converter {converter!r} gives {k!r} as "
                                 f"{have.dtype.name} but its FeatureSpec says {want.name}; "
                                 f"fix: the spec_fn's dtype (a float is never cast to an int)")
            casts[k] = want
        if not have.shape[1:].is_fully_defined():
            shapes[k] = [None, *spec.shape]
    if not casts and not shapes:
        return ds

    def conform(batch):
        out = {}
        for k, v in batch.items():
            v = tf.cast(v, casts[k]) if k in casts else v
            out[k] = tf.ensure_shape(v, shapes[k]) if k in shapes else v
        return out

    return ds.map(conform, num_parallel_calls=tf.data.AUTOTUNE)


def _batched_lm_features(batch: dict) -> dict:
    """Decoder-only LM model features of a batch of trimmed/packed ``targets`` rows.

    The same values as ``seqio.DecoderFeatureConverter`` (strict LM, bos 0): inputs are the
    targets shifted right by one inside each segment (0 at every segment start), loss
    weights are 1 on non-padding tokens. Done once per batch instead of once per example.
    """
    targets = batch["targets"]
    prev = tf.pad(targets[:, :-1], [[0, 0], [1, 0]])
    if "targets_segment_ids" in batch:
        seg = batch["targets_segment_ids"]
        prev_seg = tf.pad(seg[:, :-1], [[0, 0], [1, 0]])
        prev = tf.where(tf.equal(seg, prev_seg), prev, tf.zeros_like(prev))
    out = {"decoder_target_tokens": targets, "decoder_input_tokens": prev,
           "decoder_loss_weights": tf.cast(tf.not_equal(targets, 0), tf.int32)}
    if "targets_segment_ids" in batch:
        out["decoder_segment_ids"] = batch["targets_segment_ids"]
        out["decoder_positions"] = batch["targets_positions"]
    return out


def _fast_decoder_batches(ds: tf.data.Dataset, length: int, global_batch_size: int, *,
                          pack: bool, drop_remainder: bool) -> tf.data.Dataset:
    """Trim (and pack) ``targets`` like seqio, then build the LM features per batch."""
    ds = ds.map(lambda ex: {"targets": tf.cast(ex["targets"], tf.int32)},
                num_parallel_calls=tf.data.AUTOTUNE)
    lengths = {"targets": int(length)}
    ds = (seqio.utils.trim_and_pack_dataset(ds, lengths) if pack
          else seqio.utils.trim_and_pad_dataset(ds, lengths))
    ds = ds.batch(int(global_batch_size), drop_remainder=drop_remainder)
    return ds.map(_batched_lm_features, num_parallel_calls=tf.data.AUTOTUNE)


def global_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                   split: str, global_batch_size: int, *, shuffle: bool = True, seed: int = 0,
                   repeat: bool = True, pack: bool = True,
                   converter: str = "decoder") -> tf.data.Dataset:
    """The tf.data stream of global batches (not sliced per process, not skipped).

    With ``repeat=False`` the last, partial batch is kept (``BatchIterator`` pads it). Every
    feature has the dtype and per-example shape of ``features.feature_spec(converter,
    task_feature_lengths, pack)``.
    """
    specs = features.feature_spec(converter, task_feature_lengths, pack)
    provider = _provider(mixture_or_task_name)
    extra = {"try_in_mem_cache": False} if isinstance(provider, seqio.Task) else {}
    ds = provider.get_dataset(
        sequence_length=dict(task_feature_lengths), split=split, use_cached=False,
        shuffle=shuffle, seed=int(seed), num_epochs=None if repeat else 1, **extra)
    if converter == "decoder" and set(task_feature_lengths) == {"targets"}:
        # A plain LM task: same batches as seqio's DecoderFeatureConverter, but the shift
        # and loss weights are computed per batch (the per-example maps were most of the
        # pipeline's cost; see benchmarks/input_pipeline.py).
        ds = _fast_decoder_batches(ds, task_feature_lengths["targets"], global_batch_size,
                                   pack=pack, drop_remainder=repeat)
    else:
        ds = feature_converter(converter, pack)(ds, dict(task_feature_lengths))
        ds = ds.batch(int(global_batch_size), drop_remainder=repeat)
    return _conform(ds, specs, converter)


def _raise_record_file_error(error: Exception) -> None:
    """A prepared shard that failed inside tf.data -> the reader's own one-line error."""
    from plug_jax.data.record_files import RecordFileError  # noqa: PLC0415
    text = str(error)
    at = text.find("prepared shard ")
    if at >= 0:
        raise RecordFileError(text[at:].splitlines()[0].strip()) from None


def _choose_index_based(name: str, provider, repeat: bool, wanted: Optional[bool],
                        split: Optional[str] = None) -> bool:
    """Index-based input for endless (training) streams of tasks and mixtures that support
    it; ``wanted`` forces it on (an error if the task cannot) or off."""
    able = indexed.supports_indexed(provider, split)
    if wanted is None:
        return bool(repeat and able)
    if wanted and not able:
        raise ValueError(f"{name!r} cannot be read by global example index (its source, or a "
                         f"mixture member's, is not an IndexedSource); fix: set index_based=False "
                         f"(gin: --gin.INDEX_BASED_INPUT=False) or give it an indexed source")
    if wanted and not repeat:
        raise ValueError("index-based input is for endless training streams (repeat=True); "
                         "finite evaluation passes read the stream")
    return bool(wanted)


def process_dataset(task, task_feature_lengths: Mapping[str, int], split: str,
                    global_batch_size: int, *, shuffle: bool, seed: int, pack: bool,
                    converter: str, examples_per_batch: int, process_index: int,
                    process_count: int, start_step: int) -> tf.data.Dataset:
    """This process's rows of global batches ``start_step, start_step + 1, ...`` by index
    (``plug_jax.data.indexed``), with the dtypes and shapes of the stream path."""
    specs = features.feature_spec(converter, task_feature_lengths, pack)
    lengths = dict(task_feature_lengths)
    local = global_batch_size // process_count
    rows = indexed.process_rows(
        task, split, lengths, start_batch=start_step, examples_per_batch=examples_per_batch,
        process_index=process_index, process_count=process_count, local_batch_size=local,
        seed=seed, shuffle=shuffle, pack=pack, converter=converter,
        convert=lambda ds, pk: feature_converter(converter, pk)(ds, lengths))
    ds = rows.batch(local, drop_remainder=True)
    if converter == "decoder" and set(lengths) == {"targets"}:
        ds = ds.map(_batched_lm_features, num_parallel_calls=tf.data.AUTOTUNE)
    return _conform(ds, specs, converter)


class BatchIterator:
    """Iterator of this process's rows of each global batch (dicts of numpy arrays with the
    dtypes and shapes of ``feature_specs``: int32 tokens, float32 pixels, ...).

    ``step`` is the number of global batches yielded so far, ``start_step`` included.
    """

    def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                 split: str, global_batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 repeat: bool = True, pack: bool = True, process_index: int = 0,
                 process_count: int = 1, start_step: int = 0, converter: str = "decoder",
                 index_based: Optional[bool] = None,
                 examples_per_batch: Optional[int] = None):
        provider = _provider(mixture_or_task_name)
        feature_converter(converter)  # validates the name
        _check_args(mixture_or_task_name, provider, task_feature_lengths, split,
                    global_batch_size, process_index, process_count, start_step, converter)
        self.task = mixture_or_task_name
        self.feature_lengths = features.normalize_lengths(task_feature_lengths)
        self.split = split
        self.global_batch_size = int(global_batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.repeat = bool(repeat)
        self.pack = bool(pack)
        self.converter = converter
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.local_batch_size = self.global_batch_size // self.process_count
        self.step = int(start_step)
        self._specs = features.feature_spec(converter, self.feature_lengths, self.pack)
        self.index_based = _choose_index_based(mixture_or_task_name, provider, self.repeat,
                                               index_based, split)
        self.examples_per_batch = None
        if self.index_based:
            # Only this process's rows are built, starting at global batch `step`.
            self._rows = slice(None)
            self.examples_per_batch = int(
                examples_per_batch or indexed.estimate_examples_per_batch(
                    provider, split, self.feature_lengths,
                    global_batch_size=self.global_batch_size, seed=self.seed,
                    shuffle=self.shuffle, pack=self.pack, converter=converter))
            if self.examples_per_batch < self.global_batch_size and not self.pack:
                raise ValueError(f"examples_per_batch={self.examples_per_batch} is less than "
                                 f"the batch size {self.global_batch_size} without packing")
            ds = process_dataset(provider, self.feature_lengths, split, self.global_batch_size,
                                 shuffle=self.shuffle, seed=self.seed, pack=self.pack,
                                 converter=converter,
                                 examples_per_batch=self.examples_per_batch,
                                 process_index=self.process_index,
                                 process_count=self.process_count, start_step=self.step)
        else:
            self._rows = slice(self.process_index * self.local_batch_size,
                               (self.process_index + 1) * self.local_batch_size)
            ds = global_dataset(mixture_or_task_name, self.feature_lengths, split,
                                self.global_batch_size, shuffle=shuffle, seed=seed,
                                repeat=repeat, pack=pack, converter=converter).skip(self.step)
        self._dataset = ds.prefetch(2)
        self._it = None
        _LIVE_ITERATORS.add(self)

    # Shapes and dtypes, for abstract initialisation and jit ahead of the first batch.
    @property
    def feature_specs(self) -> dict[str, features.FeatureSpec]:
        """``{feature: FeatureSpec}``: dtype and per-example shape of every feature."""
        return dict(self._specs)

    @property
    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{feature: (local batch, *per-example shape)}``."""
        return {k: s.batched(self.local_batch_size) for k, s in self._specs.items()}

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            if self._dataset is None:
                raise StopIteration  # closed
            self._it = self._dataset.as_numpy_iterator()
        try:
            batch = next(self._it)  # StopIteration ends a repeat=False epoch
        except tf.errors.OpError as e:
            _raise_record_file_error(e)
            raise
        out = {}
        for k, v in batch.items():
            v = np.asarray(v)  # already the spec's dtype (global_dataset casts)
            if not self.index_based and v.shape[0] < self.global_batch_size:
                # The last batch of a finite epoch.
                pad = self._specs[k].zeros(self.global_batch_size - v.shape[0])
                v = np.concatenate([v, pad])
            out[k] = v[self._rows]
        self.step += 1
        return out

    def close(self) -> None:
        """Release the tf.data pipeline (also done for every live iterator at exit)."""
        self._it = None
        self._dataset = None

    def state(self) -> dict[str, Any]:
        """JSON-serialisable position: feed it to ``BatchIterator.from_state``."""
        return {
            "version": STATE_VERSION,
            "task": self.task,
            "split": self.split,
            "seed": self.seed,
            "step": self.step,
            "global_batch_size": self.global_batch_size,
            "feature_lengths": {k: list(v) if isinstance(v, tuple) else v
                                for k, v in self.feature_lengths.items()},
            "pack": self.pack,
            "shuffle": self.shuffle,
            "repeat": self.repeat,
            "converter": self.converter,
            "index_based": self.index_based,
            "examples_per_batch": self.examples_per_batch,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, process_index: int = 0,
                   process_count: int = 1) -> "BatchIterator":
        """The iterator at ``state["step"]``, on any process count dividing the batch."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"batch iterator state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}; it was written by another plug_jax version")
        return cls(state["task"], state["feature_lengths"], state["split"],
                   state["global_batch_size"], shuffle=state["shuffle"], seed=state["seed"],
                   repeat=state["repeat"], pack=state["pack"], process_index=process_index,
                   process_count=process_count, start_step=state["step"],
                   converter=state.get("converter", "decoder"),
                   # States written before index-based input resume on the stream.
                   index_based=bool(state.get("index_based", False)),
                   examples_per_batch=state.get("examples_per_batch"))

    def __repr__(self) -> str:
        first = self.process_index * self.local_batch_size
        return (f"BatchIterator(task={self.task!r}, split={self.split!r}, step={self.step}, "
                f"rows={first}:{first + self.local_batch_size} of {self.global_batch_size}"
                + (f", index-based, {self.examples_per_batch} examples per global batch)"
                   if self.index_based else ", stream)"))


def get_batch_iterator(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                       split: str, global_batch_size: int, *, shuffle: bool = True,
                       seed: int = 0, repeat: bool = True, pack: bool = True,
                       process_index: int = 0, process_count: int = 1,
                       start_step: int = 0, converter: str = "decoder",
                       index_based: Optional[bool] = None,
                       examples_per_batch: Optional[int] = None) -> BatchIterator:
    """Batches of ``mixture_or_task_name`` for this process.

    Yields dicts of numpy arrays ``[global_batch_size // process_count, *shape]`` with the
    dtypes and shapes of ``features.feature_spec(converter, task_feature_lengths, pack)``;
    for ``decoder``, int32 ``[B/P, length]``: ``decoder_target_tokens``,
    ``decoder_input_tokens`` (targets shifted right within each segment, 0 first),
    ``decoder_loss_weights`` (1 on real tokens), and when ``pack`` ``decoder_segment_ids``
    (1, 2, ... per row, 0 on padding) and ``decoder_positions``.
    Process ``p`` gets rows ``p*B/P : (p+1)*B/P`` of global batch ``n``; ``start_step=n``
    starts at global batch ``n`` of the same stream. With ``repeat=False`` the stream ends
    after one epoch and its last batch is padded with all-zero rows (loss weight 0).
    """
    return BatchIterator(mixture_or_task_name, task_feature_lengths, split, global_batch_size,
                         shuffle=shuffle, seed=seed, repeat=repeat, pack=pack,
                         process_index=process_index, process_count=process_count,
                         start_step=start_step, converter=converter,
                         index_based=index_based, examples_per_batch=examples_per_batch)


def unigram_baseline(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                     vocab_size: int, num_batches: int = 20, *, global_batch_size: int = 16,
                     seed: int = 0, pack: bool = True, train_split: str = "train",
                     eval_split: str = "validation",
                     num_eval_batches: Optional[int] = None) -> dict[str, float]:
    """Loss (nats/token) and token accuracy of a unigram model on ``eval_split``.

    Token frequencies are counted over the loss-weighted targets of ``num_batches`` shuffled
    train batches and add-one smoothed over ``vocab_size`` ids; the evaluation runs over
    ``num_eval_batches`` batches (default: the whole split, one epoch) with the same loss
    weights. A model that learned nothing beyond token frequencies cannot beat it.
    """
    counts = np.zeros(int(vocab_size), np.float64)
    train = get_batch_iterator(mixture_or_task_name, task_feature_lengths, train_split,
                               global_batch_size, shuffle=True, seed=seed, repeat=True,
                               pack=pack)
    for _ in range(int(num_batches)):
        b = next(train)
        counts += _weighted_counts(b, vocab_size)
    logp = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    best = int(np.argmax(counts))
    evaluation = get_batch_iterator(mixture_or_task_name, task_feature_lengths, eval_split,
                                    global_batch_size, shuffle=False, repeat=False, pack=pack)
    nll = correct = weight = 0.0
    for i, b in enumerate(evaluation):
        if num_eval_batches is not None and i >= num_eval_batches:
            break
        tokens = b["decoder_target_tokens"]
        w = b["decoder_loss_weights"].astype(np.float64)
        _check_ids(tokens, vocab_size)
        nll += float(-(w * logp[tokens]).sum())
        correct += float((w * (tokens == best)).sum())
        weight += float(w.sum())
    if weight == 0:
        raise ValueError(f"{mixture_or_task_name!r} {eval_split!r} gave no tokens to evaluate")
    return {"loss": nll / weight, "accuracy": correct / weight,
            "train_tokens": float(counts.sum()), "eval_tokens": weight}


def _check_ids(tokens: np.ndarray, vocab_size: int) -> None:
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} >= vocab_size={vocab_size}; pass the "
                         f"task vocabulary's vocab_size")


def _weighted_counts(batch: Mapping[str, np.ndarray], vocab_size: int) -> np.ndarray:
    tokens = batch["decoder_target_tokens"]
    _check_ids(tokens, vocab_size)
    w = batch["decoder_loss_weights"].astype(np.float64)
    return np.bincount(tokens.ravel(), weights=w.ravel(), minlength=vocab_size)
