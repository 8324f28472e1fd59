"""Headline figures on one NVIDIA H100 / H200: GPT-3 1.3B train MFU, GPT-3 13B and PLUG
decoding time against the memory-bandwidth limit.

One process, one GPU, random weights; each figure is printed next to its goal or limit:

* ``bandwidth``: the device's copy bandwidth, measured here (a jitted ``x + 1`` over a 2 GiB
  float32 array; bytes = read + write, median of several). It is the rate the decode
  limits below are computed with, so they are limits of *this* device, not a data sheet's.
* ``train``: one bf16 train step of the GPT-3 1.3B network (``GPT3Config`` preset ``1.3B``,
  activations bfloat16, parameters and AdamW state float32, dropout 0, scanned layers,
  rematerialisation ``dots_no_batch``), batch 8 x 2048 tokens: the trainer's
  ``make_train_step`` with ``optim.adamw`` (weight decay 0.1, clipping 1.0), jitted with the
  state donated as ``benchmarks/train_vs_transformers.py`` does. Model FLOPs per step are
  ``families/gpt3/flops.training_flops`` (6 x matmul weights + causal attention, no remat
  recompute counted); MFU = model FLOP/s / 989e12, the H100 SXM bf16 dense peak (used for an
  H200 too: same compute). If the compiled step would need more than the device's memory,
  it is recompiled with ``remat_policy='full'`` (printed). Goal: MFU >= 50%.
* ``decode_bf16`` / ``decode_int8``: GPT-3 13B, batch 1, a 16-token prompt then 128 greedy
  new tokens through ``decoding.generate`` with ``decoding.flax_lm_adapter(GPT3LM(config))``
  (unrolled layers, activations bfloat16), with (a) bfloat16 weights and (b) int8 weights
  with float32 per-output-channel scales (``plug_jax/layers/quant.py``: ``kernel`` +
  ``kernel_scale`` for every ``DenseGeneral``, ``embedding`` + ``embedding_scale`` for every
  ``Embed``, the targets found by ``quant.quantization_targets``). Seconds are the median
  of 3 runs after an untimed first run; compilation (ahead of time) is reported apart.
  Limit: ``new_tokens * weight bytes / measured bandwidth`` (batch-1 decoding reads every
  weight once per token; the KV cache, < 0.5% of the bytes here, is left out; the
  position table is counted whole although one row is read). Goals: <= 1.15 s (bf16),
  <= 0.6 s (int8).
* ``encdec``: PLUG 27B (``PlugConfig`` preset ``27B``, 26.1B parameters, 52 GB in bf16), batch
  1, a 512-token source, 128 greedy new tokens through ``decoding.encdec_adapter(PlugModel)``
  (encode once, then the cached decoder; activations and weights bfloat16). Seconds
  include encoding the source. Limit: new tokens x the bytes a decoder step reads (its 6
  layers without the cross-attention key / value projections, which run once per source;
  the final norm; the tied word-embedding table of the logits) / measured bandwidth.
  ``--plug_encoder_layers N`` builds a smaller documented shape (fewer encoder layers:
  the decoder and so the limit are unchanged) if the full model does not fit.

Weights are random and are made directly on the device in their stored dtype, one leaf
at a time by a small jitted function (pseudo-random bits from an integer hash of the element
index, as a uniform distribution with the initializer_range standard deviation for kernels
and tables; ones / zeros for norm scales and biases): no float32 copy of the 13B / 27B
weights ever exists, on the host or on the device, and the same few functions, compiled
once per leaf shape, build every model. The int8 weights are drawn the same way (integers
about uniform in [-127, 127]) with constant float32 scales that give them the same standard
deviation, instead of quantizing float weights: the bytes read and the computation are
those of a quantized checkpoint. (``quant.quantize_params`` converts on the host in numpy;
it is used only to check, on a tiny config, that the int8 tree built here has exactly its
paths, shapes and dtypes.) The decode lines also print the compiled executable's temporary
memory: for int8 weights a temp of the size of the bf16 weights would mean that XLA
dequantized them outside the matmuls.

On a GPU machine (meant to finish within about 8 minutes on an H100, most of it
compilation; not yet measured there). Unless already set, it sets
``XLA_PYTHON_CLIENT_MEM_FRACTION=0.92`` before jax starts (the 27B weights need more than
the default 75%)::

    python benchmarks/gpu_headline.py [--sections train,decode,encdec] [--new_tokens 128]
        [--train_batch 8 --train_seq 2048 --train_remat dots_no_batch]
        [--plug_encoder_layers 24]

On CPU, tiny shapes (GPT-3 ``tiny``, PLUG ``tiny``) in seconds; what
``tests/test_gpu_headline_smoke.py`` runs::

    python benchmarks/gpu_headline.py --smoke

Each section is guarded: a failure prints ``[section] FAILED: <reason>`` (traceback on
stderr), the other sections still run, and the exit status is 1. The script records
nothing by itself: the figures go into ``docs/performance.md`` by hand. Not a test: it
lives outside ``tests/`` and asserts nothing about time.
"""
from __future__ import annotations

