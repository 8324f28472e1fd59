"""Autoregressive decoding over a KV cache: greedy, sampling (temperature / top-k / top-p)
and beam search, model-agnostic and compiled end to end.

A model plugs in through two functions (see :func:`flax_lm_adapter` for flax LMs such
as ``GPT3LM``)::

    step_fn(params, cache, token_ids, positions, token_mask) -> (logits, new_cache)
        token_ids / positions int [B, L]; token_mask bool [B, L] (True = real token);
        logits float [B, L, V] for the L new tokens; the tokens are appended to the cache
        (all rows in lock step) and attend causally to every valid slot so far.
    init_cache_fn(batch, max_len) -> cache
        an empty cache with room for ``max_len`` tokens. Every leaf has the batch on
        axis 0 (beam search reorders beams by gathering axis 0 of every leaf).
    step_fn.prepare_params(params) -> params   (optional attribute)
        if present, called once per decode inside the jit, before the prefill; its
        result is what ``step_fn`` receives (e.g. unstacking scanned layers once
        instead of slicing them in every step, or encoding an encoder-decoder's source).
    init_cache_fn.takes_params = True            (optional attribute)
        then the cache is created as ``init_cache_fn(batch, max_len, params=prepared)``:
        a cache that starts from the input (an encoder-decoder's cross-attention keys and
        values of the encoded source; :func:`encdec_adapter`).

``step_fn`` and ``init_cache_fn`` are static arguments of the jits: they must be
hashable and compare equal from call to call (module-level functions or frozen
dataclasses such as :class:`FlaxLMStep`), or every call recompiles.

Conventions (details in ``docs/decoding.md``):

* Prompts are **left-padded**: ``prompt_mask`` is 1 for real tokens, 0 for padding,
  and the last column is a real token for every row. Positions are
  ``max(cumsum(mask) - 1, 0)``, so each row's first real token is at position 0 and
  generated token ``t`` of a row with ``n`` real prompt tokens is at position ``n + t``
  (the same convention as ``transformers`` ``generate``).
* The prompt is prefilled with one ``step_fn`` call; each further token is one
  ``step_fn`` call of length 1 inside a ``jax.lax.while_loop``. The whole decode
  (cache creation included) is one jitted computation, compiled once per
  (shapes, method, static options) combination; ``params`` are arguments, not
  closure constants, so new weights never recompile.
* EOS: once a row emits ``eos_id`` it is finished; its later tokens are ``pad_id``.
  The loop exits as soon as every row is finished.
* Beam search scores a hypothesis as ``sum(log p) / length ** length_penalty`` where
  ``length`` is the number of generated tokens including the EOS token (the
  ``transformers`` convention).
* Optional logits processors (``repetition_penalty``, ``no_repeat_ngram_size``,
  ``min_length``; :func:`process_logits`) act on each row's (each beam's) real prompt
  tokens and generated tokens: on the raw logits in :func:`generate`, on the log-softmax
  in :func:`beam_search` (both as ``transformers`` does). Off by default.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

StepFn = Callable[..., tuple[jax.Array, Any]]
InitCacheFn = Callable[[int, int], Any]

METHODS = ("greedy", "sample")
# Beam-search length normalisation: length ** alpha (transformers) or GNMT's
# ((5 + length) / 6) ** alpha (PreSumm / PALM).
LENGTH_PENALTY_FORMS = ("power", "gnmt")


# ------------------------------------------------------------------------ outputs
class DecodeFns(NamedTuple):
    """``(step_fn, init_cache_fn)``; unpack into :func:`generate` / :func:`beam_search`."""

    step_fn: StepFn
    init_cache_fn: InitCacheFn


class GenerateOutput(NamedTuple):
    tokens: jax.Array     # int32 [B, max_new_tokens]; pad_id after a row's EOS
    lengths: jax.Array    # int32 [B]: generated tokens per row, EOS included
    done: jax.Array       # bool [B]: the row emitted EOS
    num_steps: jax.Array  # int32 []: token positions produced before the loop stopped


class BeamSearchOutput(NamedTuple):
    sequences: jax.Array      # int32 [B, max_new_tokens]: best hypothesis, pad after EOS
    scores: jax.Array         # float32 [B]: its length-normalised score
    lengths: jax.Array        # int32 [B]: its length (EOS included)
    all_sequences: jax.Array  # int32 [B, num_beams, max_new_tokens], best first
    all_scores: jax.Array     # float32 [B, num_beams]
    all_lengths: jax.Array    # int32 [B, num_beams]


# ---------------------------------------------------------------- flax adapter
def unstack_scanned_params(params):
    """Scanned layer stacks (``{'layers': leaves with a leading layer axis}``, as written
    by ``LayerStack(scan=True)``) -> the unrolled layout (``layers_0 .. layers_{n-1}``).
    Logical-partitioning boxes are stripped first."""
    from flax.core import meta  # local: keeps import plug_jax.decoding light

    def walk(tree):
        if not isinstance(tree, Mapping):
            return tree
        out = {}
        for key, value in tree.items():
            if key == "layers" and isinstance(value, Mapping):
                n = jax.tree_util.tree_leaves(value)[0].shape[0]
                for i in range(n):
                    out[f"layers_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], value)
            else:
                out[key] = walk(value)
        return out

    return walk(meta.unbox(params))


@dataclasses.dataclass(frozen=True)
class FlaxLMStep:
    """``step_fn`` of a flax LM with the ``GPT3LM`` decode interface.

    The module must accept ``(input_ids, positions=..., attention_mask=..., decode=True)``,
    return logits ``[B, L, V]`` and keep its KV cache in the ``cache`` collection. This
    and :class:`FlaxLMInitCache` are frozen dataclasses that hash and compare by the
    module, so they are stable static arguments of the decoding jits: wrapping an equal
    module again reuses the compiled code (a bound method or a fresh closure would not).

    With ``unstack=True`` the module is the unrolled twin of a scanned model and
    :meth:`prepare_params` (called once per decode, before the loop) unstacks the
    scanned parameters.
    """

    model: Any
    unstack: bool = False

    def prepare_params(self, params):
        return unstack_scanned_params(params) if self.unstack else params

    def __call__(self, params, cache, token_ids, positions, token_mask):
        logits, mutated = self.model.apply(
            {"params": params, "cache": cache}, token_ids, positions=positions,
            attention_mask=token_mask, decode=True, mutable=["cache"])
        return logits, mutated["cache"]


@dataclasses.dataclass(frozen=True)
class FlaxLMInitCache:
    """``init_cache_fn`` of a flax LM: zeros shaped like its ``cache`` collection."""

    model: Any

    def __call__(self, batch: int, max_len: int):
        ids = jnp.zeros((batch, max_len), jnp.int32)
        shapes = jax.eval_shape(
            lambda: self.model.init(jax.random.PRNGKey(0), ids, positions=ids, decode=True))
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def flax_lm_adapter(model, *, unroll_layers: bool = True) -> DecodeFns:
    """``(step_fn, init_cache_fn)`` for a ``GPT3LM``-like flax module.

    ``unroll_layers``: when the module's ``config.scan_layers`` is True, decode with the
    unrolled twin of the model (``config.replace(scan_layers=False)``) and unstack the
    scanned parameters once per decode call, before the loop. Slicing one layer's
    weights out of the stacked arrays inside every step costs a copy of all weights
    per token, which roughly halves single-sequence decoding speed on CPU. Callers still
    pass the parameters in the model's own (scanned) layout.
    """
    config = getattr(model, "config", None)
    if unroll_layers and getattr(config, "scan_layers", False):
        unrolled = model.clone(config=config.replace(scan_layers=False))
        return DecodeFns(FlaxLMStep(unrolled, unstack=True), FlaxLMInitCache(unrolled))
    return DecodeFns(FlaxLMStep(model), FlaxLMInitCache(model))


# ----------------------------------------------------------------- filters
def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Sets every logit below the k-th largest (along the last axis) to ``-inf``.

    ``k <= 0`` or ``k >= vocab`` is a no-op. Logits tied with the k-th largest are kept
    (as in ``transformers``). ``k`` must be a Python int.
    """
    k = int(k)
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
    """Nucleus filter: keeps the smallest set of most likely tokens whose probability
    sums to at least ``p`` (softmax along the last axis) and sets the rest to ``-inf``.

    The most likely token is always kept (so ``p <= 0`` means greedy); ``p >= 1`` keeps
    everything. Tokens tied with the least likely kept token are kept too. ``p`` may be
    a traced scalar.
    """
    p = jnp.asarray(p, jnp.float32)
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the better tokens
    keep = mass_before < p
    keep = keep.at[..., 0].set(True)
    # The smallest kept logit is the threshold.
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    filtered = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jnp.where(p >= 1.0, logits, filtered)


