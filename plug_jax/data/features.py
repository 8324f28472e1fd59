"""What a feature converter gives the model: a dtype and a shape per feature (no TensorFlow).

A *feature converter* turns a seqio task's examples into model features (see
``plug_jax.data.pipeline``). Its tf.data implementation needs TensorFlow; what it produces
does not, and the trainer (``loop._dummy_batch``), ``plug-plan`` and the batch shardings
need exactly that before any data exists. So every converter is registered here with

* ``spec_fn(task_feature_lengths[, pack=...]) -> {name: FeatureSpec}``: plain Python, and
* ``tf_impl``: the tf.data implementation, either a ``'module:attr'`` string (imported only
  when a pipeline is built) or a callable; either way ``tf_impl(pack=pack)`` must return an
  object with ``__call__(ds, task_feature_lengths)`` (unbatched examples in, unbatched model
  features out; seqio's ``FeatureConverter`` classes qualify).

:class:`FeatureSpec` ``(name, dtype, shape)`` gives the per-example shape (no batch dim).
A dim may be an ``int`` (fixed) or the name of a task feature: ``("targets",)`` is the
``'targets'`` length, and a task length that is itself a tuple expands to its dims, so
``FeatureSpec("image", "float32", ("image",))`` with ``{'image': (224, 224, 3)}`` is
``[224, 224, 3]``. :func:`feature_spec` resolves the dims.

Registered here: ``decoder``, ``encdec``, ``prefix_lm`` (seqio's converters), ``encoder``,
``encdec_mlm`` (``plug_jax.data.pipeline``), ``image_text`` and ``video_text``
(``plug_jax.data.multimodal``), ``amtss_student`` (``plug_jax.families.amtss.features``).
Importing this module never imports TensorFlow or seqio.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import re
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np

Dim = Union[int, str]
Lengths = Mapping[str, Union[int, Sequence[int]]]


# ------------------------------------------------------------------------- FeatureSpec
@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One model feature: ``name``, numpy ``dtype`` and per-example ``shape``.

    ``shape`` entries are ints or task-feature names (resolved by :meth:`resolve`).
    """

    name: str
    dtype: Any
    shape: tuple = ()

    def __post_init__(self):
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise ValueError(f"FeatureSpec {self.name!r}: dtype {self.dtype!r} is not a numpy "
                             f"dtype; use e.g. 'int32' or 'float32'") from None
        shape = (self.shape,) if isinstance(self.shape, (int, str, np.integer)) else self.shape
        shape = tuple(d if isinstance(d, str) else int(d) for d in shape)
        if any(isinstance(d, int) and d < 0 for d in shape):
            raise ValueError(f"FeatureSpec {self.name!r}: negative dim in shape {shape}")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", shape)

    @property
    def is_resolved(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def resolve(self, task_feature_lengths: Lengths, converter: str = "?") -> "FeatureSpec":
        """This spec with every named dim replaced by its task length."""
        shape: list[int] = []
        for d in self.shape:
            if isinstance(d, int):
                shape.append(d)
                continue
            if d not in task_feature_lengths:
                raise ValueError(
                    f"converter {converter!r} needs a {d!r} length in task_feature_lengths "
                    f"{dict(task_feature_lengths)} (for feature {self.name!r}); fix: add "
                    f"{d!r} to the lengths")
            v = task_feature_lengths[d]
            shape.extend(_as_dims(v, d))
        return FeatureSpec(self.name, self.dtype, tuple(shape))

    def batched(self, batch_size: int) -> tuple[int, ...]:
        """``(batch_size, *shape)`` of a resolved spec."""
        self._need_resolved()
        return (int(batch_size),) + self.shape

    def zeros(self, batch_size: int) -> np.ndarray:
        """All-zero ``[batch_size, *shape]`` array of this dtype."""
        return np.zeros(self.batched(batch_size), self.dtype)

    def _need_resolved(self):
        if not self.is_resolved:
            raise ValueError(f"FeatureSpec {self.name!r} has unresolved dims {self.shape}; "
                             f"call feature_spec(converter, task_feature_lengths)")


def _as_dims(value, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),)
    if isinstance(value, (tuple, list)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return tuple(int(v) for v in value)
    raise ValueError(f"task feature length {name!r}={value!r} is not an int or a tuple of "
                     f"ints; fix: e.g. {{'targets': 128}} or {{'image': (224, 224, 3)}}")


def normalize_lengths(task_feature_lengths: Lengths) -> dict[str, Union[int, tuple[int, ...]]]:
    """``{name: int | tuple of ints}`` (lists from a JSON state become tuples)."""
    out: dict[str, Union[int, tuple[int, ...]]] = {}
    for k, v in dict(task_feature_lengths).items():
        dims = _as_dims(v, k)
        out[k] = dims if isinstance(v, (tuple, list)) else dims[0]
    return out


# ---------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class ConverterEntry:
    name: str
    spec_fn: Callable[..., Mapping[str, FeatureSpec]]
    tf_impl: Union[str, Callable[..., Any]]
    description: str = ""


_REGISTRY: dict[str, ConverterEntry] = {}


def _identity(obj) -> Any:
    """What makes two registrations "the same": a 'module:attr' string, or a function's
    module and qualified name (so re-importing the registering module is not a conflict),
    or the object itself for lambdas and nested functions."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, functools.partial):
        return ("partial", _identity(obj.func), obj.args,
                tuple(sorted(obj.keywords.items())))
    qual = getattr(obj, "__qualname__", None)
    mod = getattr(obj, "__module__", None)
    if qual and mod and "<" not in qual:
        return (mod, qual)
    return obj


def register_feature_converter(name: str, spec_fn: Callable[..., Mapping[str, FeatureSpec]],
                               tf_impl: Union[str, Callable[..., Any]], *,
                               description: str = "") -> None:
    """Register converter ``name`` (idempotent: the same functions again are a no-op).

    ``spec_fn(task_feature_lengths)`` (optionally with a ``pack`` keyword) returns the model
    features as :class:`FeatureSpec` s, plain Python only. ``tf_impl`` is a
    ``'module:attr'`` string or a callable; ``tf_impl(pack=pack)`` gives the tf.data
    converter. Another ``spec_fn`` or ``tf_impl`` under a registered name raises.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"feature converter name {name!r} is not lower-case [a-z0-9_]")
    if not callable(spec_fn):
        raise ValueError(f"feature converter {name!r}: spec_fn must be callable, got "
                         f"{spec_fn!r}")
    if isinstance(tf_impl, str):
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", tf_impl):
            raise ValueError(f"feature converter {name!r}: tf_impl {tf_impl!r} is not "
                             f"'module:attr' (e.g. 'seqio:DecoderFeatureConverter')")
    elif not callable(tf_impl):
        raise ValueError(f"feature converter {name!r}: tf_impl must be a 'module:attr' string "
                         f"or a callable, got {tf_impl!r}")
    old = _REGISTRY.get(name)
    if old is not None:
        if (_identity(old.spec_fn) == _identity(spec_fn)
                and _identity(old.tf_impl) == _identity(tf_impl)):
            return
        raise ValueError(f"feature converter {name!r} is already registered with other "
                         f"functions ({_describe(old.spec_fn)}, {_describe(old.tf_impl)}); "
                         f"fix: register yours under a new name")
    _REGISTRY[name] = ConverterEntry(name, spec_fn, tf_impl, description)


