"""Encoder-decoder generation over a KV cache (``decoding.encdec_adapter``, the default of
``EncoderDecoderLM.decode_fns``): the source is encoded once, the decoder runs one token per
step with cached self-attention and cross-attention keys / values computed once. It must
give what the recompute reference (``encdec_adapter(module, cache=False)``, which re-runs
the encoder and the whole decoder prefix every step) gives: the same step-by-step
log-probabilities (1e-5) and the same greedy and 5-beam tokens, on the PALM tiny preset with
the copy head (pointer-generator, with and without the released second softmax) and on the
PLUG tiny preset, for a batch of sources of different lengths (right-padded with id 0).
A toy image-prefix model shows that a non-text encoder plugs in through the same entry
point."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax import decoding, models
from plug_jax.families.palm import PalmConfig
from plug_jax.families.plug import PlugConfig
from plug_jax.families.plug.network import PlugDecoderLayer, decoder_cross_mask

# A larger init than PLUG's 0.02 (whose random model only ever predicts token 0) keeps the
# tiny model's outputs varied and its logits separated.
CASES = {
    "palm_copy": ("palm", PalmConfig.from_preset("tiny")),
    "palm_copy_softmax": ("palm", PalmConfig.from_preset("tiny", copy_softmax=True)),
    "plug": ("plug", PlugConfig.from_preset("tiny", initializer_range=0.2)),
}
ENC_LENGTHS = (12, 7, 3)  # three sources, right-padded to 12 with id 0


@functools.lru_cache(maxsize=None)
def _setup(case):
    family, cfg = CASES[case]
    model = models.EncoderDecoderLM(cfg, family=family)
    batch = {"encoder_input_tokens": np.ones((1, 12), np.int32),
             "decoder_input_tokens": np.ones((1, 4), np.int32)}
    params = nn.unbox(jax.jit(lambda r: model.init_params(r, batch))(jax.random.PRNGKey(0)))
    rs = np.random.RandomState(1)
    enc = rs.randint(1, cfg.vocab_size, (len(ENC_LENGTHS), 12)).astype(np.int32)
    for r, n in enumerate(ENC_LENGTHS):
        enc[r, n:] = 0
    return model, params, enc


def _start(rows):
    return np.zeros((rows, 1), np.int32), np.ones((rows, 1), np.int32)


def _teacher_forced_log_probs(step_fn, init_cache_fn, params, tokens, after_prefill=None):
    """Log-probabilities ``[B, T, V]`` of decoding ``tokens`` ``[B, T]`` (the first is the
    start token 0) one step at a time, through ``decoding``'s own prepare / init / step."""
    step = jax.jit(step_fn)
    params = decoding._prepare(step_fn, params)
    rows, n = tokens.shape
    cache = decoding._init_cache(init_cache_fn, params, rows, n)
    if after_prefill is not None:
        params = after_prefill(params)
    out = []
    for t in range(n):
        logits, cache = step(params, cache, jnp.asarray(tokens[:, t:t + 1]),
                             jnp.full((rows, 1), t, jnp.int32), jnp.ones((rows, 1), bool))
        out.append(np.asarray(jax.nn.log_softmax(logits[:, -1].astype(jnp.float32))))
    return np.stack(out, 1)


@pytest.mark.parametrize("case", list(CASES))
def test_cached_step_log_probs_equal_recompute(case):
    """Teacher-forced decoding of a fixed token sequence: every step's log-probabilities
    through the cache equal the recomputed ones (1e-5), for the unrolled twin that decoding
    uses by default and for the scanned layout."""
    model, params, enc = _setup(case)
    rs = np.random.RandomState(2)
    tokens = rs.randint(1, model.config.vocab_size, (len(ENC_LENGTHS), 10)).astype(np.int32)
    tokens[:, 0] = 0
    tokens[:, 5] = enc[:, 1]  # a source token, which the copy head can copy
    inputs = {"model": params, "encoder_ids": enc}
    want = _teacher_forced_log_probs(*model.decode_fns(cache=False), inputs, tokens)
    got = _teacher_forced_log_probs(*model.decode_fns(), inputs, tokens)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    scanned = decoding.encdec_adapter(model.module, unroll_layers=False)
    assert not scanned.step_fn.unstack and model.decode_fns().step_fn.unstack
    got = _teacher_forced_log_probs(*scanned, inputs, tokens)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


