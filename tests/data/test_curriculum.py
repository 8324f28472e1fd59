"""Curricula: stage switches at global example indices, exact and process-count-free resume."""
import json

import numpy as np
import pytest

LENGTHS = {"targets": 64}
ZH, EN = "gpt3_shoplm_zh_v1", "gpt3_shoplm_en_v1"
B = 4


@pytest.fixture(scope="module")
def cur(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PLUG_JAX_CACHE", str(tmp_path_factory.mktemp("plug_jax_cache")))
    import plug_jax.tasks  # noqa: F401
    from plug_jax.data import curriculum
    # Stage 0 (zh) covers examples [0, 10): batches 0..2 (batch 2 starts at example 8);
    # stage 1 (en) starts at batch 3 (example 12, the first batch start >= 10).
    curriculum.register_curriculum("test_zh_then_en_v1",
                                   [curriculum.Stage(ZH, until_example=10), curriculum.Stage(EN)])
    yield curriculum
    mp.undo()


def _rows(it, n):
    return [next(it)["decoder_target_tokens"] for _ in range(n)]


def test_stages_switch_at_the_first_batch_at_or_after_the_boundary(cur):
    from plug_jax.data import pipeline
    it = cur.CurriculumIterator("test_zh_then_en_v1", LENGTHS, "train", B, seed=3)
    assert it.batch_boundaries == (3,)
    stages = []
    got = []
    for _ in range(6):
        stages.append(it.stage)
        got.append(next(it)["decoder_target_tokens"])
    assert stages == [0, 0, 0, 1, 1, 1]
    zh = _rows(pipeline.get_batch_iterator(ZH, LENGTHS, "train", B, seed=3), 3)
    en = _rows(pipeline.get_batch_iterator(EN, LENGTHS, "train", B, seed=3), 3)
    for a, b in zip(got, zh + en):  # each stage reads its own stream from its start
        np.testing.assert_array_equal(a, b)


def test_resume_inside_stage_two_is_at_the_same_example(cur):
    it = cur.CurriculumIterator("test_zh_then_en_v1", LENGTHS, "train", B, seed=3)
    ref = _rows(it, 7)
    it2 = cur.CurriculumIterator("test_zh_then_en_v1", LENGTHS, "train", B, seed=3)
    _rows(it2, 5)
    state = json.loads(json.dumps(it2.state()))  # what the checkpoint stores
    assert state["stage"] == 1 and state["step"] == 5
    resumed = cur.CurriculumIterator.from_state(state)
    assert resumed.stage == 1 and resumed.stage_name == EN
    for a, b in zip(_rows(resumed, 2), ref[5:7]):
        np.testing.assert_array_equal(a, b)


def test_two_processes_resuming_a_one_process_run_see_the_same_global_sequence(cur):
    ref = _rows(cur.CurriculumIterator("test_zh_then_en_v1", LENGTHS, "train", B, seed=3), 6)
    one = cur.CurriculumIterator("test_zh_then_en_v1", LENGTHS, "train", B, seed=3)
    _rows(one, 2)  # stopped inside stage 1, resumed across the switch on 2 processes
    state = one.state()
    parts = [_rows(cur.CurriculumIterator.from_state(state, process_index=p, process_count=2), 4)
             for p in range(2)]
    for n in range(4):
        assert parts[0][n].shape == (B // 2, 64)
        np.testing.assert_array_equal(np.concatenate([parts[0][n], parts[1][n]]), ref[2 + n])


def test_fractional_boundaries_resolve_against_the_run_length(cur):
    c = cur.Curriculum("frac", (cur.Stage(ZH, until_fraction=0.9), cur.Stage(EN)))
    assert c.boundaries(total_examples=1000) == (900,)
    it = cur.CurriculumIterator(c, LENGTHS, "train", 8, total_examples=100 * 8)
    assert it.batch_boundaries == (90,)
    assert cur.stage_of_batch(89, it.batch_boundaries) == 0
    assert cur.stage_of_batch(90, it.batch_boundaries) == 1
    with pytest.raises(ValueError, match="total_examples"):
        c.boundaries()


def test_registered_curricula_and_bad_definitions(cur):
    assert cur.register_curriculum("test_zh_then_en_v1",
                                   [cur.Stage(ZH, until_example=10), cur.Stage(EN)]) is \
        cur.get_curriculum("test_zh_then_en_v1")
    with pytest.raises(ValueError, match="already registered"):
        cur.register_curriculum("test_zh_then_en_v1", [cur.Stage(ZH, until_example=20),
                                                       cur.Stage(EN)])
    with pytest.raises(ValueError, match="needs until_example"):
        cur.Curriculum("x", (cur.Stage(ZH), cur.Stage(EN)))
    with pytest.raises(ValueError, match="open-ended"):
        cur.Curriculum("x", (cur.Stage(ZH, until_example=4),))
    with pytest.raises(ValueError, match="strictly increasing"):
        cur.Curriculum("x", (cur.Stage(ZH, until_example=8), cur.Stage(EN, until_example=8),
                             cur.Stage(ZH))).boundaries()
    with pytest.raises(ValueError, match="unknown curriculum"):
        cur.get_curriculum("no_such_curriculum")


def test_training_loop_records_the_stage_and_resumes_in_it(cur, tmp_path):
    from plug_jax import models
    from plug_jax.trainer import loop
    from plug_jax.trainer.metrics import read_metrics
    data = loop.DatasetConfig("test_zh_then_en_v1", LENGTHS, batch_size=B)
    mesh = loop.MeshConfig((1, 1, 1, 1), rules="fsdp", num_devices=1)
    kw = dict(model=models.gpt3("tiny"), train_dataset_cfg=data, mesh=mesh,
              learning_rate=3e-3, log_period=1, checkpoint_period=4, peak_flops=1e11,
              async_checkpoints=False)
    loop.train(model_dir=str(tmp_path / "full"), train_steps=6, **kw)
    loop.train(model_dir=str(tmp_path / "cut"), train_steps=4, **kw)   # stops in stage 1
    loop.train(model_dir=str(tmp_path / "cut"), train_steps=6, **kw)   # resumes there

    def rows(d):
        return {r["step"]: r for r in read_metrics(str(d)) if "loss" in r}
    full, cut = rows(tmp_path / "full"), rows(tmp_path / "cut")
    assert [full[s]["data_stage"] for s in range(1, 7)] == [0, 0, 0, 1, 1, 1]
    assert [cut[s]["data_stage"] for s in (5, 6)] == [1, 1]
    assert [cut[s]["loss"] for s in (5, 6)] == [full[s]["loss"] for s in (5, 6)]


def test_a_curriculum_has_its_first_stages_vocabulary(cur):
    from plug_jax.data import pipeline
    from plug_jax.data.vocab import vocab_fingerprint
    assert vocab_fingerprint(pipeline.task_vocabulary("test_zh_then_en_v1")) == \
        vocab_fingerprint(pipeline.task_vocabulary(ZH))


def test_a_mixture_stage_reads_by_index_and_old_positions_resume_on_the_stream(cur):
    """PALM 2.0's curriculum: stage 1 is a mixture. It is read by index now; a position saved
    before mixtures could be (no ``index_mixtures``) resumes that stage on the stream it was
    written on."""
    lengths = {"inputs": 48, "targets": 32}
    kw = dict(seed=2, converter="encdec", pack=False, example_boundaries=(8, 16))
    it = cur.CurriculumIterator("palm2_pretrain_zh_v1", lengths, "train", B, **kw)
    _rows(it, 3)
    assert it.stage == 1 and it.stage_name == "palm2_denoise_zh_v1"
    rows = _rows(it, 1)
    assert it._inner.index_based
    state = json.loads(json.dumps(it.state()))
    assert state["index_mixtures"] is True and state["step"] == 3 + 1
    again = cur.CurriculumIterator.from_state({**state, "step": 3})
    np.testing.assert_array_equal(_rows(again, 1)[0], rows[0])
    assert again._inner.index_based
    old = {k: v for k, v in state.items() if k != "index_mixtures"}
    legacy = cur.CurriculumIterator.from_state({**old, "step": 3})
    assert legacy.stage == 1 and not legacy._inner.index_based
    stream = _rows(cur.CurriculumIterator("palm2_pretrain_zh_v1", lengths, "train", B,
                                          index_mixtures=False, **kw), 4)[3]
    np.testing.assert_array_equal(_rows(legacy, 1)[0], stream)


def test_index_based_false_keeps_every_stage_on_the_stream(cur):
    """The trainer's ``index_based`` (gin INDEX_BASED_INPUT) reaches a curriculum: False reads
    every stage on the stream, is kept in the position, and a resume stays on the stream."""
    from plug_jax.data import pipeline
    from plug_jax.trainer import loop
    cfg = loop.DatasetConfig("test_zh_then_en_v1", LENGTHS, batch_size=B, index_based=False,
                             seed=1)
    it = loop._batch_iterator(cfg, repeat=True)
    assert isinstance(it, cur.CurriculumIterator) and it.index_based is False
    rows = _rows(it, 4)  # stage 0: batches 0..2, stage 1: batch 3
    assert it.stage == 1 and not it._inner.index_based
    state = json.loads(json.dumps(it.state()))
    assert state["index_based"] is False
    again = cur.CurriculumIterator.from_state({**state, "step": 3})
    assert not again._inner.index_based
    np.testing.assert_array_equal(_rows(again, 1)[0], rows[3])
    # Stage 1's rows are the stage task's own stream batch 0, not its batch 0 by index.
    stream = pipeline.get_batch_iterator(EN, LENGTHS, "train", B, seed=1, index_based=False)
    np.testing.assert_array_equal(rows[3], next(stream)["decoder_target_tokens"])
    assert not np.array_equal(rows[3], next(pipeline.get_batch_iterator(
        EN, LENGTHS, "train", B, seed=1))["decoder_target_tokens"])
    # The default reads the stages by index; a position saved without the key keeps it.
    default = loop._batch_iterator(loop.DatasetConfig("test_zh_then_en_v1", LENGTHS,
                                                      batch_size=B, seed=1), repeat=True)
    assert default.index_based is None and default._inner.index_based
    old = {k: v for k, v in default.state().items() if k != "index_based"}
    assert cur.CurriculumIterator.from_state(old)._inner.index_based
