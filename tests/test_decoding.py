"""plug_jax.decoding: cached decoding equals recomputation, sampling filters, EOS, beam search."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plug_jax import decoding as D
from plug_jax.families.gpt3.config import GPT3Config
from plug_jax.families.gpt3.network import GPT3LM

VOCAB = 128
# Left-padded batch: row 1 has two padding slots.
PROMPT = np.array([[11, 23, 5, 77, 42, 9], [0, 0, 64, 3, 120, 17]], np.int32)
PROMPT_MASK = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], bool)


@functools.lru_cache(maxsize=None)
def tiny_lm(scan_layers: bool = True):
    # A larger init than the default 0.02 keeps the logits of the tiny random model
    # well separated (no near-ties between the argmax and the runner-up).
    cfg = GPT3Config.from_preset("tiny", vocab_size=VOCAB, initializer_range=0.2,
                                 scan_layers=scan_layers)
    model = GPT3LM(cfg)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return model, params


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(model, params, ids, mask):
    """Logits of the whole (left-padded) sequence, no cache."""
    return model.apply({"params": params}, ids, positions=D.prompt_positions(mask),
                       attention_mask=mask)


def _naive_greedy(model, params, prompt, mask, n):
    """Greedy decoding that recomputes the full sequence at every step (no cache)."""
    b, p = prompt.shape
    ids = np.zeros((b, p + n), np.int32)
    m = np.zeros((b, p + n), bool)
    ids[:, :p], m[:, :p] = prompt, mask
    step_logits = []
    for t in range(n):
        # Right-padding beyond the current token is invisible to it (causal attention).
        logits = np.asarray(_full_logits(model, params, ids, m))[:, p + t - 1]
        step_logits.append(logits)
        ids[:, p + t], m[:, p + t] = logits.argmax(-1), True
    return ids[:, p:], np.stack(step_logits, 1)


@pytest.mark.parametrize("scan_layers,unroll_layers", [(True, True), (True, False),
                                                       (False, True)])
def test_cached_logits_equal_full_recompute_left_padded(scan_layers, unroll_layers):
    model, params = tiny_lm(scan_layers)
    step_fn, init_cache_fn = D.flax_lm_adapter(model, unroll_layers=unroll_layers)
    assert getattr(step_fn, "unstack") == (scan_layers and unroll_layers)
    n = 6
    want_tokens, want_logits = _naive_greedy(model, params, PROMPT, PROMPT_MASK, n)
    # Drive the cache step by step (prefill, then one token at a time).
    b, p = PROMPT.shape
    step = jax.jit(step_fn)
    cache = init_cache_fn(b, p + n)
    if not unroll_layers:  # the scanned cache: layers on axis 1, batch on axis 0
        assert cache["decoder"]["layers"]["attn"]["cached_mask"].shape[:3] == (b, 2, p + n)
    step_params = step_fn.prepare_params(params)  # what generate() does once per call
    logits, cache = step(step_params, cache, jnp.asarray(PROMPT), D.prompt_positions(PROMPT_MASK),
                         jnp.asarray(PROMPT_MASK))
    got = [np.asarray(logits[:, -1])]
    pos = PROMPT_MASK.sum(-1)
    for t in range(1, n):
        logits, cache = step(step_params, cache, jnp.asarray(want_tokens[:, t - 1:t]),
                             jnp.asarray(pos + t - 1)[:, None], jnp.ones((b, 1), bool))
        got.append(np.asarray(logits[:, -1]))
    np.testing.assert_allclose(np.stack(got, 1), want_logits, atol=1e-5, rtol=0)
    # The jitted decoder produces the same greedy tokens.
    out = D.generate(step_fn, init_cache_fn, params, PROMPT, PROMPT_MASK, n)
    np.testing.assert_array_equal(np.asarray(out.tokens), want_tokens)
    np.testing.assert_array_equal(np.asarray(out.lengths), [n, n])
    assert not np.asarray(out.done).any() and int(out.num_steps) == n
    # The padded row decodes exactly as if it had not been padded.
    alone = D.generate(step_fn, init_cache_fn, params, PROMPT[1:, 2:], None, n)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], want_tokens[1])


def test_tokens_are_not_degenerate():
    # Guards the other tests against a model that repeats one token forever.
    model, params = tiny_lm()
    out = D.generate(*D.flax_lm_adapter(model), params, PROMPT, PROMPT_MASK, 6)
    assert all(len(set(row.tolist())) > 1 for row in np.asarray(out.tokens))


def test_new_params_and_equal_adapters_do_not_recompile():
    model, params = tiny_lm()
    fns = D.flax_lm_adapter(model)
    D.generate(*fns, params, PROMPT, PROMPT_MASK, 6)
    size = D._generate_jit._cache_size()
    params2 = jax.tree_util.tree_map(lambda x: x * 1.01, params)
    D.generate(*D.flax_lm_adapter(GPT3LM(model.config)), params2, PROMPT, PROMPT_MASK, 6)
    D.generate(*fns, params, PROMPT, PROMPT_MASK, 6, temperature=0.5)  # ignored by greedy
    assert D._generate_jit._cache_size() == size


def test_beam_search_with_one_beam_equals_greedy():
    model, params = tiny_lm()
    fns = D.flax_lm_adapter(model)
    greedy = D.generate(*fns, params, PROMPT, PROMPT_MASK, 6)
    beam = D.beam_search(*fns, params, PROMPT, PROMPT_MASK, 6, num_beams=1)
    np.testing.assert_array_equal(np.asarray(beam.sequences), np.asarray(greedy.tokens))
    # Its score is the greedy path's log-probability / 6 ** 1.0.
    ids = np.concatenate([PROMPT, np.asarray(greedy.tokens)], 1)
    mask = np.concatenate([PROMPT_MASK, np.ones((2, 6), bool)], 1)
    logp = jax.nn.log_softmax(_full_logits(model, params, ids, mask), -1)
    p = PROMPT.shape[1]
    want = [sum(float(logp[r, p + t - 1, ids[r, p + t]]) for t in range(6)) / 6 for r in range(2)]
    np.testing.assert_allclose(np.asarray(beam.scores), want, rtol=1e-5)


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    model, params = tiny_lm()
    fns = D.flax_lm_adapter(model)
    kw = dict(method="sample", temperature=1.0)
    a = D.generate(*fns, params, PROMPT, PROMPT_MASK, 6, rng=jax.random.PRNGKey(7), **kw)
    b = D.generate(*fns, params, PROMPT, PROMPT_MASK, 6, rng=jax.random.PRNGKey(7), **kw)
    c = D.generate(*fns, params, PROMPT, PROMPT_MASK, 6, rng=jax.random.PRNGKey(8), **kw)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    greedy = D.generate(*fns, params, PROMPT, PROMPT_MASK, 6)
    k1 = D.generate(*fns, params, PROMPT, PROMPT_MASK, 6, method="sample", top_k=1,
                    temperature=0.7, rng=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(k1.tokens), np.asarray(greedy.tokens))
    t0 = D.generate(*fns, params, PROMPT, PROMPT_MASK, 6, method="sample", temperature=0.0,
                    rng=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(t0.tokens), np.asarray(greedy.tokens))


def test_filters_keep_exactly_the_right_set():
    logits = jnp.array([[2.0, 1.0, 0.5, -1.0, 3.0],
                        [0.0, 0.0, 5.0, 1.0, 0.2]])
    kept = lambda x: [set(np.flatnonzero(np.isfinite(r)).tolist()) for r in np.asarray(x)]
    assert kept(D.top_k_filter(logits, 2)) == [{4, 0}, {2, 3}]
    assert kept(D.top_k_filter(logits, 1)) == [{4}, {2}]
    assert kept(D.top_k_filter(logits, 0)) == [set(range(5))] * 2
    np.testing.assert_array_equal(D.top_k_filter(logits, 2)[0, 4], 3.0)  # kept values unchanged
    # Row 0 probabilities (sorted): 0.6236 (4), 0.2294 (0), 0.0844 (1), 0.0512 (2), 0.0114 (3);
    # cumulative 0.6236, 0.8530, 0.9374, 0.9886, 1.
    probs = np.asarray(jax.nn.softmax(logits[0]))
    np.testing.assert_allclose(probs[[4, 0, 1, 2, 3]],
                               [0.6236, 0.2294, 0.0844, 0.0512, 0.0114], atol=1e-4)
    assert kept(D.top_p_filter(logits, 0.5))[0] == {4}
    assert kept(D.top_p_filter(logits, 0.62))[0] == {4}
    assert kept(D.top_p_filter(logits, 0.63))[0] == {4, 0}
    assert kept(D.top_p_filter(logits, 0.85))[0] == {4, 0}
    assert kept(D.top_p_filter(logits, 0.86))[0] == {4, 0, 1}
    assert kept(D.top_p_filter(logits, 0.93))[0] == {4, 0, 1}
    assert kept(D.top_p_filter(logits, 0.95))[0] == {4, 0, 1, 2}
    assert kept(D.top_p_filter(logits, 0.99))[0] == set(range(5))
    assert kept(D.top_p_filter(logits, 1.0))[0] == set(range(5))
    assert kept(D.top_p_filter(logits, 0.0)) == [{4}, {2}]  # the argmax is always kept
    # Row 1: 5.0 dominates (p ~ 0.96); ties at 0.0 are both kept once reached.
    assert kept(D.top_p_filter(logits, 0.9))[1] == {2}
    assert kept(D.top_p_filter(logits, 0.999))[1] == {0, 1, 2, 3, 4}
    # A traced p under jit gives the same sets.
    jit_p = jax.jit(D.top_p_filter)
    assert kept(jit_p(logits, 0.63))[0] == {4, 0}


@pytest.mark.parametrize("kw", [dict(top_k=3), dict(top_p=0.6), dict(top_k=5, top_p=0.8)])
def test_sampled_tokens_lie_in_the_filtered_set(kw):
    model, params = tiny_lm()
    rows, n, temperature = 32, 6, 1.5
    prompt = np.tile(PROMPT, (rows // 2, 1))
    mask = np.tile(PROMPT_MASK, (rows // 2, 1))
    out = D.generate(*D.flax_lm_adapter(model), params, prompt, mask, n, method="sample",
                     temperature=temperature, rng=jax.random.PRNGKey(0), **kw)
    toks = np.asarray(out.tokens)
    ids = np.concatenate([prompt, toks], 1)
    logits = _full_logits(model, params, ids, np.concatenate([mask, np.ones_like(toks, bool)], 1))
    p = prompt.shape[1]
    step_logits = logits[:, p - 1:p + n - 1] / temperature
    allowed = D.top_k_filter(step_logits, kw.get("top_k", 0))
    allowed = D.top_p_filter(allowed, kw.get("top_p", 1.0))
    chosen = np.take_along_axis(np.asarray(allowed), toks[:, :, None], -1)[..., 0]
    assert np.isfinite(chosen).all()
    assert len(np.unique(toks)) > n  # really sampling, not a single path


# -------------------------------------------------- scripted (Markov) step_fn
_CALLS = []


@dataclasses.dataclass(frozen=True)
class MarkovStep:
    """Next-token distribution depends only on the previous token: ``probs[prev]``."""

    probs: tuple  # V x V tuple of tuples (hashable, so usable as a static jit argument)

    def __call__(self, params, cache, token_ids, positions, token_mask):
        jax.debug.callback(lambda: _CALLS.append(1))
        logp = jnp.log(jnp.maximum(jnp.asarray(self.probs, jnp.float32), 1e-9))
        return logp[token_ids], {"steps": cache["steps"] + 1}


@dataclasses.dataclass(frozen=True)
class MarkovInitCache:
    def __call__(self, batch, max_len):
        return {"steps": jnp.zeros((batch,), jnp.int32)}


PAD, EOS, A, B, S = range(5)


def markov(table):
    probs = np.zeros((5, 5))
    for prev, row in table.items():
        for tok, p in row.items():
            probs[prev, tok] = p
    return MarkovStep(tuple(map(tuple, probs.tolist()))), MarkovInitCache()


def test_eos_stops_a_row_and_the_other_continues():
    # S -> A -> EOS; B -> B forever; PAD/EOS -> A (must not leak after EOS).
    fns = markov({S: {A: .9, B: .1}, A: {EOS: .9, B: .1}, B: {B: .9, A: .1},
                  PAD: {A: .9, B: .1}, EOS: {A: .9, B: .1}})
    prompt = np.array([[PAD, S], [B, B]])
    out = D.generate(*fns, None, prompt, prompt != PAD, 10, eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(np.asarray(out.tokens),
                                  [[A, EOS] + [PAD] * 8, [B] * 10])
    np.testing.assert_array_equal(np.asarray(out.lengths), [2, 10])
    np.testing.assert_array_equal(np.asarray(out.done), [True, False])
    assert int(out.num_steps) == 10


def test_loop_stops_early_when_all_rows_finish():
    fns = markov({S: {A: .9, B: .1}, A: {EOS: .9, B: .1}, B: {B: .9, A: .1},
                  PAD: {A: .9, B: .1}, EOS: {A: .9, B: .1}})
    prompt = np.array([[PAD, S], [S, S]])
    _CALLS.clear()
    out = jax.block_until_ready(
        D.generate(*fns, None, prompt, prompt != PAD, 50, eos_id=EOS, pad_id=PAD))
    jax.effects_barrier()
    np.testing.assert_array_equal(np.asarray(out.tokens), [[A, EOS] + [PAD] * 48] * 2)
    assert int(out.num_steps) == 2
    assert len(_CALLS) == 2  # the prefill and one single-token step, not 50


def test_sampling_frequencies_follow_the_filtered_distribution():
    # One step from S: p = (A .5, B .3, EOS .15, PAD .05); top_k=2 -> A .625, B .375.
    fns = markov({S: {A: .5, B: .3, EOS: .15, PAD: .05}})
    prompt = np.full((4000, 1), S)
    out = D.generate(*fns, None, prompt, None, 1, method="sample", top_k=2,
                     rng=jax.random.PRNGKey(0))
    toks = np.asarray(out.tokens)[:, 0]
    assert set(np.unique(toks).tolist()) == {A, B}
    assert abs((toks == A).mean() - 0.625) < 0.03
    # top_p = 0.85 keeps {A, B, EOS} (0.8 < 0.85 <= 0.95), renormalised.
    out = D.generate(*fns, None, prompt, None, 1, method="sample", top_p=0.85,
                     rng=jax.random.PRNGKey(1))
    toks = np.asarray(out.tokens)[:, 0]
    assert set(np.unique(toks).tolist()) == {A, B, EOS}
    assert abs((toks == EOS).mean() - 0.15 / 0.95) < 0.03


def test_beam_search_beats_greedy_on_a_garden_path():
    # Greedy takes A (0.6) then at best 0.34: 0.204. B (0.4) then B (0.9): 0.36.
    fns = markov({S: {A: .6, B: .4}, A: {A: .34, B: .33, S: .33}, B: {B: .9, A: .05, S: .05}})
    prompt = np.array([[S]])
    greedy = D.generate(*fns, None, prompt, None, 2)
    np.testing.assert_array_equal(np.asarray(greedy.tokens), [[A, A]])
    beam = D.beam_search(*fns, None, prompt, None, 2, num_beams=2, length_penalty=1.0)
    np.testing.assert_array_equal(np.asarray(beam.sequences), [[B, B]])
    np.testing.assert_allclose(np.asarray(beam.scores), [np.log(.36) / 2], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(beam.all_sequences), [[[B, B], [A, A]]])
    np.testing.assert_allclose(np.asarray(beam.all_scores), [[np.log(.36) / 2, np.log(.204) / 2]],
                               rtol=1e-5)


def test_length_penalty_changes_the_choice():
    # Short: EOS right away (0.4). Long: A A A A (0.6 * 0.7 ** 3 = 0.2058), never finishes.
    fns = markov({S: {EOS: .4, A: .6}, A: {A: .7, B: .3}, B: {A: .7, B: .3}})
    prompt = np.array([[S], [S]])
    short = D.beam_search(*fns, None, prompt, None, 4, num_beams=2, length_penalty=0.0,
                          eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(np.asarray(short.sequences), [[EOS, PAD, PAD, PAD]] * 2)
    np.testing.assert_array_equal(np.asarray(short.lengths), [1, 1])
    np.testing.assert_allclose(np.asarray(short.scores), [np.log(.4)] * 2, rtol=1e-5)
    # score = sum log p / length ** alpha; alpha = 1: log(.4) / 1 < log(.2058) / 4.
    long = D.beam_search(*fns, None, prompt, None, 4, num_beams=2, length_penalty=1.0,
                         eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(np.asarray(long.sequences), [[A, A, A, A]] * 2)
    np.testing.assert_array_equal(np.asarray(long.lengths), [4, 4])
    np.testing.assert_allclose(np.asarray(long.scores), [np.log(.6 * .7 ** 3) / 4] * 2, rtol=1e-5)
    assert float(long.all_scores[0, 1]) == pytest.approx(np.log(.6 * .7 ** 2 * .3) / 4, rel=1e-5)


def test_beam_search_stops_early_once_finished_hypotheses_cannot_be_beaten():
    # Both beams finish at step 2 with high probability; nothing alive can catch up.
    fns = markov({S: {A: .6, B: .4}, A: {EOS: .95, B: .05}, B: {EOS: .95, A: .05}})
    _CALLS.clear()
    out = jax.block_until_ready(D.beam_search(*fns, None, np.array([[S]]), None, 30,
                                              num_beams=2, length_penalty=1.0, eos_id=EOS))
    jax.effects_barrier()
    np.testing.assert_array_equal(np.asarray(out.all_sequences)[0, :, :3],
                                  [[A, EOS, PAD], [B, EOS, PAD]])
    np.testing.assert_array_equal(np.asarray(out.all_lengths), [[2, 2]])
    assert len(_CALLS) < 30


def test_bad_arguments_raise_clear_errors():
    fns = markov({S: {A: 1.0}})
    with pytest.raises(ValueError, match="unknown decoding method"):
        D.generate(*fns, None, np.array([[S]]), None, 2, method="nucleus")
    with pytest.raises(ValueError, match="needs an rng"):
        D.generate(*fns, None, np.array([[S]]), None, 2, method="sample")
    with pytest.raises(ValueError, match="left-padded"):
        D.generate(*fns, None, np.array([[S, PAD]]), np.array([[1, 0]]), 2)
    with pytest.raises(ValueError, match="vocab >= 2 \\* num_beams"):
        D.beam_search(*fns, None, np.array([[S]]), None, 2, num_beams=3)
