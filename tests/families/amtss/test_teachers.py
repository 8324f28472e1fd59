"""AMTSS teachers: precomputed and in-step (frozen) logits agree; no gradient to teachers."""
import jax
import numpy as np
import pytest
from flax import linen as nn

from plug_jax.families.amtss import report
from plug_jax.families.amtss.config import AMTSSConfig
from plug_jax.families.amtss.model import AMTSSStudentModel
from plug_jax.families.amtss.teachers import (add_teacher_logits, frozen_teacher_loss_sums,
                                              teacher_logits)
from plug_jax.families.structbert.config import StructBERTConfig
from plug_jax.models import EncoderModel

ENC = StructBERTConfig.from_preset("tiny", vocab_size=64, num_layers=1,
                                   max_position_embeddings=16)


def test_precomputed_and_frozen_teachers_agree():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 64, size=(6, 8)).astype(np.int32)
    ids[:, 0] = 2
    batch = {"encoder_input_tokens": ids, "lang": np.arange(6) % 6,
             "label": rng.integers(0, 5, size=6)}
    teacher = EncoderModel(ENC, family="structbert", objectives=("classify",), num_labels=5)
    init = jax.jit(teacher.init_params)
    teachers = [(teacher, nn.unbox(init(jax.random.PRNGKey(i), batch))) for i in range(2)]
    both = jax.jit(lambda ps: teacher_logits([(teacher, p) for p in ps], batch))
    z = np.asarray(both([p for _, p in teachers]))
    assert z.shape == (6, 2, 5)
    one = jax.jit(teacher.outputs)
    for i, (m, p) in enumerate(teachers):
        np.testing.assert_allclose(z[:, i], np.asarray(one(p, batch)), atol=1e-5)
    assert not np.allclose(z[:, 0], z[:, 1])

    student = AMTSSStudentModel(AMTSSConfig.from_preset("tiny", vocab_size=64, num_layers=1,
                                                        max_position_embeddings=16))
    params = nn.unbox(jax.jit(student.init_params)(jax.random.PRNGKey(5), batch))
    pre = jax.jit(lambda p, b: student.loss_sums(p, b, deterministic=True))(
        params, {**batch, "teacher_logits": z})

    def live(tp0):
        return frozen_teacher_loss_sums(student, params, [(teacher, tp0), teachers[1]], batch,
                                        deterministic=True)["loss"]

    loss, g = jax.jit(jax.value_and_grad(live))(teachers[0][1])
    np.testing.assert_allclose(float(loss), float(pre["loss"]), rtol=1e-5)
    # the teachers are frozen: no gradient reaches them
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(g))
    assert add_teacher_logits(teachers, batch)["teacher_logits"].shape == (6, 2, 5)

    r = report.size_and_speed(student, params, teachers[:1], batch, repeats=1)
    n_teacher = report.model_params(teacher, batch)
    assert r["teachers_params"] == n_teacher
    h = ENC.hidden_size  # the student = a teacher + 6 projections (the same 5 classes)
    assert r["student_params"] == n_teacher + 6 * (h * h + h)
    assert r["student_seconds"] > 0 and "params" in report.format_report(r)
    with pytest.raises(ValueError, match="no teachers"):
        teacher_logits([], batch)