# The encoder's embedding tables, which PLUG's decoder embeds its own tokens with.
SHARED_WITH_DECODER = ("word_embed", "pos_embed", "type_embed", "embed_norm")


def _poison(params):
    """The prepared params with every encoder weight (but the embeddings PLUG's decoder
    shares) and every cross-attention key / value projection set to NaN: a step that
    still ran the encoder or projected the encoder states would return NaN."""
    def walk(tree, path=()):
        if not isinstance(tree, dict):
            encoder = (path[0] in ("encoder", "structbert")
                       and not set(path) & set(SHARED_WITH_DECODER))
            bad = encoder or ("cross_attn" in path and path[path.index("cross_attn") + 1] in
                              ("key", "value"))
            return jnp.full_like(tree, jnp.nan) if bad else tree
        return {k: walk(v, path + (k,)) for k, v in tree.items()}
    return {"model": walk(params["model"]), "encoded": params["encoded"]}


@pytest.mark.parametrize("case", ["palm_copy", "plug"])
def test_steps_use_neither_the_encoder_nor_the_cross_projections(case):
    """After the cache is created the steps read the encoder side from it: poisoning the
    encoder weights and the cross-attention key / value projections changes nothing."""
    model, params, enc = _setup(case)
    tokens = np.asarray([[0, 5, 9, 17]] * len(ENC_LENGTHS), np.int32)
    inputs = {"model": params, "encoder_ids": enc}
    fns = model.decode_fns()
    want = _teacher_forced_log_probs(*fns, inputs, tokens)
    got = _teacher_forced_log_probs(*fns, inputs, tokens, after_prefill=_poison)
    np.testing.assert_array_equal(got, want)
    # The cache holds each layer's cross-attention keys / values of the 12 source slots.
    prepared = fns.step_fn.prepare_params(inputs)
    cache = fns.init_cache_fn(len(ENC_LENGTHS), 4, params=prepared)
    flat = {"/".join(str(p.key) for p in path): x
            for path, x in jax.tree_util.tree_flatten_with_path(cache)[0]}
    cross = [k for k in flat if "cross_attn/cached_key" in k]
    assert len(cross) == model.config.num_decoder_layers
    # [rows, heads, source slots, head_dim] for several rows (attention.cache_heads_first)
    assert all(flat[k].shape[0] == len(ENC_LENGTHS) and flat[k].shape[2] == 12 for k in cross)
    assert all(x.shape[0] == len(ENC_LENGTHS) for x in flat.values())


def _distinct(tokens):
    return len(np.unique(np.asarray(tokens)))


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_equal_recompute(case):
    model, params, enc = _setup(case)
    inputs = {"model": params, "encoder_ids": enc}
    start, mask = _start(len(ENC_LENGTHS))
    want = decoding.generate(*model.decode_fns(cache=False), inputs, start, mask, 12)
    got = decoding.generate(*model.decode_fns(), inputs, start, mask, 12)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    assert _distinct(want.tokens) >= 2  # the random model does not emit one token only
    # The same decode through the generic entry point (a features dict).
    feats = {"model": params, "encoder_features": {
        "encoder_input_tokens": enc, "encoder_segment_ids": (enc > 0).astype(np.int32)}}
    again = decoding.generate(*model.decode_fns(), feats, start, mask, 12)
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(want.tokens))