def prompt_positions(prompt_mask: jax.Array) -> jax.Array:
    """Positions of a left-padded prompt: ``max(cumsum(mask) - 1, 0)``."""
    mask = jnp.asarray(prompt_mask, jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


def _sample(logits, rng, method, temperature, top_k, top_p, use_top_p):
    if method == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    logits = top_k_filter(logits, top_k)
    if use_top_p:
        logits = top_p_filter(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _prepare(step_fn, params):
    """``step_fn.prepare_params(params)`` when the step defines it (once per decode)."""
    prepare = getattr(step_fn, "prepare_params", None)
    return params if prepare is None else prepare(params)


def _init_cache(init_cache_fn, params, batch, max_len):
    """``init_cache_fn(batch, max_len)``, or with ``params=`` (the prepared params) when
    the cache depends on the input (``init_cache_fn.takes_params``, e.g. an
    encoder-decoder cache that starts with the source's cross-attention keys / values)."""
    if getattr(init_cache_fn, "takes_params", False):
        return init_cache_fn(batch, max_len, params=params)
    return init_cache_fn(batch, max_len)


def _prefill(step_fn, init_cache_fn, params, prompt_ids, prompt_mask, max_len):
    batch = prompt_ids.shape[0]
    cache = _init_cache(init_cache_fn, params, batch, max_len)
    logits, cache = step_fn(params, cache, prompt_ids, prompt_positions(prompt_mask),
                            prompt_mask)
    return logits[:, -1].astype(jnp.float32), cache


# ------------------------------------------------------------ logits processors
def process_logits(logits: jax.Array, seqs: jax.Array, seq_mask: jax.Array,
                   num_generated, *, eos_id: int | None = None,
                   repetition_penalty=1.0, no_repeat_ngram_size: int = 0,
                   min_length: int = 0) -> jax.Array:
    """The repetition penalty, no-repeat n-gram and minimum-length processors of
    ``transformers`` (``RepetitionPenaltyLogitsProcessor``, ``NoRepeatNGramLogitsProcessor``,
    ``MinNewTokensLengthLogitsProcessor``), in that order, vectorised with fixed shapes.

    Args:
      logits: float ``[R, V]``, the scores of each row's next token.
      seqs: int ``[R, L]``, a token buffer holding each row's sequence so far.
      seq_mask: bool ``[R, L]``, which slots of ``seqs`` hold the sequence. The True slots
        of a row must be contiguous (the sequence, in order); the rest (left padding,
        slots not yet written) is ignored.
      num_generated: int scalar or ``[R]``: tokens generated so far (the next one is
        generated token number ``num_generated``, counting from 0).
      eos_id: the token ``min_length`` bans (None: ``min_length`` is ignored).
      repetition_penalty: CTRL's penalty (Keskar et al. 2019): the score of every token
        id present in the sequence is divided by it if positive, multiplied by it if
        negative. 1.0 = off; may be traced.
      no_repeat_ngram_size: ``n > 0``: every token that would complete an ``n``-gram
        already in the sequence (its last ``n - 1`` tokens followed by that token occur
        earlier in it) gets ``-inf``. 0 = off (static).
      min_length: ``eos_id`` gets ``-inf`` while ``num_generated + 1 < min_length``: a row
        that finishes has at least ``min_length`` generated tokens, its EOS included (the
        count of ``GenerateOutput.lengths``). This is ``transformers``'
        ``min_new_tokens = min_length - 1``, and its ``min_length`` of an encoder-decoder
        whose decoder starts from one start token (there ``input_ids`` is the start token
        and the tokens generated so far). 0 or 1 = off (static).

    With every option off the logits are returned unchanged (the same array).
    """
    rows, vocab = logits.shape
    seq_mask = jnp.asarray(seq_mask, jnp.bool_)
    seqs = jnp.asarray(seqs, jnp.int32)
    row_ids = jnp.arange(rows)[:, None]
    if not (isinstance(repetition_penalty, (int, float)) and repetition_penalty == 1.0):
        # Slots outside the sequence (and ids outside the vocabulary) go to a spare column.
        ids = jnp.where(seq_mask & (seqs >= 0) & (seqs < vocab), seqs, vocab)
        present = jnp.zeros((rows, vocab + 1), jnp.bool_).at[row_ids, ids].set(True)
        penalty = jnp.asarray(repetition_penalty, logits.dtype)
        penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
        logits = jnp.where(present[:, :vocab], penalised, logits)
    n = int(no_repeat_ngram_size)
    if n > 0 and n <= seqs.shape[1]:
        length = seqs.shape[1]
        # End of each row's sequence (one past its last True slot) and its last n-1 tokens.
        end = jnp.max(jnp.where(seq_mask, jnp.arange(1, length + 1), 0), axis=1)
        width = length - n + 1
        windows = jnp.stack([seqs[:, j:j + width] for j in range(n)], axis=-1)  # [R, W, n]
        in_seq = jnp.stack([seq_mask[:, j:j + width] for j in range(n)], -1).all(-1)
        if n == 1:
            matches = in_seq
        else:
            idx = jnp.clip(end[:, None] - (n - 1) + jnp.arange(n - 1), 0, length - 1)
            prefix = jnp.take_along_axis(seqs, idx, axis=1)  # [R, n-1]
            matches = in_seq & jnp.all(windows[..., :-1] == prefix[:, None, :], axis=-1)
        last = windows[..., -1]
        banned_ids = jnp.where(matches & (last >= 0) & (last < vocab), last, vocab)
        banned = jnp.zeros((rows, vocab + 1), jnp.bool_).at[row_ids, banned_ids].set(True)
        logits = jnp.where(banned[:, :vocab], -jnp.inf, logits)
    if eos_id is not None and int(min_length) > 1:
        too_short = jnp.asarray(num_generated) + 1 < int(min_length)
        too_short = jnp.broadcast_to(too_short, (rows,))[:, None]
        logits = jnp.where(too_short & (jnp.arange(vocab) == eos_id), -jnp.inf, logits)
    return logits


def _processors(prompt_ids, prompt_mask, rows_per_prompt, eos_id, repetition_penalty,
                use_repetition_penalty, no_repeat_ngram_size, min_length):
    """``process(logits [R, V], generated [R, N], t) -> logits`` of the decoding loops
    (``R`` = prompts x ``rows_per_prompt``), or None when every processor is off. A row's
    sequence is its real prompt tokens (left padding excluded) followed by its first
    ``t`` generated tokens."""
    min_on = eos_id is not None and min_length > 1
    if not (use_repetition_penalty or no_repeat_ngram_size > 0 or min_on):
        return None
    prompt_ids = jnp.repeat(prompt_ids, rows_per_prompt, axis=0)
    prompt_mask = jnp.repeat(prompt_mask, rows_per_prompt, axis=0)

    def process(logits, generated, t):
        seqs = jnp.concatenate([prompt_ids, generated], axis=1)
        written = jnp.broadcast_to(jnp.arange(generated.shape[1]) < t, generated.shape)
        seq_mask = jnp.concatenate([prompt_mask, written], axis=1)
        return process_logits(
            logits, seqs, seq_mask, t, eos_id=eos_id,
            repetition_penalty=repetition_penalty if use_repetition_penalty else 1.0,
            no_repeat_ngram_size=no_repeat_ngram_size, min_length=min_length)

    return process


# ---------------------------------------------------------------- sampling loop
@functools.partial(jax.jit, static_argnames=(
    "step_fn", "init_cache_fn", "max_new_tokens", "method", "top_k", "use_top_p",
    "eos_id", "pad_id", "use_repetition_penalty", "no_repeat_ngram_size", "min_length"))
def _generate_jit(params, prompt_ids, prompt_mask, temperature, top_p, rng,
                  repetition_penalty=1.0, *, step_fn, init_cache_fn, max_new_tokens, method,
                  top_k, use_top_p, eos_id, pad_id, use_repetition_penalty=False,
                  no_repeat_ngram_size=0, min_length=0):
    batch, prompt_len = prompt_ids.shape
    n = max_new_tokens
    params = _prepare(step_fn, params)
    # The last generated token is never fed back, so P + N - 1 slots suffice.
    logits, cache = _prefill(step_fn, init_cache_fn, params, prompt_ids, prompt_mask,
                             prompt_len + n - 1)
    first_pos = jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32)  # position of token 0
    pick = functools.partial(_sample, method=method, temperature=temperature,
                             top_k=top_k, top_p=top_p, use_top_p=use_top_p)
    process = _processors(prompt_ids, prompt_mask, 1, eos_id, repetition_penalty,
                          use_repetition_penalty, no_repeat_ngram_size, min_length)

    def choose(t, logits, done, tokens):
        if process is not None:  # on the raw logits, before temperature and filters
            logits = process(logits, tokens, t)
        tok = pick(logits, jax.random.fold_in(rng, t))
        tok = jnp.where(done, pad_id, tok)
        new_done = done if eos_id is None else done | (tok == eos_id)
        return tok, new_done

    tokens = jnp.full((batch, n), pad_id, jnp.int32)
    tok, done = choose(0, logits, jnp.zeros((batch,), jnp.bool_), tokens)
    tokens = tokens.at[:, 0].set(tok)
    lengths = jnp.ones((batch,), jnp.int32)

    def cond(state):
        t, _, _, done, _, _ = state
        return (t < n) & ~jnp.all(done)

    def body(state):
        t, tok, tokens, done, lengths, cache = state
        logits, cache = step_fn(params, cache, tok[:, None], (first_pos + t - 1)[:, None],
                                jnp.ones((batch, 1), jnp.bool_))
        new_tok, new_done = choose(t, logits[:, -1].astype(jnp.float32), done, tokens)
        tokens = jax.lax.dynamic_update_slice(tokens, new_tok[:, None], (0, t))
        lengths = lengths + (~done).astype(jnp.int32)
        return t + 1, new_tok, tokens, new_done, lengths, cache

    state = (jnp.int32(1), tok, tokens, done, lengths, cache)
    t, _, tokens, done, lengths, _ = jax.lax.while_loop(cond, body, state)
    return GenerateOutput(tokens, lengths, done, t)


def _check_prompt(prompt_ids, prompt_mask, max_new_tokens):
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] < 1:
        raise ValueError(f"prompt_ids must be int [batch, length>=1], got {prompt_ids.shape}")
    if prompt_mask is None:
        prompt_mask = jnp.ones(prompt_ids.shape, jnp.bool_)
    prompt_mask = jnp.asarray(prompt_mask).astype(jnp.bool_)
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_mask shape {prompt_mask.shape} != prompt_ids shape "
                         f"{prompt_ids.shape}")
    if not isinstance(prompt_mask, jax.core.Tracer) and not bool(jnp.all(prompt_mask[:, -1])):
        raise ValueError("prompts must be left-padded: the last column of prompt_mask must "
                         "be 1 in every row (move the padding to the left)")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return prompt_ids, prompt_mask


