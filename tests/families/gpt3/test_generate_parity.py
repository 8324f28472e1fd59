"""Greedy decoding and beam search of plug_jax equal transformers' GPT-2 ``generate``.

Random tiny GPT-2 weights (init std 0.2 so the logits are well separated and the
argmax never hinges on float noise), converted with ``plug_jax.convert.from_transformers``.
Tokens must be exactly equal.
"""
import functools

import numpy as np
import pytest
import torch
import transformers

from plug_jax import decoding as D
from plug_jax.convert import from_transformers
from plug_jax.families.gpt3.network import GPT3LM

N_NEW = 32
PROMPT = np.array([[11, 23, 5, 77, 42, 9], [0, 0, 64, 3, 120, 17]], np.int64)
MASK = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], np.int64)  # row 1 is left-padded


@functools.lru_cache(maxsize=None)
def _models():
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        n_embd=64, n_head=4, n_layer=2, vocab_size=128, n_positions=128,
        initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    config, params = from_transformers(hf, family="gpt3")
    return hf, D.flax_lm_adapter(GPT3LM(config)), params


def _hf_generate(hf, ids, mask, **kw):
    with torch.inference_mode():
        out = hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                          do_sample=False, pad_token_id=0, **kw)
    if hasattr(out, "sequences"):
        return out.sequences[:, ids.shape[1]:].numpy(), out.sequences_scores.numpy()
    return out[:, ids.shape[1]:].numpy()


def _until_eos(tokens, eos, width):
    """Tokens up to and including the first EOS, then -1 (the fill after EOS differs:
    transformers pads greedy rows with pad_token_id but beams with EOS)."""
    out = np.full((tokens.shape[0], width), -1, np.int64)
    out[:, :tokens.shape[1]] = tokens
    for row in out:
        hits = np.flatnonzero(row == eos)
        if hits.size:
            row[hits[0] + 1:] = -1
    return out


def test_greedy_single_prompt_matches_transformers():
    hf, fns, params = _models()
    want = _hf_generate(hf, PROMPT[:1], MASK[:1], max_new_tokens=N_NEW)
    got = D.generate(*fns, params, PROMPT[:1], MASK[:1], N_NEW)
    np.testing.assert_array_equal(np.asarray(got.tokens), want)
    assert len(set(want[0].tolist())) > 3  # a real continuation, not one repeated token


def test_greedy_left_padded_batch_matches_transformers():
    # transformers derives position ids from the attention mask (cumsum - 1), which is
    # the plug_jax convention, so a left-padded row decodes as if it were unpadded.
    hf, fns, params = _models()
    want = _hf_generate(hf, PROMPT, MASK, max_new_tokens=N_NEW)
    got = D.generate(*fns, params, PROMPT, MASK.astype(bool), N_NEW)
    np.testing.assert_array_equal(np.asarray(got.tokens), want)
    alone = _hf_generate(hf, PROMPT[1:, 2:], MASK[1:, 2:], max_new_tokens=N_NEW)
    np.testing.assert_array_equal(want[1:], alone)


def test_greedy_with_eos_matches_transformers():
    hf, fns, params = _models()
    free = _hf_generate(hf, PROMPT, MASK, max_new_tokens=N_NEW)
    eos = int(free[0, 10])  # a token row 0 emits mid-way
    want = _hf_generate(hf, PROMPT, MASK, max_new_tokens=N_NEW, eos_token_id=eos)
    got = D.generate(*fns, params, PROMPT, MASK.astype(bool), N_NEW, eos_id=eos, pad_id=0)
    padded = np.zeros((2, N_NEW), np.int64)
    padded[:, :want.shape[1]] = want  # transformers stops when every row is done
    np.testing.assert_array_equal(np.asarray(got.tokens), padded)
    assert bool(got.done[0])


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_beam_search_matches_transformers(length_penalty):
    # plug_jax stops only when no alive beam can still win, i.e. transformers'
    # early_stopping="never"; its default heuristic (False) may stop a beam too early.
    hf, fns, params = _models()
    n, beams = 16, 3
    free = _hf_generate(hf, PROMPT, MASK, max_new_tokens=n)
    eos = int(free[1, 3])
    want, want_scores = _hf_generate(
        hf, PROMPT, MASK, max_new_tokens=n, num_beams=beams, eos_token_id=eos,
        length_penalty=length_penalty, early_stopping="never", output_scores=True,
        return_dict_in_generate=True)
    got = D.beam_search(*fns, params, PROMPT, MASK.astype(bool), n, num_beams=beams,
                        length_penalty=length_penalty, eos_id=eos, pad_id=0)
    np.testing.assert_array_equal(_until_eos(np.asarray(got.sequences), eos, n),
                                  _until_eos(want, eos, n))
    np.testing.assert_allclose(np.asarray(got.scores), want_scores, rtol=1e-4, atol=1e-5)