def _describe(obj) -> str:
    if isinstance(obj, str):
        return obj
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def converter_names() -> list[str]:
    """Registered converter names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> ConverterEntry:
    if name not in _REGISTRY:
        import difflib  # noqa: PLC0415
        close = difflib.get_close_matches(str(name), sorted(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown feature converter {name!r}{hint}; use one of "
                         f"{sorted(_REGISTRY)} or register it with "
                         f"plug_jax.data.features.register_feature_converter")
    return _REGISTRY[name]


def _takes_pack(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "pack" or p.kind is p.VAR_KEYWORD for p in params)


def feature_spec(name: str, task_feature_lengths: Lengths, pack: bool = True
                 ) -> dict[str, FeatureSpec]:
    """``{feature: FeatureSpec}`` (resolved shapes) that converter ``name`` gives for
    ``task_feature_lengths`` (packed layout unless ``pack=False``)."""
    entry = _entry(name)
    lengths = normalize_lengths(task_feature_lengths)
    specs = (entry.spec_fn(lengths, pack=bool(pack)) if _takes_pack(entry.spec_fn)
             else entry.spec_fn(lengths))
    out = {}
    for key, spec in dict(specs).items():
        if not isinstance(spec, FeatureSpec) or spec.name != key:
            raise ValueError(f"feature converter {name!r}: spec_fn gave {key!r} -> {spec!r}; "
                             f"it must map each name to FeatureSpec(name, dtype, shape)")
        out[key] = spec.resolve(lengths, name)
    return out


def tf_converter(name: str, pack: bool = True):
    """The tf.data converter object of ``name`` (imports its module: TensorFlow)."""
    impl = resolve_tf_impl(name)
    return impl(pack=bool(pack))


def resolve_tf_impl(name: str):
    """The factory behind ``name``'s ``tf_impl`` (a ``'module:attr'`` string is imported)."""
    impl = _entry(name).tf_impl
    if isinstance(impl, str):
        module, attr = impl.split(":")
        try:
            impl = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"feature converter {name!r}: cannot import {_entry(name).tf_impl!r}"
                             f" ({type(e).__name__}: {e})") from None
    return impl