def generate(step_fn: StepFn, init_cache_fn: InitCacheFn, params, prompt_ids,
             prompt_mask=None, max_new_tokens: int = 32, *, method: str = "greedy",
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             eos_id: int | None = None, pad_id: int = 0, rng=None,
             repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
             min_length: int = 0) -> GenerateOutput:
    """Greedy or sampled continuation of left-padded prompts.

    Args:
      step_fn, init_cache_fn: the model (see the module docstring, :func:`flax_lm_adapter`).
      params: passed to ``step_fn`` (after ``step_fn.prepare_params`` if it has one); a
        traced argument of the jit.
      prompt_ids: int ``[B, P]``, left-padded.
      prompt_mask: ``[B, P]`` 1 for real tokens, 0 for left padding (default all 1).
      max_new_tokens: number of tokens to produce (static).
      method: ``'greedy'`` (argmax) or ``'sample'``; ``temperature == 0`` means greedy.
      temperature: logits are divided by it before filtering and sampling (traced).
      top_k: keep the ``top_k`` most likely tokens (0 = off; static).
      top_p: nucleus filter (1.0 = off; traced, but on/off is static).
      eos_id: token that finishes a row (None = rows never finish early).
      pad_id: written after a row's EOS and where the loop stopped early.
      rng: PRNG key, required for sampling; step ``t`` uses ``fold_in(rng, t)``.
      repetition_penalty, no_repeat_ngram_size, min_length: the logits processors of
        :func:`process_logits` (defaults: off), applied to the raw logits of every step
        before the temperature and the filters (transformers' order). A row's sequence is
        its real prompt tokens followed by the tokens it generated (for an
        encoder-decoder: the decoder start token and the generated tokens);
        ``min_length`` needs ``eos_id``. The penalty is traced (on / off is static);
        the other two are static.

    Returns:
      :class:`GenerateOutput` ``(tokens [B, N], lengths [B], done [B], num_steps)``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; choose one of {METHODS}")
    prompt_ids, prompt_mask = _check_prompt(prompt_ids, prompt_mask, max_new_tokens)
    if method == "sample" and isinstance(temperature, (int, float)) and temperature == 0:
        method = "greedy"
    if method == "sample":
        if rng is None:
            raise ValueError("method='sample' needs an rng (a jax.random key)")
        if isinstance(temperature, (int, float)) and temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        use_top_p = not (isinstance(top_p, (int, float)) and top_p >= 1.0)
        top_k = int(top_k)
    else:  # options that do not change greedy decoding must not cause recompiles
        temperature, top_k, top_p, use_top_p = 1.0, 0, 1.0, False
    if rng is None:
        rng = jax.random.PRNGKey(0)
    proc = _processor_args(repetition_penalty, no_repeat_ngram_size, min_length, eos_id)
    return _generate_jit(params, prompt_ids, prompt_mask, jnp.float32(temperature),
                         jnp.float32(top_p), rng, jnp.float32(repetition_penalty),
                         step_fn=step_fn, init_cache_fn=init_cache_fn,
                         max_new_tokens=int(max_new_tokens), method=method, top_k=top_k,
                         use_top_p=use_top_p, eos_id=None if eos_id is None else int(eos_id),
                         pad_id=int(pad_id), **proc)


def _processor_args(repetition_penalty, no_repeat_ngram_size, min_length, eos_id) -> dict:
    """The static processor options of the jits, checked; options that change nothing
    are normalised to off so that they do not cause recompiles."""
    if isinstance(repetition_penalty, (int, float)) and repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if int(no_repeat_ngram_size) < 0:
        raise ValueError(f"no_repeat_ngram_size must be >= 0, got {no_repeat_ngram_size}")
    if int(min_length) < 0:
        raise ValueError(f"min_length must be >= 0, got {min_length}")
    return dict(use_repetition_penalty=not (isinstance(repetition_penalty, (int, float))
                                            and repetition_penalty == 1.0),
                no_repeat_ngram_size=int(no_repeat_ngram_size),
                min_length=int(min_length) if eos_id is not None and int(min_length) > 1
                else 0)


# ------------------------------------------------------------------ beam search
def _take(x, idx):
    """``x[b, idx[b, j], ...]`` for ``x`` ``[B, K, ...]`` and ``idx`` ``[B, J]``."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


