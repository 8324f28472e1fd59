"""AMTSS's :class:`~plug_jax.families.spec.FamilySpec` (``plug_jax.families.amtss.FAMILY``).

One network kind, ``amtss_student`` (:class:`~plug_jax.families.amtss.network.AMTSSStudent`,
trained by :class:`~plug_jax.families.amtss.model.AMTSSStudentModel` on the
``amtss_student`` feature converter). The teachers are StructBERT classifiers
(``EncoderModel(family='structbert', objectives=('classify',))``), so they need nothing here.
No converter: the student's encoder and pooler carry StructBERT's parameter names, so a
StructBERT checkpoint (or a converted one) restores into them with ``params_only``.
"""
from __future__ import annotations

from plug_jax.families.amtss.config import AMTSSConfig
from plug_jax.families.spec import Experiment, FamilySpec, PlanRow

KIND = "amtss_student"


def student_network(config, **_):
    from plug_jax.families.amtss.network import AMTSSStudent
    return AMTSSStudent(config)


def student_flops(config, batch: int, lengths) -> float:
    """6 N per token for the encoder's weights (embeddings excluded), the head and the
    language projections once per example, plus BERT's attention term
    (:meth:`AMTSSStudentModel.flops_per_step`)."""
    from plug_jax.families.amtss.model import AMTSSStudentModel
    return AMTSSStudentModel(config).flops_per_step(batch, lengths)


def describe(c) -> str:
    e = c.encoder
    return (f"preset={c.preset} layers={e.num_layers} heads={e.num_heads} "
            f"hidden={e.hidden_size} vocab={e.vocab_size} languages={','.join(c.languages)} "
            f"labels={c.num_labels}")


_BASE = ("TASK_FEATURE_LENGTHS={'inputs': 128, 'teacher_logits': (6, 5)}",
         "ACTIVATION_DTYPE='bfloat16'")


def plan_rows() -> tuple[PlanRow, ...]:
    # The base student (XLM-R-base shape, ~281M with the head; no student size is
    # published [guess]) distilled from precomputed teacher logits: 128-token queries.
    return (PlanRow("amtss-base student / 1xH100", "models/amtss/base.gin", "data:1",
                    "h100_80gb", "not published [guess: 281M]", "1 H100",
                    (*_BASE, "BATCH_SIZE=256"), "partitioning/dp.gin"),
            PlanRow("amtss-base student / 8xH100", "models/amtss/base.gin", "data:8",
                    "h100_80gb", "not published [guess: 281M]", "1 host x 8 H100",
                    (*_BASE, "BATCH_SIZE=2048"), "partitioning/dp.gin"))


# The contract's run: the student on the committed 48 / 12 / 12-example teacher-logits
# fixture (tests/families/amtss/testdata; written by tests/families/amtss/test_tasks.py).
CONTRACT_LOGITS = "tests/families/amtss/testdata/contract_teacher_logits.npz"
_SHORT = ("TRAIN_STEPS=2", "BATCH_SIZE=8", "EVAL_STEPS=1", "LOG_PERIOD=1",
          f"TEACHER_LOGITS='{CONTRACT_LOGITS}'")

FAMILY = FamilySpec(
    name="amtss",
    config_cls=AMTSSConfig,
    listing_order=9,
    networks={KIND: student_network},
    flops={KIND: student_flops},
    converters=(),
    plan_rows=plan_rows,
    feature_converters=("amtss_student",),
    experiments=(Experiment("experiments/amtss/shop_student_small.gin", _SHORT),
                 Experiment("experiments/amtss/shop_student_uniform_small.gin", _SHORT)),
    extras={"describe": describe},
)