class ConverterView(Mapping):
    """Read-only ``{name: tf.data converter factory}`` over the registry (imports lazily)."""

    def __getitem__(self, name: str):
        if name not in _REGISTRY:
            raise KeyError(name)
        return resolve_tf_impl(name)

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY

    def __iter__(self) -> Iterator[str]:
        return iter(converter_names())

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"ConverterView({converter_names()})"


# ------------------------------------------------------------------ built-in converters
DECODER_FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights")
PACKING_SUFFIXES = ("_segment_ids", "_positions")


def _need(name: str, lengths: Lengths, *keys: str, example: str) -> None:
    missing = [k for k in keys if k not in lengths]
    if missing:
        which = (" and ".join(repr(k) for k in missing) + " lengths" if len(missing) > 1 else
                 f"{'an' if missing[0][:1] in 'aeiou' else 'a'} {missing[0]!r} length")
        raise ValueError(f"the {name!r} feature converter needs {which} in "
                         f"task_feature_lengths {dict(lengths)}; fix: e.g. {example}")


def _tokens(names: Sequence[str], dim: Dim) -> dict[str, FeatureSpec]:
    return {n: FeatureSpec(n, "int32", (dim,)) for n in names}


def _packing(prefix: str, dim: Dim) -> dict[str, FeatureSpec]:
    return _tokens([prefix + s for s in PACKING_SUFFIXES], dim)


def decoder_spec(lengths: Lengths, pack: bool = True) -> dict[str, FeatureSpec]:
    """seqio ``DecoderFeatureConverter`` (and the pipeline's per-batch LM path)."""
    _need("decoder", lengths, "targets", example="{'targets': 256}")
    return {**_tokens(DECODER_FEATURES, "targets"),
            **(_packing("decoder", "targets") if pack else {})}


def encdec_spec(lengths: Lengths, pack: bool = True) -> dict[str, FeatureSpec]:
    """seqio ``EncDecFeatureConverter``."""
    _need("encdec", lengths, "inputs", "targets", example="{'inputs': 512, 'targets': 128}")
    return {**_tokens(("encoder_input_tokens",), "inputs"),
            **_tokens(DECODER_FEATURES, "targets"),
            **(_packing("encoder", "inputs") if pack else {}),
            **(_packing("decoder", "targets") if pack else {})}


def prefix_lm_spec(lengths: Lengths, pack: bool = True) -> dict[str, FeatureSpec]:
    """seqio ``PrefixLMFeatureConverter``: inputs and targets in one decoder row."""
    _need("prefix_lm", lengths, "inputs", "targets", example="{'inputs': 128, 'targets': 128}")
    n = _as_dims(lengths["inputs"], "inputs")[0] + _as_dims(lengths["targets"], "targets")[0]
    return {**_tokens(DECODER_FEATURES + ("decoder_causal_attention",), n),
            **(_packing("decoder", n) if pack else {})}


ENCODER_FEATURES = ("encoder_input_tokens", "encoder_token_types", "mlm_targets",
                    "mlm_weights", "structural_weights")


def encoder_spec(lengths: Lengths) -> dict[str, FeatureSpec]:
    """``pipeline.EncoderFeatureConverter`` (never packed)."""
    _need("encoder", lengths, "inputs", example="{'inputs': 128}")
    return {**_tokens(ENCODER_FEATURES, "inputs"), "label": FeatureSpec("label", "int32", (1,))}


def encdec_mlm_spec(lengths: Lengths, pack: bool = True) -> dict[str, FeatureSpec]:
    """``pipeline.EncDecMlmFeatureConverter``: ``encdec`` + the encoder's MLM targets."""
    _need("encdec_mlm", lengths, "inputs", "targets",
          example="{'inputs': 512, 'targets': 128}")
    return {**encdec_spec(lengths, pack),
            **_tokens(("encoder_mlm_targets", "encoder_mlm_weights"), "inputs")}