@functools.partial(jax.jit, static_argnames=(
    "step_fn", "init_cache_fn", "max_new_tokens", "num_beams", "eos_id", "pad_id",
    "length_penalty_form", "use_repetition_penalty", "no_repeat_ngram_size", "min_length"))
def _beam_search_jit(params, prompt_ids, prompt_mask, length_penalty, repetition_penalty=1.0,
                     *, step_fn, init_cache_fn, max_new_tokens, num_beams, eos_id, pad_id,
                     length_penalty_form="power", use_repetition_penalty=False,
                     no_repeat_ngram_size=0, min_length=0):
    batch, prompt_len = prompt_ids.shape
    n, k = max_new_tokens, num_beams
    params = _prepare(step_fn, params)
    alpha = length_penalty
    logits, cache = _prefill(step_fn, init_cache_fn, params, prompt_ids, prompt_mask,
                             prompt_len + n - 1)
    vocab = logits.shape[-1]
    if vocab < 2 * k:
        raise ValueError(f"beam search needs vocab >= 2 * num_beams, got {vocab} < {2 * k}")
    # Expand the prompt cache to batch * num_beams rows (row b*k + j = beam j of b).
    cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, k, axis=0), cache)
    logits = jnp.repeat(logits, k, axis=0)
    first_pos = jnp.repeat(jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32), k)
    neg_inf = jnp.float32(-jnp.inf)
    process = _processors(prompt_ids, prompt_mask, k, eos_id, repetition_penalty,
                          use_repetition_penalty, no_repeat_ngram_size, min_length)

    def norm(logp, length):
        length = jnp.asarray(length, jnp.float32)
        if length_penalty_form == "gnmt":  # Wu et al. 2016, PreSumm / PALM
            return logp / ((5.0 + length) / 6.0) ** alpha
        return logp / length ** alpha

    def select(t, logits, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_lens):
        """Extends the alive beams by token ``t``; EOS extensions move to finished."""
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        if process is not None:  # each beam's own sequence; on the log-probs (transformers)
            logp = process(logp, alive_seqs.reshape(batch * k, n), t)
        logp = logp.reshape(batch, k, vocab)
        cand = (alive_logp[:, :, None] + logp).reshape(batch, k * vocab)
        # 2k candidates: at most k of them end in EOS (one per beam), so >= k stay alive.
        vals, idx = jax.lax.top_k(cand, 2 * k)
        src, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
        seqs = _take(alive_seqs, src)
        seqs = jnp.where(jnp.arange(n) == t, tok[:, :, None], seqs)
        if eos_id is not None:
            is_eos = tok == eos_id
            # As in transformers: only EOS candidates ranked within the top k finish.
            new_fin = jnp.where(is_eos & (jnp.arange(2 * k) < k), norm(vals, t + 1), neg_inf)
            all_scores = jnp.concatenate([fin_scores, new_fin], axis=1)
            all_seqs = jnp.concatenate([fin_seqs, seqs], axis=1)
            all_lens = jnp.concatenate([fin_lens, jnp.full((batch, 2 * k), t + 1, jnp.int32)], 1)
            fin_scores, top = jax.lax.top_k(all_scores, k)
            fin_seqs, fin_lens = _take(all_seqs, top), _take(all_lens, top)
            vals = jnp.where(is_eos, neg_inf, vals)
        alive_logp, sel = jax.lax.top_k(vals, k)
        alive_seqs, src, tok = _take(seqs, sel), _take(src, sel), _take(tok, sel)
        return tok, src, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_lens

    def reorder(cache, src):
        rows = (jnp.arange(batch)[:, None] * k + src).reshape(-1)
        return jax.tree_util.tree_map(lambda x: jnp.take(x, rows, axis=0), cache)

    alive_seqs = jnp.full((batch, k, n), pad_id, jnp.int32)
    alive_logp = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, neg_inf)[None], (batch, 1))
    fin_seqs = jnp.full((batch, k, n), pad_id, jnp.int32)
    fin_scores = jnp.full((batch, k), neg_inf)
    fin_lens = jnp.zeros((batch, k), jnp.int32)
    tok, src, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_lens = select(
        0, logits, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_lens)
    cache = reorder(cache, src)

    def all_done(t, alive_logp, fin_scores):
        if eos_id is None:
            return jnp.bool_(False)
        # Exact bound on what an alive beam can still score (log-probs only decrease):
        # with alpha > 0 the best case is the longest length, otherwise the current one.
        best = jnp.max(alive_logp, axis=1)
        bound = jnp.where(alpha > 0, norm(best, n), norm(best, t))
        worst = fin_scores[:, -1]
        done = ((worst > neg_inf) & (bound <= worst)) | (best == neg_inf)
        return jnp.all(done)

    def cond(state):
        t, _, alive_seqs, alive_logp, _, fin_scores, _, _ = state
        return (t < n) & ~all_done(t, alive_logp, fin_scores)

    def body(state):
        t, tok, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_lens, cache = state
        logits, cache = step_fn(params, cache, tok.reshape(batch * k, 1),
                                (first_pos + t - 1)[:, None],
                                jnp.ones((batch * k, 1), jnp.bool_))
        tok, src, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_lens = select(
            t, logits[:, -1], alive_seqs, alive_logp, fin_seqs, fin_scores, fin_lens)
        return t + 1, tok, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_lens, reorder(cache, src)

    state = (jnp.int32(1), tok, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_lens, cache)
    t, _, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_lens, _ = jax.lax.while_loop(
        cond, body, state)
    # Unfinished beams compete at their final length (finished ones win ties).
    scores = jnp.concatenate([fin_scores, norm(alive_logp, t)], axis=1)
    seqs = jnp.concatenate([fin_seqs, alive_seqs], axis=1)
    lens = jnp.concatenate([fin_lens, jnp.full((batch, k), t, jnp.int32)], axis=1)
    scores, top = jax.lax.top_k(scores, k)
    seqs, lens = _take(seqs, top), _take(lens, top)
    return BeamSearchOutput(seqs[:, 0], scores[:, 0], lens[:, 0], seqs, scores, lens)