import argparse
import functools
import gc
import itertools
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Mapping

if __name__ == "__main__" and "--smoke" not in sys.argv[1:]:
    # Before jax creates its GPU client (it reads this once): the PLUG 27B bf16 weights
    # alone are 52 GB, more than the default 75% preallocation of an 80 GB card.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

from plug_jax import decoding, models, optim  # noqa: E402
from plug_jax.families.gpt3.config import GPT3Config  # noqa: E402
from plug_jax.families.gpt3.flops import training_flops  # noqa: E402
from plug_jax.families.gpt3.network import GPT3LM  # noqa: E402
from plug_jax.families.plug.config import PlugConfig  # noqa: E402
from plug_jax.families.plug.network import PlugModel  # noqa: E402
from plug_jax.layers import quant  # noqa: E402
from plug_jax.trainer.state import TrainState  # noqa: E402
from plug_jax.trainer.step import make_train_step  # noqa: E402

# H100 SXM dense bf16 peak (no sparsity); the H200 has the same compute.
PEAK_BF16_FLOPS = 989e12
GOALS = {"train": "goal >= 50%", "decode_bf16": "goal <= 1.15 s", "decode_int8": "goal <= 0.6 s"}
SECTIONS = ("train", "decode_bf16", "decode_int8", "encdec")
# Standard deviation of the int8 weights drawn here (about uniform over [-127, 127]).
INT8_STD = math.sqrt((256 ** 2 - 1) / 12.0)
GB = 1e9


