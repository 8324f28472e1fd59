"""Shop World encoder-decoder tasks and the registered PALM 2.0 / PLUG stage-2 curricula."""
import numpy as np
import pytest

L = {"inputs": 128, "targets": 128}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PLUG_JAX_CACHE", str(tmp_path_factory.mktemp("plug_jax_cache")))
    import plug_jax.tasks  # noqa: F401
    from plug_jax.data import curriculum, pipeline
    yield curriculum, pipeline
    mp.undo()


def _batch(pipeline, task, n=2, pack=False, lengths=L):
    it = pipeline.get_batch_iterator(task, lengths, "train", n, converter="encdec", pack=pack,
                                     seed=5)
    return next(it), pipeline.task_vocabulary(task)


def _real(row):
    return [int(t) for t in row if t != 0]


def test_mlm_task_masks_with_the_last_extra_id(env):
    _, pipeline = env
    b, v = _batch(pipeline, "palm2_mlm_zh_v1", n=8)
    mask, sp_size = v.vocab_size - 1, v.vocab_size - v.extra_ids
    ins, tgt = b["encoder_input_tokens"], b["decoder_target_tokens"]
    assert (ins == mask).sum() > 0
    assert (tgt >= sp_size).sum() == 0  # targets are the original pieces
    # Random replacements stay inside the SentencePiece pieces: no other extra id appears.
    assert ((ins >= sp_size) & (ins != mask)).sum() == 0
    changed = sum(int((np.asarray(_real(i)) != np.asarray(_real(t))).sum())
                  for i, t in zip(ins, tgt) if len(_real(i)) == len(_real(t)))
    total = sum(len(_real(t)) for t in tgt)
    assert 0.08 < changed / total < 0.2  # ~15% selected, ~90% of those visibly changed


def test_sentence_shuffle_task_permutes_sentences(env):
    _, pipeline = env
    long = {"inputs": 512, "targets": 512}
    b, v = _batch(pipeline, "palm2_sentshuffle_zh_v1", n=4, lengths=long)
    sep = v.tokenizer.piece_to_id("\n")
    checked = 0
    for i, t in zip(b["encoder_input_tokens"], b["decoder_target_tokens"]):
        ii, tt = _real(i), _real(t)
        if len(tt) >= 511 or len(ii) >= 511:
            continue  # truncated: not a whole document
        def sents(x):
            x = [y for y in x if y != 1]
            out, cur = [], []
            for y in x:
                if y == sep:
                    out.append(tuple(cur)) if cur else None
                    cur = []
                else:
                    cur.append(y)
            if cur:
                out.append(tuple(cur))
            return out
        assert sorted(sents(ii)) == sorted(sents(tt)) and len(sents(tt)) > 3
        assert sents(ii) != sents(tt) or len(sents(tt)) < 3
        checked += 1
    assert checked == 4


def test_ar_and_plug_gen_split_context_and_continuation(env):
    _, pipeline = env
    b, v = _batch(pipeline, "palm2_ar_zh_v1", n=4)
    for i, t in zip(b["encoder_input_tokens"], b["decoder_target_tokens"]):
        assert len(_real(i)) > 1 and len(_real(t)) > 1
        assert v.vocab_size - 1 not in _real(i)  # no masking in the AR stage
    b, _ = _batch(pipeline, "plug_gen_zh_v1", n=8)
    lens = [len(_real(i)) for i in b["encoder_input_tokens"]]
    assert all(2 <= n <= 128 for n in lens)


def test_palm2_curriculum_runs_mlm_then_denoising_then_ar(env):
    curriculum, _ = env
    it = curriculum.CurriculumIterator("palm2_pretrain_zh_v1", L, "train", 2,
                                       total_examples=12, converter="encdec")
    assert it.batch_boundaries == (2, 4)
    names, masks = [], []
    for _ in range(6):
        names.append(it.stage_name)
        masks.append(bool((next(it)["encoder_input_tokens"] == 1123).any()))
    assert names == ["palm2_mlm_zh_v1"] * 2 + ["palm2_denoise_zh_v1"] * 2 + ["palm2_ar_zh_v1"] * 2
    assert masks[0] and masks[1] and not masks[4] and not masks[5]


def test_plug_stage2_drops_mlm_for_the_last_tenth(env):
    curriculum, pipeline = env
    cur = curriculum.get_curriculum("plug_stage2_zh_v1")
    assert cur.boundaries(total_examples=1000) == (900,)
    assert [st.mixture_or_task_name for st in cur.stages] == ["plug_genmlm_zh_v1",
                                                              "plug_gen_zh_v1"]
    import seqio
    mix = seqio.get_mixture_or_task("plug_genmlm_zh_v1")
    assert sorted(t.name for t in mix.tasks) == ["plug_gen_zh_v1", "plug_mlm_zh_v1"]
    it = curriculum.CurriculumIterator("plug_stage2_zh_v1", L, "train", 2, total_examples=20,
                                       converter="encdec")
    stages = []
    for _ in range(10):
        stages.append(it.stage)
        next(it)
    assert stages == [0] * 9 + [1]