def beam_search(step_fn: StepFn, init_cache_fn: InitCacheFn, params, prompt_ids,
                prompt_mask=None, max_new_tokens: int = 32, *, num_beams: int = 4,
                length_penalty: float = 1.0, eos_id: int | None = None,
                pad_id: int = 0, length_penalty_form: str = "power",
                repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                min_length: int = 0) -> BeamSearchOutput:
    """Beam search with separately tracked finished hypotheses (t5x / transformers style).

    Each step extends the ``num_beams`` alive beams of every row to their ``2 * num_beams``
    best continuations; those ending in ``eos_id`` (and ranked within the top
    ``num_beams``) join the row's finished pool, the best ``num_beams`` others stay
    alive. A hypothesis scores ``sum(log p) / length ** length_penalty``, ``length`` being
    the number of generated tokens including EOS (transformers' convention); with
    ``length_penalty_form='gnmt'`` it scores ``sum(log p) / ((5 + length) / 6) **
    length_penalty`` (GNMT, Wu et al. 2016; the form of PreSumm / PALM / ModelScope
    ``palm_v2``, which use alpha 0.95). Beams still
    alive at ``max_new_tokens`` compete at that length. The loop stops early once no
    alive beam of any row can beat that row's worst finished hypothesis (an exact bound,
    so stopping early never changes the result). The cache is expanded to
    ``B * num_beams`` rows after the prefill and gathered along axis 0 on reordering.

    ``repetition_penalty``, ``no_repeat_ngram_size``, ``min_length`` (defaults: off): the
    processors of :func:`process_logits`, applied to every beam on its own sequence (real
    prompt tokens, then the beam's tokens so far). As in ``transformers``' beam search they
    act on the log-softmax of the logits, not on the raw logits: the penalty multiplies a
    present token's (negative) log-probability, and the processed log-probabilities are
    what the beam scores add up (they are not renormalised).

    Returns:
      :class:`BeamSearchOutput`: best ``sequences [B, N]`` (pad after EOS), ``scores [B]``,
      ``lengths [B]``, and every row's ``num_beams`` hypotheses, best first.
    """
    prompt_ids, prompt_mask = _check_prompt(prompt_ids, prompt_mask, max_new_tokens)
    if int(num_beams) < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if length_penalty_form not in LENGTH_PENALTY_FORMS:
        raise ValueError(f"unknown length_penalty_form {length_penalty_form!r}; choose one of "
                         f"{LENGTH_PENALTY_FORMS}")
    proc = _processor_args(repetition_penalty, no_repeat_ngram_size, min_length, eos_id)
    return _beam_search_jit(params, prompt_ids, prompt_mask, jnp.float32(length_penalty),
                            jnp.float32(repetition_penalty),
                            step_fn=step_fn, init_cache_fn=init_cache_fn,
                            max_new_tokens=int(max_new_tokens), num_beams=int(num_beams),
                            eos_id=None if eos_id is None else int(eos_id),
                            pad_id=int(pad_id), length_penalty_form=length_penalty_form,
                            **proc)


