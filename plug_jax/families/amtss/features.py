"""The AMTSS student's tf.data feature converter (registered as ``'amtss_student'`` in
:mod:`plug_jax.data.features`, which declares its dtypes and shapes).

Task features: ``inputs`` (``[CLS] query`` ids), optionally ``token_type_ids``, ``label``,
``lang`` (int scalars), ``teacher_logits`` float ``[N, C]`` and optionally ``teacher_mask``
``[N]`` (1 = teacher present; default all present). One example per row, trimmed /
zero-padded to ``task_feature_lengths['inputs']`` (the student reads the row's first token,
so rows are never packed and ``pack`` has no effect). Model features: ``encoder_input_tokens``,
``encoder_token_types`` (int32 ``[B, L]``), ``label``, ``lang`` (int32 ``[B, 1]``),
``teacher_logits`` (float32 ``[B, N, C]``), ``teacher_mask`` (float32 ``[B, N]``); padding
rows of a finite eval epoch have all-zero tokens and are not counted.
"""
from __future__ import annotations

from typing import Mapping

from plug_jax.data import configure_tensorflow, features

tf = configure_tensorflow()


class StudentFeatureConverter:
    def __init__(self, pack: bool = False):
        self.pack = bool(pack)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
        spec = features.feature_spec("amtss_student", task_feature_lengths)
        return {k: v.shape[0] for k, v in spec.items() if k.startswith("encoder_")}

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
        spec = features.feature_spec("amtss_student", task_feature_lengths)
        n = spec["encoder_input_tokens"].shape[0]
        shape = spec["teacher_logits"].shape
        need = [k for k in ("inputs", "label", "lang", "teacher_logits")
                if k not in ds.element_spec]
        if need:
            raise ValueError(f"the 'amtss_student' feature converter needs the task features "
                             f"{need}; the task gives {sorted(ds.element_spec)}")

        def fit(x):
            x = tf.cast(x, tf.int32)[:n]
            return tf.pad(x, [[0, n - tf.size(x)]])

        def convert(ex):
            logits = tf.ensure_shape(tf.cast(ex["teacher_logits"], tf.float32), shape)
            mask = (tf.cast(ex["teacher_mask"], tf.float32) if "teacher_mask" in ex
                    else tf.ones(shape[:1], tf.float32))
            return {"encoder_input_tokens": fit(ex["inputs"]),
                    "encoder_token_types": (fit(ex["token_type_ids"]) if "token_type_ids" in ex
                                            else tf.zeros([n], tf.int32)),
                    "label": tf.reshape(tf.cast(ex["label"], tf.int32), [1]),
                    "lang": tf.reshape(tf.cast(ex["lang"], tf.int32), [1]),
                    "teacher_logits": logits,
                    "teacher_mask": tf.ensure_shape(mask, shape[:1])}

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