def _media_text_spec(name: str, media: str, rank: int, example: str, lengths: Lengths
                     ) -> dict[str, FeatureSpec]:
    if media not in lengths or "targets" not in lengths:
        _need(name, lengths, media, "targets", example=example)
    if not isinstance(lengths[media], tuple) or len(lengths[media]) != rank:
        raise ValueError(f"the {name!r} feature converter needs {media!r} as a "
                         f"{rank}-tuple in task_feature_lengths, got {lengths[media]!r}; "
                         f"fix: e.g. {example}")
    out = {media: FeatureSpec(media, "float32", (media,)), **_tokens(DECODER_FEATURES, "targets")}
    if "inputs" in lengths:
        out.update(_tokens(("encoder_input_tokens",), "inputs"))
    for label in ("question_type",):  # multimodal.EXAMPLE_LABELS: per-example int labels
        if label in lengths:
            out[label] = FeatureSpec(label, "int32", ())
    return out


def image_text_spec(lengths: Lengths) -> dict[str, FeatureSpec]:
    """``multimodal.ImageTextFeatureConverter``: ``image`` float32 ``[H, W, C]`` with
    ``(H, W, C) = lengths['image']``, the caption's ``decoder_*`` tokens and, with an
    ``'inputs'`` length, the prompt / question as ``encoder_input_tokens``."""
    return _media_text_spec("image_text", "image", 3,
                            "{'image': (224, 224, 3), 'targets': 32}", lengths)


def video_text_spec(lengths: Lengths) -> dict[str, FeatureSpec]:
    """``multimodal.VideoTextFeatureConverter``: ``frames`` float32 ``[T, H, W, C]``."""
    return _media_text_spec("video_text", "frames", 4,
                            "{'frames': (8, 224, 224, 3), 'targets': 32}", lengths)


def amtss_student_spec(lengths: Lengths) -> dict[str, FeatureSpec]:
    """``plug_jax.families.amtss.features.StudentFeatureConverter`` (the AMTSS student, never
    packed): the encoder's tokens and token types, ``label`` and ``lang`` ``[1]``, and the
    precomputed ``teacher_logits`` float32 ``[N, C]`` with ``teacher_mask`` float32 ``[N]``,
    ``(N, C) = lengths['teacher_logits']`` (teachers, classes)."""
    _need("amtss_student", lengths, "inputs", "teacher_logits",
          example="{'inputs': 32, 'teacher_logits': (6, 5)}")
    dims = _as_dims(lengths["teacher_logits"], "teacher_logits")
    if len(dims) != 2:
        raise ValueError(f"the 'amtss_student' feature converter needs 'teacher_logits' as "
                         f"(teachers, classes) in task_feature_lengths, got "
                         f"{lengths['teacher_logits']!r}; fix: e.g. (6, 5)")
    return {**_tokens(("encoder_input_tokens", "encoder_token_types"), "inputs"),
            "label": FeatureSpec("label", "int32", (1,)),
            "lang": FeatureSpec("lang", "int32", (1,)),
            "teacher_logits": FeatureSpec("teacher_logits", "float32", dims),
            "teacher_mask": FeatureSpec("teacher_mask", "float32", dims[:1])}


register_feature_converter("decoder", decoder_spec, "seqio:DecoderFeatureConverter",
                           description="decoder-only LM (GPT-3)")
register_feature_converter("encdec", encdec_spec, "seqio:EncDecFeatureConverter",
                           description="encoder-decoder (PALM, PLUG)")
register_feature_converter("prefix_lm", prefix_lm_spec, "seqio:PrefixLMFeatureConverter",
                           description="decoder-only with a bidirectional prefix")
register_feature_converter("encoder", encoder_spec,
                           "plug_jax.data.pipeline:EncoderFeatureConverter",
                           description="encoder-only, one example per row (StructBERT)")
register_feature_converter("encdec_mlm", encdec_mlm_spec,
                           "plug_jax.data.pipeline:EncDecMlmFeatureConverter",
                           description="encdec + encoder MLM targets (PLUG stage 2)")
register_feature_converter("image_text", image_text_spec,
                           "plug_jax.data.multimodal:ImageTextFeatureConverter",
                           description="image + caption / answer tokens (mPLUG, M6)")
register_feature_converter("video_text", video_text_spec,
                           "plug_jax.data.multimodal:VideoTextFeatureConverter",
                           description="video frames + caption / answer tokens (HiTeA)")
register_feature_converter("amtss_student", amtss_student_spec,
                           "plug_jax.families.amtss.features:StudentFeatureConverter",
                           description="encoder tokens + label, lang and the teachers' "
                                       "logits [N, C] (AMTSS student)")