# ------------------------------------------------------- encoder-decoder adapters
def encoder_features(params) -> dict:
    """The encoder input of encoder-decoder decoding params: ``params['encoder_features']``
    (a dict of arrays with the batch on axis 0, whatever the model's ``encode`` reads), or
    the text shorthand ``params['encoder_ids']`` int ``[B, E]`` = ``{'encoder_input_tokens':
    ids}`` (padding is id 0)."""
    if "encoder_features" in params:
        return dict(params["encoder_features"])
    if "encoder_ids" in params:
        return {"encoder_input_tokens": params["encoder_ids"]}
    raise ValueError("encoder-decoder decoding params need 'encoder_features' (a dict) or "
                     f"'encoder_ids' next to 'model'; got {sorted(params)}")


@dataclasses.dataclass(frozen=True)
class EncDecCachedStep:
    """``step_fn`` of an encoder-decoder flax module with the cached-decoding interface:
    the source is encoded once, the decoder runs one token per step over a KV cache.

    ``params`` is ``{'model': params, 'encoder_features': {...}}`` (or the text shorthand
    ``'encoder_ids'``; :func:`encoder_features`). The module implements (flax methods,
    called through ``apply(..., method=...)``)::

        encode(features) -> encoded
            the whole encoder side, once per decode: any pytree the decoder reads (batch on
            axis 0), e.g. ``{'hidden_states': [B, E, D], 'mask': bool [B, E]}``.
        decode(token_ids, positions, token_mask, encoded=None, cache_length=None) -> logits
            with the ``cache`` collection mutable. Called once with ``encoded`` and
            ``cache_length`` and no cache, it creates the cache (self-attention slots and
            everything the steps need from ``encoded``, such as the cross-attention keys and
            values; its output is discarded); every later call appends its tokens to the
            cache and returns their logits ``[B, L, V]`` (log-softmax is taken of them).

    :meth:`prepare_params` (once per decode, inside the jit) runs ``encode``;
    :class:`EncDecCachedInitCache` creates the cache from its result, so every cache
    leaf (cross-attention keys and values included) is repeated and reordered with the
    beams. With ``unstack=True`` the module is the unrolled twin of a scanned model and
    the scanned parameters are unstacked once per decode, as in :class:`FlaxLMStep`;
    ``encoder`` (the scanned module) then encodes from the parameters as given, so only
    what the decoder steps read is unstacked (XLA drops the unused encoder slices).
    """

    model: Any
    unstack: bool = False
    encoder: Any = None  # module whose ``encode`` runs on params['model'] (default: model)

    def prepare_params(self, params):
        encoder = self.model if self.encoder is None else self.encoder
        encoded = encoder.apply({"params": params["model"]}, encoder_features(params),
                                method="encode")
        p = unstack_scanned_params(params["model"]) if self.unstack else params["model"]
        return {"model": p, "encoded": encoded}

    def __call__(self, params, cache, token_ids, positions, token_mask):
        logits, mutated = self.model.apply(
            {"params": params["model"], "cache": cache}, token_ids, positions, token_mask,
            method="decode", mutable=["cache"])
        return logits, mutated["cache"]