# ------------------------------------------------------------------------ report
class Report:
    """Section lines as they come (flushed) and the summary table at the end."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.rows: list[tuple[str, float, str, str]] = []
        self.failed: dict[str, str] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def line(self, section: str, text: str) -> None:
        print(f"[{section}] {text}", flush=True)

    def figure(self, name: str, value: float, unit: str, limit: str = "") -> None:
        self.rows.append((name, float(value), unit, limit))

    def summary(self) -> None:
        print("\n== summary: figure | value | unit | goal or limit ==")
        for name, value, unit, limit in self.rows:
            print(f"{name:<34} {value:>14.6g} {unit:<10} {limit}".rstrip())
        for name, reason in self.failed.items():
            print(f"{name:<34} FAILED: {reason}")
        print(f"== end (total {self.elapsed():.1f} s; "
              f"{len(self.failed)} section(s) failed) ==", flush=True)


def run_section(report: Report, name: str, fn, *args) -> None:
    """``fn(report, *args)``; an exception is printed as ``FAILED`` and recorded."""
    report.line(name, f"start at t = {report.elapsed():.1f} s")
    try:
        fn(report, *args)
    except Exception as e:  # one failing figure must not stop the others
        msg = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {msg[0][:300] if msg else ''}"
        report.failed[name] = reason
        report.line(name, f"FAILED: {reason}")
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        gc.collect()  # drop this section's device buffers before the next one
    report.line(name, f"end at t = {report.elapsed():.1f} s")


# ------------------------------------------------------------------------ helpers
def _memory_stats(compiled) -> dict | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        return None
    if m is None:
        return None
    return {"temp": int(m.temp_size_in_bytes), "args": int(m.argument_size_in_bytes),
            "out": int(m.output_size_in_bytes), "alias": int(m.alias_size_in_bytes)}


def _device_bytes_limit() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def _gib(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2 ** 30:.1f} GiB"


def _memory_need(mem) -> int | None:
    """Device bytes a compiled executable needs: arguments + outputs - donated + temps."""
    return None if mem is None else mem["temp"] + mem["args"] + mem["out"] - mem["alias"]


def _fmt_times(times) -> str:
    return ", ".join(f"{t:.3f}" for t in times)


def _hash_bits(seed, shape):
    """uint32 pseudo-random bits of ``shape``: a murmur3-style finaliser of (element index,
    ``seed``). A few elementwise ops: cheap to compile (unlike ``jax.random``'s threefry on
    CPU) and one fused pass over the output on a GPU."""
    x = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    x = x * jnp.uint32(0x9E3779B1) + jnp.asarray(seed, jnp.uint32) * jnp.uint32(0x85EBCA77)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x2C1B3C6D)
    x = x ^ (x >> 12)
    x = x * jnp.uint32(0x297A2D39)
    return x ^ (x >> 15)


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "kind"))
def _draw(seed, value, *, shape, dtype, kind):
    """One leaf, made on the device in its stored dtype: ``uniform`` (mean 0, standard
    deviation ``value``), ``int8`` (uniform integers in [-127, 127]) or ``const``."""
    if kind == "const":
        return jnp.full(shape, value, jnp.dtype(dtype))
    bits = _hash_bits(seed, shape)
    if kind == "int8":
        return jnp.maximum((bits >> 24).astype(jnp.int32) - 128, -127).astype(jnp.int8)
    u = (bits >> 8).astype(jnp.float32) * (2.0 ** -23) - 1.0  # uniform in [-1, 1)
    return (u * (value * math.sqrt(3.0))).astype(jnp.dtype(dtype))


def random_params(abstract, seed: int, std: float, int8_targets=None):
    """Random parameters shaped like ``abstract`` (the unboxed ``eval_shape`` of the model's
    init), leaf by leaf on the default device in the stored dtype: kernels and tables
    uniform with standard deviation ``std`` (the initialiser's), norm scales 1, biases 0.

    ``int8_targets`` (``quant.quantization_targets``): those kernels / tables are int8 with
    a float32 ``kernel_scale`` (shape: the leading layer axis if any + the output axes) or
    ``embedding_scale`` (``[rows]``), constant, giving the int8 weights standard deviation
    ``std`` too."""
    targets = dict(int8_targets or {})
    counter = itertools.count(int(seed) * 100003)

    def draw(shape, dtype, kind, value):
        return _draw(np.uint32(next(counter) % 2 ** 32), np.float32(value),
                     shape=tuple(int(d) for d in shape), dtype=jnp.dtype(dtype).name,
                     kind=kind)

    def walk(node, path):
        out = {}
        spec = targets.get(path)
        weight = None if spec is None else ("kernel" if spec[0] == "dense" else "embedding")
        for name, leaf in node.items():
            if isinstance(leaf, Mapping):
                out[name] = walk(leaf, path + (name,))
            elif name == weight:
                shape = tuple(leaf.shape)
                if spec[0] == "dense":
                    _, n_in, n_out = spec
                    lead = len(shape) - n_in - n_out  # 1 for a scanned layer stack
                    scale_shape = shape[:lead] + shape[lead + n_in:]
                    scale_name = quant.KERNEL_SCALE
                else:
                    scale_shape, scale_name = shape[:1], quant.EMBEDDING_SCALE
                out[name] = draw(shape, "int8", "int8", 0.0)
                out[scale_name] = draw(scale_shape, "float32", "const", std / INT8_STD)
            elif name == "scale":  # norm scales
                out[name] = draw(leaf.shape, leaf.dtype, "const", 1.0)
            elif name == "bias":
                out[name] = draw(leaf.shape, leaf.dtype, "const", 0.0)
            else:
                out[name] = draw(leaf.shape, leaf.dtype, "uniform", std)
        return out

    return walk(abstract, ())


def _tree_layout(tree) -> dict:
    return {jax.tree_util.keystr(p): (tuple(np.shape(x)), np.dtype(x.dtype).name)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def check_int8_layout() -> str:
    """The int8 tree :func:`random_params` builds equals, in paths, shapes and dtypes, what
    ``quant.quantize_params`` makes of bf16 weights (GPT-3 ``tiny``, unrolled; numpy)."""
    cfg = GPT3Config.from_preset("tiny", dtype="bfloat16", param_dtype="bfloat16",
                                 scan_layers=False)
    model = GPT3LM(cfg)
    key = jax.random.PRNGKey(0)
    ids = jnp.zeros((1, 8), jnp.int32)
    abstract = nn.unbox(jax.eval_shape(lambda r: model.init(r, ids), key)["params"])
    targets = quant.quantization_targets(lambda: model.init(key, ids, positions=ids))
    ref = quant.quantize_params(random_params(abstract, 0, cfg.initializer_range), "int8",
                                targets)
    mine = random_params(abstract, 0, cfg.initializer_range, int8_targets=targets)
    a, b = _tree_layout(ref), _tree_layout(mine)
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()))[:6]
        raise AssertionError(f"int8 tree differs from quant.quantize_params: {diff}")
    return f"{len(targets)} targets, {len(b)} leaves"


def _compiled_generate(fns, params, prompt, mask, n):
    """``decoding.generate(..., method='greedy')`` compiled ahead of time (as
    ``benchmarks/encdec_decode.py``): ``(run, compile_s, memory stats)``."""
    args = (params, prompt, mask, jnp.float32(1.0), jnp.float32(1.0), jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    compiled = decoding._generate_jit.lower(
        *args, step_fn=fns.step_fn, init_cache_fn=fns.init_cache_fn, max_new_tokens=n,
        method="greedy", top_k=0, use_top_p=False, eos_id=None, pad_id=0).compile()
    compile_s = time.perf_counter() - t0
    return (lambda: compiled(*args)), compile_s, _memory_stats(compiled)


def _time_decode(run, repeats: int):
    """First run untimed (warm-up), then ``repeats`` timed: (tokens, median s, times)."""
    t0 = time.perf_counter()
    out = run()
    tokens = np.asarray(jax.block_until_ready(out.tokens))
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run().tokens)
        times.append(time.perf_counter() - t0)
    return tokens, statistics.median(times), times, first_s


def _report_decode(report, name, n, sec, times, first_s, compile_s, weight_bytes,
                   bandwidth, mem, tokens, what_bytes, goal=""):
    limit_s = n * weight_bytes / bandwidth if bandwidth else float("nan")
    bw_note = f"{bandwidth / GB:.1f} GB/s" if bandwidth else "n/a (bandwidth section failed)"
    frac = limit_s / sec
    temp = _gib(None if mem is None else mem["temp"])
    report.line(name, f"compile {compile_s:.1f} s (compiled temp memory {temp}); first run "
                      f"{first_s:.3f} s (untimed)")
    report.line(name, f"{n} tokens: {sec:.3f} s (median of {len(times)}: {_fmt_times(times)} s)"
                      f" = {n / sec:.1f} tokens/s   {goal}".rstrip())
    report.line(name, f"{what_bytes}: {weight_bytes / GB:.3f} GB per token; bandwidth limit "
                      f"{limit_s:.3f} s = {n} x {weight_bytes / GB:.3f} GB / "
                      f"{bw_note}; reached {100 * frac:.1f}% of the limit")
    report.line(name, f"first tokens {tokens[0, :8].tolist()}")
    report.figure(f"{name}.seconds", sec, "s", goal or f"limit {limit_s:.4g} s")
    report.figure(f"{name}.tokens_per_s", n / sec, "tokens/s")
    report.figure(f"{name}.compile_s", compile_s, "s")
    report.figure(f"{name}.weight_gb_per_token", weight_bytes / GB, "GB")
    report.figure(f"{name}.limit_s", limit_s, "s", "bandwidth limit")
    report.figure(f"{name}.fraction_of_limit", frac, "", "<= 1")


# ---------------------------------------------------------------------- sections
def section_bandwidth(report: Report, args, state: dict) -> None:
    nbytes = args.bandwidth_bytes
    x = jnp.zeros((nbytes // 4,), jnp.float32)
    copy = jax.jit(lambda a: a + 1.0)
    jax.block_until_ready(copy(x))
    # Rounds of 10 back-to-back calls (asynchronous dispatch hides the launch cost), one
    # wait per round; the median round gives the time of one copy.
    per_round, times = 10, []
    for _ in range(args.bandwidth_repeats):
        t0 = time.perf_counter()
        for _ in range(per_round):
            y = copy(x)
        jax.block_until_ready(y)
        times.append((time.perf_counter() - t0) / per_round)
    del y
    sec = statistics.median(times)
    moved = 2 * x.nbytes  # read + write
    bw = moved / sec
    state["bandwidth"] = bw
    report.line("bandwidth", f"jitted x + 1 over {x.nbytes / 2 ** 30:.3f} GiB float32: "
                             f"{moved / GB:.3f} GB read + written in {sec * 1e3:.3f} ms "
                             f"(median of {len(times)} rounds of {per_round} calls) = "
                             f"{bw / GB:.1f} GB/s")
    report.figure("bandwidth.gb_per_s", bw / GB, "GB/s", "measured copy (read + write)")


def section_train(report: Report, args, state: dict) -> None:
    name = "train"
    preset = "tiny" if args.smoke else args.train_preset
    b, s = (2, 32) if args.smoke else (args.train_batch, args.train_seq)
    cfg = GPT3Config.from_preset(preset, dtype="bfloat16", param_dtype="float32",
                                 dropout_rate=0.0, attention_dropout_rate=0.0,
                                 scan_layers=True, remat_policy=args.train_remat)
    if s > cfg.max_position_embeddings:
        raise ValueError(f"--train_seq {s} > max_position_embeddings "
                         f"{cfg.max_position_embeddings}")
    model = models.DecoderOnlyLM(cfg, family="gpt3")
    shapes = {"decoder_input_tokens": jax.ShapeDtypeStruct((b, s), jnp.int32)}
    t0 = time.perf_counter()
    abstract = nn.unbox(jax.eval_shape(lambda r: model.init_params(r, shapes),
                                       jax.random.PRNGKey(0)))
    params = random_params(abstract, 0, cfg.initializer_range)
    n_params = models.count_params(params)
    tx = optim.adamw(1e-4, weight_decay=0.1, clip_norm=1.0)
    train_state = TrainState.create(params, tx)
    del params
    jax.block_until_ready(train_state)
    init_s = time.perf_counter() - t0
    r = np.random.default_rng(0)
    tokens = r.integers(1, cfg.vocab_size, (b, s + 1)).astype(np.int32)
    batch = jax.device_put({
        "decoder_input_tokens": tokens[:, :-1],
        "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": np.ones((b, s), np.float32),
    })
    rng = jax.random.PRNGKey(1)
    report.line(name, f"GPT-3 {preset}: {n_params / 1e9:.3f}B params ({cfg.num_layers} layers, "
                      f"d {cfg.hidden_size}, {cfg.num_heads} heads, vocab {cfg.vocab_size}); "
                      f"batch {b} x {s} = {b * s} tokens; bf16 activations, float32 params + "
                      f"AdamW; dropout 0; scanned layers; init {init_s:.1f} s")

    def compile_step(policy):
        c = cfg.replace(remat_policy=policy)
        m = models.DecoderOnlyLM(c, family="gpt3")
        t0 = time.perf_counter()
        step = jax.jit(make_train_step(m, num_microbatches=1), donate_argnums=(0,))
        compiled = step.lower(train_state, batch, rng).compile()
        return c, compiled, time.perf_counter() - t0

    cfg, compiled, compile_s = compile_step(args.train_remat)
    mem, limit = _memory_stats(compiled), _device_bytes_limit()
    need = _memory_need(mem)
    report.line(name, f"remat_policy {cfg.remat_policy}: compile {compile_s:.1f} s; "
                      f"compiled memory {_gib(need)} of {_gib(limit)}")
    if need is not None and limit is not None and need > 0.97 * limit \
            and cfg.remat_policy != "full":
        report.line(name, "does not fit: recompiling with remat_policy 'full'")
        cfg, compiled, compile_s = compile_step("full")
        report.line(name, f"remat_policy full: compile {compile_s:.1f} s; compiled memory "
                          f"{_gib(_memory_need(_memory_stats(compiled)))}")

    t0 = time.perf_counter()
    for _ in range(max(args.train_warmup, 1)):
        train_state, metrics = compiled(train_state, batch, rng)
        jax.block_until_ready((train_state, metrics))
    warm_s = time.perf_counter() - t0
    first_loss = float(metrics["loss"])
    times = []
    for _ in range(args.train_steps):
        t0 = time.perf_counter()
        train_state, metrics = compiled(train_state, batch, rng)
        jax.block_until_ready((train_state, metrics))
        times.append(time.perf_counter() - t0)
    last_loss = float(metrics["loss"])
    if not (math.isfinite(first_loss) and math.isfinite(last_loss)):
        raise FloatingPointError(f"non-finite loss {first_loss} -> {last_loss}")
    step_s = statistics.median(times)
    flops = training_flops(cfg, b, s)
    tps = b * s / step_s
    achieved = flops / step_s
    mfu = achieved / PEAK_BF16_FLOPS
    report.line(name, f"{max(args.train_warmup, 1)} warm-up steps {warm_s:.2f} s (excluded); "
                      f"step {step_s * 1e3:.1f} ms (median of {len(times)}: "
                      f"{_fmt_times(times)} s); loss {first_loss:.3f} -> {last_loss:.3f}")
    report.line(name, f"{flops / (b * s) / 1e9:.2f} GFLOP/token (families/gpt3/flops.py, causal)"
                      f" x {b * s} tokens = {flops / 1e12:.1f} TFLOP/step")
    report.line(name, f"{tps:.1f} tokens/s, {achieved / 1e12:.2f} model TFLOP/s, "
                      f"MFU {100 * mfu:.2f}% of {PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s   "
                      f"{GOALS['train']}")
    report.figure("train.step_s", step_s, "s")
    report.figure("train.tokens_per_s", tps, "tokens/s")
    report.figure("train.model_tflops", achieved / 1e12, "TFLOP/s")
    report.figure("train.mfu_percent", 100 * mfu, "%", GOALS["train"])
    report.figure("train.compile_s", compile_s, "s")


def section_gpt3_decode(report: Report, args, state: dict, weights: str) -> None:
    name = f"decode_{weights}"
    preset = "tiny" if args.smoke else args.decode_preset
    n, p_len = args.new_tokens, args.prompt_len
    cfg = GPT3Config.from_preset(preset, dtype="bfloat16", param_dtype="bfloat16",
                                 scan_layers=False, dropout_rate=0.0,
                                 attention_dropout_rate=0.0)
    if p_len + n > cfg.max_position_embeddings:
        raise ValueError(f"prompt {p_len} + {n} new tokens > max_position_embeddings "
                         f"{cfg.max_position_embeddings}")
    model = GPT3LM(cfg)
    key = jax.random.PRNGKey(0)
    ids = jnp.zeros((1, 8), jnp.int32)
    abstract = nn.unbox(jax.eval_shape(lambda r: model.init(r, ids), key)["params"])
    targets = None
    if weights == "int8":
        report.line(name, f"int8 layout check (GPT-3 tiny vs quant.quantize_params): "
                          f"{check_int8_layout()}: same paths, shapes and dtypes")
        targets = quant.quantization_targets(lambda: model.init(key, ids, positions=ids))
    t0 = time.perf_counter()
    params = random_params(abstract, 0, cfg.initializer_range, int8_targets=targets)
    jax.block_until_ready(params)
    build_s = time.perf_counter() - t0
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract))
    weight_bytes = quant.param_bytes(params)
    report.line(name, f"GPT-3 {preset}: {n_params / 1e9:.3f}B params ({cfg.num_layers} layers, "
                      f"d {cfg.hidden_size}, vocab {cfg.vocab_size}); {weights} weights "
                      f"{weight_bytes / GB:.3f} GB"
                      + (f" ({len(targets)} int8 targets + float32 scales)" if targets else "")
                      + f", built on the device in {build_s:.1f} s; bf16 activations; "
                      f"batch 1, prompt {p_len}, {n} greedy new tokens")
    fns = decoding.flax_lm_adapter(model)
    r = np.random.default_rng(0)
    prompt = jnp.asarray(r.integers(1, cfg.vocab_size, (1, p_len)), jnp.int32)
    mask = jnp.ones((1, p_len), jnp.bool_)
    run, compile_s, mem = _compiled_generate(fns, params, prompt, mask, n)
    tokens, sec, times, first_s = _time_decode(run, args.repeats)
    _report_decode(report, name, n, sec, times, first_s, compile_s, weight_bytes,
                   state.get("bandwidth"), mem, tokens, "weight bytes read (all parameters)",
                   GOALS[name] + ("" if n == 128 else " (for 128 tokens)"))


def plug_decoder_step_bytes(params) -> int:
    """Bytes a cached PLUG decoder step reads: the decoder layers without the
    cross-attention key / value projections (run once per source), the final norm, the
    tied word-embedding table (logits) and the embedding norm. The position and token-type
    tables (one row each) are left out."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [str(getattr(k, "key", k)) for k in path]
        nbytes = np.dtype(leaf.dtype).itemsize * int(np.prod(leaf.shape))
        if keys[0] in ("decoder", "decoder_final_norm"):
            if "cross_attn" in keys and keys[-2] in ("key", "value"):
                continue
            total += nbytes
        elif keys[:3] in (["structbert", "encoder", "word_embed"],
                          ["structbert", "encoder", "embed_norm"]):
            total += nbytes
    return total


def section_encdec(report: Report, args, state: dict) -> None:
    name = "encdec"
    preset = "tiny" if args.smoke else args.plug_preset
    n, src_len = args.new_tokens, args.src_len
    cfg = PlugConfig.from_preset(preset, dtype="bfloat16", param_dtype="bfloat16",
                                 scan_layers=False, dropout_rate=0.0,
                                 attention_dropout_rate=0.0)
    shape_note = "the published shape"
    if args.plug_encoder_layers and not args.smoke:
        cfg = cfg.replace(num_encoder_layers=args.plug_encoder_layers)
        shape_note = (f"a smaller documented shape: {args.plug_encoder_layers} encoder layers "
                      f"(the decoder, hence the per-token limit, is the preset's)")
    if src_len > cfg.max_position_embeddings or n + 1 > cfg.max_position_embeddings:
        raise ValueError(f"source {src_len} / {n} new tokens exceed max_position_embeddings "
                         f"{cfg.max_position_embeddings}")
    model = PlugModel(cfg)
    key = jax.random.PRNGKey(0)
    ids = jnp.zeros((1, 8), jnp.int32)
    abstract = nn.unbox(jax.eval_shape(lambda r: model.init(r, ids, ids), key)["params"])
    t0 = time.perf_counter()
    params = random_params(abstract, 0, cfg.encoder.initializer_range)
    jax.block_until_ready(params)
    build_s = time.perf_counter() - t0
    total_bytes = quant.param_bytes(params)
    step_bytes = plug_decoder_step_bytes(params)
    report.line(name, f"PLUG {preset} ({shape_note}): {total_bytes / 2 / 1e9:.2f}B params, "
                      f"{total_bytes / GB:.2f} GB bf16, built on the device in {build_s:.1f} s "
                      f"({cfg.num_encoder_layers} encoder + {cfg.num_decoder_layers} decoder "
                      f"layers, d {cfg.hidden_size}, vocab {cfg.vocab_size}); batch 1, source "
                      f"{src_len} tokens, {n} greedy new tokens; bf16 activations")
    fns = decoding.encdec_adapter(model)
    r = np.random.default_rng(0)
    vocab = cfg.original_vocab_size or cfg.vocab_size
    inputs = {"model": params,
              "encoder_ids": jnp.asarray(r.integers(1, vocab, (1, src_len)), jnp.int32)}
    prompt = jnp.zeros((1, 1), jnp.int32)  # seqio decoder inputs start with 0
    mask = jnp.ones((1, 1), jnp.bool_)
    run, compile_s, mem = _compiled_generate(fns, inputs, prompt, mask, n)
    tokens, sec, times, first_s = _time_decode(run, args.repeats)
    _report_decode(report, name, n, sec, times, first_s, compile_s, step_bytes,
                   state.get("bandwidth"), mem, tokens,
                   "decoder weight bytes read per step (seconds include encoding the source)")


# -------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes on CPU (GPT-3 tiny, PLUG tiny), in seconds")
    ap.add_argument("--sections", default="train,decode,encdec",
                    help="comma list of train, decode (= decode_bf16,decode_int8), "
                         "decode_bf16, decode_int8, encdec")
    ap.add_argument("--new_tokens", type=int, default=None,
                    help="greedy new tokens per decode (default 128; smoke 8)")
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--src_len", type=int, default=None,
                    help="PLUG source tokens (default 512; smoke 32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed decodes (median)")
    ap.add_argument("--train_preset", default="1.3B")
    ap.add_argument("--train_batch", type=int, default=8)
    ap.add_argument("--train_seq", type=int, default=2048)
    ap.add_argument("--train_remat", default="dots_no_batch",
                    help="GPT3Config.remat_policy (none, full, dots, dots_no_batch)")
    ap.add_argument("--train_steps", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--train_warmup", type=int, default=2)
    ap.add_argument("--decode_preset", default="13B")
    ap.add_argument("--plug_preset", default="27B")
    ap.add_argument("--plug_encoder_layers", type=int, default=0,
                    help="build PLUG with this many encoder layers (0: the preset's)")
    ap.add_argument("--bandwidth_bytes", type=int, default=None,
                    help="size of the copied array (default 2 GiB; smoke 8 MiB)")
    ap.add_argument("--bandwidth_repeats", type=int, default=5,
                    help="rounds of 10 timed copies (median round)")
    args = ap.parse_args(argv)
    if args.new_tokens is None:
        args.new_tokens = 8 if args.smoke else 128
    if args.src_len is None:
        args.src_len = 32 if args.smoke else 512
    if args.bandwidth_bytes is None:
        args.bandwidth_bytes = (8 if args.smoke else 2048) * 2 ** 20
    chosen = []
    for s in args.sections.split(","):
        s = s.strip()
        names = ("decode_bf16", "decode_int8") if s == "decode" else (s,)
        for x in names:
            if x not in SECTIONS:
                ap.error(f"unknown section {s!r}; choose from train, decode, "
                         f"{', '.join(SECTIONS[1:])}")
            if x not in chosen:
                chosen.append(x)
    args.sections = [x for x in SECTIONS if x in chosen]
    if args.new_tokens < 1 or args.repeats < 1 or args.train_steps < 1:
        ap.error("--new_tokens, --repeats and --train_steps must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report = Report()
    dev = jax.devices()[0]
    kind = dev.device_kind
    peak_note = ("H100 SXM bf16 dense peak, also used for the H200"
                 if any(k in kind.upper() for k in ("H100", "H200"))
                 else f"nominal H100 SXM bf16 peak; this device is {kind!r}")
    limit = _device_bytes_limit()
    print("== plug_jax GPU headline benchmark" + (" (smoke: tiny shapes)" if args.smoke else "")
          + " ==")
    print(f"versions: jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax "
          f"{flax.__version__}; python {platform.python_version()}")
    print(f"device: platform {dev.platform}, device_kind {kind!r}, {jax.device_count()} "
          f"device(s); memory limit {_gib(limit)}; "
          f"XLA_PYTHON_CLIENT_MEM_FRACTION={os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION')}")
    print(f"MFU peak: {PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s ({peak_note})")
    print(f"sections: {', '.join(args.sections)}; new tokens {args.new_tokens}", flush=True)
    state: dict = {}
    if any(s.startswith("decode") or s == "encdec" for s in args.sections):
        run_section(report, "bandwidth", section_bandwidth, args, state)
    for s in args.sections:
        if s == "train":
            run_section(report, s, section_train, args, state)
        elif s.startswith("decode"):
            run_section(report, s, section_gpt3_decode, args, state, s[len("decode_"):])
        else:
            run_section(report, s, section_encdec, args, state)
    report.summary()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
