"""plug_jax.decoding.process_logits (repetition penalty, no-repeat n-gram, minimum length)
equals transformers' logits processors, and generate / beam_search apply it (issue 26)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers import (MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor,
                          NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor)

from plug_jax import decoding as D


# ------------------------------------------------------------------ the pure function
def _histories(rng, rows, vocab, buffer, tail=3):
    """Random token histories with many repeats, each placed at a random offset of a
    ``buffer``-wide array (garbage around it, masked out), as the decoding loops see them
    (left padding before, unwritten slots after). Odd rows end with a copy of their first
    ``tail`` tokens (so an n-gram with ``n = tail + 1`` is about to repeat)."""
    seqs = rng.integers(0, vocab, (rows, buffer))  # garbage outside the history
    mask = np.zeros((rows, buffer), bool)
    hist = []
    for r in range(rows):
        length = int(rng.integers(0, buffer + 1))
        start = int(rng.integers(0, buffer - length + 1))
        h = rng.integers(0, max(2, vocab // 3), length)  # a few ids only: repeats
        if r % 2 and 0 < tail and length >= 2 * tail + 1:
            h[length - tail:] = h[:tail]
        seqs[r, start:start + length], mask[r, start:start + length] = h, True
        hist.append(h)
    return seqs, mask, hist


def _hf(processor, history, logits_row):
    ids = torch.as_tensor(np.asarray(history, np.int64))[None]
    return processor(ids, torch.as_tensor(logits_row)[None].clone())[0].numpy()


@pytest.mark.parametrize("penalty", [1.2, 0.7, 2.5])
def test_repetition_penalty_equals_transformers(penalty):
    rng = np.random.default_rng(0)
    rows, vocab = 12, 17
    seqs, mask, hist = _histories(rng, rows, vocab, 24)
    logits = rng.normal(0, 3, (rows, vocab)).astype(np.float32)
    logits[0, :3] = 0.0  # zero logits of present tokens stay zero
    got = np.asarray(D.process_logits(jnp.asarray(logits), seqs, mask, 0,
                                      repetition_penalty=penalty))
    proc = RepetitionPenaltyLogitsProcessor(penalty)
    # A traced penalty (what the decoding jits pass) divides exactly as torch does.
    traced = np.asarray(jax.jit(lambda p: D.process_logits(
        jnp.asarray(logits), seqs, mask, 0, repetition_penalty=p))(jnp.float32(penalty)))
    for r in range(rows):
        want = _hf(proc, hist[r], logits[r])
        np.testing.assert_array_equal(traced[r], want)
        # A Python float is a constant to XLA, which divides by multiplying with its
        # reciprocal: 1 ulp at most.
        np.testing.assert_allclose(got[r], want, rtol=1.2e-7, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_no_repeat_ngram_equals_transformers(n):
    rng = np.random.default_rng(n)
    rows, vocab = 16, 11
    seqs, mask, hist = _histories(rng, rows, vocab, 20, tail=n - 1)
    logits = rng.normal(0, 1, (rows, vocab)).astype(np.float32)
    got = np.asarray(D.process_logits(jnp.asarray(logits), seqs, mask, 0,
                                      no_repeat_ngram_size=n))
    proc = NoRepeatNGramLogitsProcessor(n)
    banned_some = 0
    for r in range(rows):
        want = _hf(proc, hist[r], logits[r])
        np.testing.assert_array_equal(got[r], want)
        banned_some += int(np.isinf(want).any())
    assert banned_some >= 3  # the histories really repeat n-grams


def test_min_length_equals_transformers():
    rng = np.random.default_rng(1)
    vocab, eos, prompt_len = 9, 2, 4
    logits = rng.normal(0, 1, (1, vocab)).astype(np.float32)
    for min_length in (0, 1, 2, 5):
        for t in range(7):  # t tokens generated so far
            got = np.asarray(D.process_logits(
                jnp.asarray(logits), np.zeros((1, 1), np.int32), np.zeros((1, 1), bool), t,
                eos_id=eos, min_length=min_length))
            # Decoder-only: input_ids = prompt + t generated tokens.
            ids = rng.integers(3, vocab, prompt_len + t)
            new = MinNewTokensLengthLogitsProcessor(prompt_len, max(min_length - 1, 0), eos)
            np.testing.assert_array_equal(got[0], _hf(new, ids, logits[0]))
            # Encoder-decoder: input_ids = decoder start token + t generated tokens.
            start_ids = np.concatenate([[0], ids[:t]])
            np.testing.assert_array_equal(
                got[0], _hf(MinLengthLogitsProcessor(min_length, eos), start_ids, logits[0]))
            assert np.isinf(got[0, eos]) == (t + 1 < min_length)
    # Without an EOS id there is nothing to ban.
    out = D.process_logits(jnp.asarray(logits), np.zeros((1, 1), np.int32),
                           np.zeros((1, 1), bool), 0, min_length=5)
    np.testing.assert_array_equal(np.asarray(out), logits)


def test_all_processors_together_and_off():
    rng = np.random.default_rng(3)
    rows, vocab, eos = 8, 13, 1
    seqs, mask, hist = _histories(rng, rows, vocab, 18)
    logits = rng.normal(0, 2, (rows, vocab)).astype(np.float32)
    t = np.array([len(h) for h in hist])  # all of the history generated (no prompt)
    got = np.asarray(D.process_logits(jnp.asarray(logits), seqs, mask, jnp.asarray(t),
                                      eos_id=eos, repetition_penalty=1.3,
                                      no_repeat_ngram_size=3, min_length=8))
    procs = transformers.LogitsProcessorList([
        RepetitionPenaltyLogitsProcessor(1.3), NoRepeatNGramLogitsProcessor(3),
        MinNewTokensLengthLogitsProcessor(0, 7, eos)])
    for r in range(rows):
        np.testing.assert_allclose(got[r], _hf(procs, hist[r], logits[r]), rtol=0, atol=1e-6)
    off = D.process_logits(jnp.asarray(logits), seqs, mask, 0, eos_id=eos)
    np.testing.assert_array_equal(np.asarray(off), logits)


# -------------------------------------------------------- a scripted step function
@dataclasses.dataclass(frozen=True)
class NextTokenStep:
    """Logits depend only on the previous token: ``table[prev]`` (a V x V tuple)."""

    table: tuple

    def __call__(self, params, cache, token_ids, positions, token_mask):
        return jnp.asarray(self.table, jnp.float32)[token_ids], cache


@dataclasses.dataclass(frozen=True)
class NoCache:
    def __call__(self, batch, max_len):
        return {"unused": jnp.zeros((batch,), jnp.int32)}


V, EOS = 16, 1


def scripted(prefer: dict, eos_logit: float = -1.0):
    """Each token ``a`` strongly prefers ``prefer[a]``; the other tokens have small
    distinct logits (so banned choices fall back deterministically) and EOS has
    ``eos_logit``."""
    base = -np.arange(V, dtype=np.float64) * 0.1
    table = np.tile(base, (V, 1))
    table[:, EOS] = eos_logit
    for a, b in prefer.items():
        table[a, b] = 5.0
    return NextTokenStep(tuple(map(tuple, table.tolist()))), NoCache()


def _ngrams(seq, n):
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


CYCLE = {2: 3, 3: 4, 4: 2, 5: 2}  # 2 -> 3 -> 4 -> 2 ...: repeats the bigram (2, 3)
PROMPTS = np.array([[0, 5], [2, 3]], np.int32)
PROMPT_MASK = np.array([[0, 1], [1, 1]], bool)  # row 0 is left-padded


@pytest.mark.parametrize("n", [2, 3])
def test_no_repeat_ngram_greedy_and_beams_never_repeat(n):
    fns = scripted(CYCLE)
    free = np.asarray(D.generate(*fns, None, PROMPTS, PROMPT_MASK, 12).tokens)
    assert free[0, :4].tolist() == [2, 3, 4, 2]  # without the processor it cycles
    out = D.generate(*fns, None, PROMPTS, PROMPT_MASK, 12, no_repeat_ngram_size=n)
    beams = D.beam_search(*fns, None, PROMPTS, PROMPT_MASK, 12, num_beams=3,
                          no_repeat_ngram_size=n)
    for r in range(2):
        prompt = PROMPTS[r][PROMPT_MASK[r]].tolist()
        seqs = [np.asarray(out.tokens)[r]] + list(np.asarray(beams.all_sequences)[r])
        for seq in seqs:
            grams = _ngrams(prompt + seq.tolist(), n)  # the prompt counts too
            assert len(grams) == len(set(grams)), (n, r, prompt, seq)
    # Row 0 is left-padded: the padding (id 0) is not part of its sequence, so it decodes
    # as it would alone.
    alone = D.generate(*fns, None, PROMPTS[:1, 1:], None, 12, no_repeat_ngram_size=n)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(out.tokens)[0])


@pytest.mark.parametrize("k", [3, 6])
def test_min_length_keeps_eos_back(k):
    fns = scripted(CYCLE, eos_logit=8.0)  # EOS is everyone's favourite
    prompt = np.array([[2]], np.int32)
    free = D.generate(*fns, None, prompt, None, 10, eos_id=EOS)
    assert int(free.lengths[0]) == 1  # EOS first
    out = D.generate(*fns, None, prompt, None, 10, eos_id=EOS, min_length=k)
    toks = np.asarray(out.tokens)[0].tolist()
    assert EOS not in toks[:k - 1] and toks[k - 1] == EOS and int(out.lengths[0]) == k
    beams = D.beam_search(*fns, None, prompt, None, 10, num_beams=2, eos_id=EOS,
                          min_length=k)
    for seq, length in zip(np.asarray(beams.all_sequences)[0], np.asarray(beams.all_lengths)[0]):
        assert EOS not in seq[:k - 1].tolist() and length >= k
    assert int(beams.lengths[0]) == k and int(beams.sequences[0, k - 1]) == EOS


def test_repetition_penalty_changes_a_greedy_choice():
    # After 2 -> 3 the runner-up of 3 is close: penalising the present 4 flips the choice.
    base = -np.arange(V, dtype=np.float64) * 0.1
    table = np.tile(base, (V, 1))
    table[2, 3], table[3, 4], table[3, 6], table[4, 2], table[6, 2] = 5.0, 2.0, 1.8, 5.0, 5.0
    fns = NextTokenStep(tuple(map(tuple, table.tolist()))), NoCache()
    prompt = np.array([[4, 2]], np.int32)
    free = np.asarray(D.generate(*fns, None, prompt, None, 3).tokens)[0].tolist()
    assert free == [3, 4, 2]
    got = np.asarray(D.generate(*fns, None, prompt, None, 3,
                                repetition_penalty=1.2).tokens)[0].tolist()
    assert got == [3, 6, 2]  # 4 (in the prompt) fell to 2.0 / 1.2 < 1.8
    beams = D.beam_search(*fns, None, prompt, None, 3, num_beams=1, repetition_penalty=1.2)
    assert np.asarray(beams.sequences)[0].tolist() == [3, 6, 2]
    # Sampling: the penalty acts before the temperature and the filters; top_k=1 is greedy.
    sampled = D.generate(*fns, None, prompt, None, 3, method="sample", top_k=1,
                         temperature=0.5, rng=jax.random.PRNGKey(0), repetition_penalty=1.2)
    assert np.asarray(sampled.tokens)[0].tolist() == [3, 6, 2]
    # A penalty of 1 (default or traced) changes nothing, sampling included.
    kw = dict(method="sample", temperature=2.0, rng=jax.random.PRNGKey(1))
    base = D.generate(*fns, None, prompt, None, 8, **kw).tokens
    same = D.generate(*fns, None, prompt, None, 8, repetition_penalty=jnp.float32(1.0), **kw)
    np.testing.assert_array_equal(np.asarray(same.tokens), np.asarray(base))


def test_bad_processor_arguments_raise():
    fns = scripted(CYCLE)
    prompt = np.array([[2]], np.int32)
    for kw, msg in [(dict(repetition_penalty=0.0), "repetition_penalty"),
                    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
                    (dict(min_length=-2, eos_id=EOS), "min_length")]:
        with pytest.raises(ValueError, match=msg):
            D.generate(*fns, None, prompt, None, 4, **kw)
        with pytest.raises(ValueError, match=msg):
            D.beam_search(*fns, None, prompt, None, 4, num_beams=2, **kw)


# ---------------------------------------- defaults leave a tiny LM's outputs unchanged
LM_PROMPT = np.array([[11, 23, 5, 77, 42, 9], [0, 0, 64, 3, 120, 17]], np.int32)
LM_MASK = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], bool)


def test_defaults_and_inert_processors_leave_outputs_unchanged():
    _, fns, params = _gpt2()
    n, eos = 8, 7
    args = (*fns, params, LM_PROMPT, LM_MASK, n)
    defaults = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0)
    # Processors switched on but unable to change anything: a traced penalty of 1.0
    # (x / 1 and x * 1 are exact) and an n-gram as long as the whole buffer (never
    # complete while decoding). Sampling with an inert penalty: the scripted test above.
    inert = dict(repetition_penalty=jnp.float32(1.0),
                 no_repeat_ngram_size=LM_PROMPT.shape[1] + n)
    runs = [(D.generate, dict(eos_id=eos), [defaults]),
            (D.beam_search, dict(num_beams=3, eos_id=eos), [defaults, inert])]
    for fn, kw, variants in runs:
        base = fn(*args, **kw)
        for extra in variants:
            for a, b in zip(base, fn(*args, **kw, **extra)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------- end to end: transformers GPT-2 generate, processors on
@functools.lru_cache(maxsize=None)
def _gpt2():
    from plug_jax.convert import from_transformers
    from plug_jax.families.gpt3.network import GPT3LM
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_head=4, n_layer=2, vocab_size=128,
                                  n_positions=128, initializer_range=0.2, bos_token_id=None,
                                  eos_token_id=None, pad_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    config, params = from_transformers(hf, family="gpt3")
    return hf, D.flax_lm_adapter(GPT3LM(config)), params


def _until_eos(tokens, eos):
    out = np.asarray(tokens, np.int64).copy()
    for row in out:
        hits = np.flatnonzero(row == eos)
        if hits.size:
            row[hits[0] + 1:] = -1
    return out


def test_greedy_and_beam_search_with_processors_equal_transformers():
    # Unpadded prompts: transformers counts left padding as part of input_ids, plug_jax
    # does not. min_length=k is transformers' min_new_tokens = k - 1.
    hf, fns, params = _gpt2()
    prompt = np.array([[11, 23, 5, 77, 42, 9], [8, 64, 3, 120, 17, 17]], np.int64)
    n, eos, k = 16, 1, 6  # both rows emit token 1 second when decoding freely
    proc = dict(repetition_penalty=1.2, no_repeat_ngram_size=3, min_length=k)
    hf_proc = dict(repetition_penalty=1.2, no_repeat_ngram_size=3, min_new_tokens=k - 1)
    with torch.inference_mode():
        ids, mask = torch.from_numpy(prompt), torch.ones(prompt.shape, dtype=torch.long)
        common = dict(attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0,
                      eos_token_id=eos)
        free = hf.generate(ids, **common)[:, prompt.shape[1]:].numpy()
        want = hf.generate(ids, **common, **hf_proc)[:, prompt.shape[1]:].numpy()
        beams = hf.generate(ids, **common, num_beams=3, length_penalty=1.2,
                            early_stopping="never", output_scores=True,
                            return_dict_in_generate=True, **hf_proc)
    assert (free[:, 1] == eos).all() and (want[:, :k - 1] != eos).all()  # they matter
    got = np.asarray(D.generate(*fns, params, prompt, None, n, eos_id=eos, **proc).tokens)
    np.testing.assert_array_equal(_until_eos(got[:, :want.shape[1]], eos), _until_eos(want, eos))
    gb = D.beam_search(*fns, params, prompt, None, n, num_beams=3, length_penalty=1.2,
                       eos_id=eos, **proc)
    want_b = beams.sequences[:, prompt.shape[1]:].numpy()
    width = max(want_b.shape[1], 1)
    np.testing.assert_array_equal(_until_eos(np.asarray(gb.sequences)[:, :width], eos),
                                  _until_eos(want_b, eos))
    np.testing.assert_allclose(np.asarray(gb.scores), beams.sequences_scores.numpy(),
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------- plug-infer: gin reaches the decoders
class _Vocab:
    eos_id = EOS

    def encode(self, text):
        return [int(w) for w in text.split()]

    def decode(self, ids):
        return " ".join(map(str, ids))


class _ScriptedModel:
    """Just enough of a text model for ``loop.infer`` with ``params`` given."""

    family = "scripted"

    def decode_fns(self):
        return scripted(CYCLE, eos_logit=8.0)  # EOS first unless min_length holds it back


def test_infer_gin_bindings_reach_greedy_and_beam_search(tmp_path):
    import gin

    from plug_jax import gin_utils
    from plug_jax.cli import configurable
    from plug_jax.trainer import loop
    kw = dict(model=_ScriptedModel(), model_dir=str(tmp_path), dataset_cfg=None,
              prompts=["2"], methods=("greedy", "beam"), max_new_tokens=8, params={},
              vocabulary=_Vocab())
    free = loop.infer(**kw)
    assert [r["continuation"] for r in free] == ["", ""]  # EOS at once
    path = tmp_path / "chatplug_defaults.gin"
    path.write_text("from __gin__ import dynamic_registration\n"
                    "from plug_jax.trainer import loop\n"
                    "loop.infer.num_beams = 3\n"
                    "loop.infer.repetition_penalty = 1.2\n"
                    "loop.infer.no_repeat_ngram_size = 2\n"
                    "loop.infer.min_length = 4\n")
    try:
        gin_utils.parse_gin([str(path)], [], search_paths=[])
        res = gin_utils.call_with_gin_errors(configurable(loop.infer), **kw)
    finally:
        gin.clear_config()
    # 2 -> 3 -> 4 -> 2 (still the best: 5 / 1.2 with EOS banned), then EOS (length 4).
    assert [r["continuation"] for r in res] == ["3 4 2", "3 4 2"]