@dataclasses.dataclass(frozen=True)
class EncDecCachedInitCache:
    """``init_cache_fn`` of :class:`EncDecCachedStep` (``takes_params``): the decoder
    cache of the encoded source, from one ``decode`` call on a dummy token with
    ``encoded`` and ``cache_length=max_len``."""

    model: Any
    takes_params: ClassVar[bool] = True

    def __call__(self, batch: int, max_len: int, params=None):
        if params is None or "encoded" not in params:
            raise ValueError("EncDecCachedInitCache needs the prepared params "
                             "(EncDecCachedStep.prepare_params)")
        ids = jnp.zeros((batch, 1), jnp.int32)
        _, mutated = self.model.apply(
            {"params": params["model"]}, ids, ids, jnp.ones((batch, 1), jnp.bool_),
            params["encoded"], max_len, method="decode", mutable=["cache"])
        return mutated["cache"]


def _write_tokens(tokens, token_ids, positions, token_mask):
    """The recompute steps' token buffer ``[rows, L]`` with the new tokens written at their
    positions (masked tokens as 0)."""
    rows = jnp.arange(tokens.shape[0])[:, None]
    return tokens.at[rows, positions].set(jnp.where(token_mask, token_ids, 0))


@dataclasses.dataclass(frozen=True)
class EncDecStep:
    """Reference ``step_fn`` of an encoder-decoder flax module (``PlugModel``-like) without
    a KV cache, for :func:`generate` and :func:`beam_search` (``encdec_adapter(module,
    cache=False)``).

    ``params`` as :class:`EncDecCachedStep` (``encoder_features`` with
    ``encoder_input_tokens`` and optional ``encoder_segment_ids``, or ``encoder_ids``;
    encoder padding is id 0). The decoder prompt is what the model's decoder starts from
    (``[[0]]`` per row: seqio's decoder inputs begin with 0). The cache holds the decoder
    tokens so far ``[rows, L]``; ``rows`` is ``B`` or ``B * num_beams`` (beam search repeats
    each row), and the encoder rows are repeated to match. Every step re-runs the encoder
    and the decoder over the whole buffer, O(L^2) per sequence: the reference the cached
    path is tested against, meant for small models and tests.
    """

    model: Any

    def __call__(self, params, cache, token_ids, positions, token_mask):
        tokens = _write_tokens(cache["tokens"], token_ids, positions, token_mask)
        feats = encoder_features(params)
        enc = jnp.asarray(feats["encoder_input_tokens"], jnp.int32)
        seg = feats.get("encoder_segment_ids")
        seg = (enc > 0).astype(jnp.int32) if seg is None else jnp.asarray(seg, jnp.int32)
        reps = tokens.shape[0] // enc.shape[0]
        enc, seg = jnp.repeat(enc, reps, axis=0), jnp.repeat(seg, reps, axis=0)
        out = self.model.apply({"params": params["model"]}, enc, tokens,
                               encoder_segment_ids=seg)
        logits = jnp.take_along_axis(out["logits"], positions[..., None], axis=1)
        return logits, {"tokens": tokens}