@pytest.mark.parametrize("case", list(CASES))
def test_beam_search_equals_recompute(case):
    """5 beams, GNMT length penalty (PALM's), with an EOS the beams reach."""
    model, params, enc = _setup(case)
    inputs = {"model": params, "encoder_ids": enc}
    start, mask = _start(len(ENC_LENGTHS))
    greedy = np.asarray(decoding.generate(*model.decode_fns(cache=False), inputs, start,
                                          mask, 4).tokens)
    eos = int(greedy[0, 2])  # row 0 reaches it within a few tokens
    kw = dict(num_beams=5, length_penalty=0.95, length_penalty_form="gnmt", eos_id=eos)
    want = decoding.beam_search(*model.decode_fns(cache=False), inputs, start, mask, 8, **kw)
    got = decoding.beam_search(*model.decode_fns(), inputs, start, mask, 8, **kw)
    np.testing.assert_array_equal(np.asarray(got.all_sequences), np.asarray(want.all_sequences))
    np.testing.assert_array_equal(np.asarray(got.all_lengths), np.asarray(want.all_lengths))
    np.testing.assert_allclose(np.asarray(got.all_scores), np.asarray(want.all_scores),
                               atol=1e-5, rtol=1e-6)
    assert _distinct(want.all_sequences) >= 3


# ------------------------------------------------------ a non-text encoder, same entry point
CFG = PlugConfig.from_preset("tiny", num_decoder_layers=2, vocab_size=96,
                             initializer_range=0.2)


class ImagePrefixLM(nn.Module):
    """A toy image-to-text model in the shape mPLUG / M6 take: ``encode({'image': [B, H, W,
    C]})`` embeds 2x2 patches; the decoder is PLUG's decoder layers (with their decode
    mode) over those states. Nothing in ``decoding`` knows it is an image."""

    config: PlugConfig = CFG

    def encode(self, features):
        return self(features["image"], None, _phase="encode")

    def decode(self, ids, positions, token_mask, encoded=None, cache_length=None):
        return self(None, ids, positions, _phase="decode", _encoded=encoded,
                    _token_mask=token_mask, _cache_length=cache_length)

    @nn.compact
    def __call__(self, image, ids, positions=None, *, _phase="full", _encoded=None,
                 _token_mask=None, _cache_length=None):
        cfg = self.config
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="embed")
        decode = _phase == "decode"
        if decode:
            enc = None if _encoded is None else _encoded["hidden_states"]
        else:
            b, h, w, c = image.shape
            patches = image.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
            enc = nn.Dense(cfg.hidden_size, name="patch_embed")(
                patches.reshape(b, (h // 2) * (w // 2), 4 * c))
            if _phase == "encode":
                return {"hidden_states": enc, "mask": jnp.ones(enc.shape[:2], bool)}
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        x = embed(ids) + nn.Embed(64, cfg.hidden_size, name="pos")(positions)
        if decode:  # self-attention masks itself over the cache; cross mask from the cache
            args = (enc, None, decoder_cross_mask(self, _encoded), _token_mask)
        else:
            args = (enc, jnp.tril(jnp.ones((ids.shape[1],) * 2, bool))[None, None], None)
        for i in range(cfg.num_decoder_layers):
            x, _ = PlugDecoderLayer(cfg, decode=decode, cache_length=_cache_length,
                                    name=f"layer_{i}")(x, *args)
        return embed.attend(x)


def test_an_image_prefix_model_decodes_through_the_same_entry_point():
    model = ImagePrefixLM()
    image = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 3))
    params = model.init(jax.random.PRNGKey(0), image, jnp.zeros((2, 4), jnp.int32))["params"]
    inputs = {"model": params, "encoder_features": {"image": image}}
    start, mask = _start(2)
    fns = decoding.encdec_adapter(model)
    out = np.asarray(decoding.generate(*fns, inputs, start, mask, 6).tokens)
    seq = np.zeros((2, 7), np.int32)  # no-cache greedy: argmax of a full forward per step
    for t in range(6):
        logits = model.apply({"params": params}, image, jnp.asarray(seq))
        seq[:, t + 1] = np.asarray(jnp.argmax(logits[:, t], -1))
    np.testing.assert_array_equal(out, seq[:, 1:])
    assert _distinct(out) >= 3
    beams = decoding.beam_search(*fns, inputs, start, mask, 5, num_beams=5)
    assert np.asarray(beams.sequences).shape == (2, 5)