@dataclasses.dataclass(frozen=True)
class EncDecFeaturesStep:
    """Reference ``step_fn`` (no KV cache) of a module whose source is not text alone (an
    image, an image and a question): the module implements ``lm_logits(features,
    decoder_ids) -> [B, T, V]`` (teacher-forced logits over its own encoding of
    ``features``). Every step re-encodes the features (repeated to the rows: beams) and
    re-runs the decoder over the whole token buffer, as :class:`EncDecStep`."""

    model: Any

    def __call__(self, params, cache, token_ids, positions, token_mask):
        tokens = _write_tokens(cache["tokens"], token_ids, positions, token_mask)
        feats = encoder_features(params)
        reps = tokens.shape[0] // next(iter(jax.tree_util.tree_leaves(feats))).shape[0]
        feats = jax.tree_util.tree_map(lambda x: jnp.repeat(jnp.asarray(x), reps, axis=0),
                                       feats)
        out = self.model.apply({"params": params["model"]}, feats, tokens,
                               method="lm_logits")
        logits = jnp.take_along_axis(out, positions[..., None], axis=1)
        return logits, {"tokens": tokens}


@dataclasses.dataclass(frozen=True)
class EncDecInitCache:
    """``init_cache_fn`` of :class:`EncDecStep`: an empty decoder token buffer."""

    def __call__(self, batch: int, max_len: int):
        return {"tokens": jnp.zeros((batch, max_len), jnp.int32)}


def encdec_adapter(model, *, cache: bool = True, unroll_layers: bool = True) -> DecodeFns:
    """``(step_fn, init_cache_fn)`` for an encoder-decoder flax module.

    ``cache=True`` (default): :class:`EncDecCachedStep` — encode once, decode over a KV
    cache; the module needs ``encode`` / ``decode`` methods (``PlugModel``, ``PalmModel``).
    With ``unroll_layers`` a scanned model (``config.scan_layers``) decodes with its
    unrolled twin, as :func:`flax_lm_adapter`. ``cache=False``: :class:`EncDecStep`, the
    reference that re-runs the encoder and the whole decoder prefix every step
    (:class:`EncDecFeaturesStep` for a module with ``lm_logits``: image sources).
    """
    if not cache:
        if callable(getattr(model, "lm_logits", None)):
            return DecodeFns(EncDecFeaturesStep(model), EncDecInitCache())
        return DecodeFns(EncDecStep(model), EncDecInitCache())
    if not (callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))):
        raise ValueError(f"encdec_adapter(cache=True) needs a module with encode / decode "
                         f"methods (docs/decoding.md); {type(model).__name__} has none: "
                         f"fix: add them, or use cache=False")
    config = getattr(model, "config", None)
    if unroll_layers and getattr(config, "scan_layers", False):
        unrolled = model.clone(config=config.replace(scan_layers=False))
        return DecodeFns(EncDecCachedStep(unrolled, unstack=True, encoder=model),
                         EncDecCachedInitCache(unrolled))
    return DecodeFns(EncDecCachedStep(model), EncDecCachedInitCache(model))
