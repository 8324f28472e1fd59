"""Encoder-decoder greedy decoding speed: the cached path (encode once, KV cache, cross
keys / values computed once) vs the recompute reference (encoder + whole decoder prefix
re-run every step), on PALM shapes.

Random parameters of the PALM ``tiny`` and ``base`` presets (copy head on, float32),
sources of ``--src_len`` random tokens, batch 1 and 8, 64 greedy new tokens without EOS
(every row decodes all of them). Both paths go through ``decoding.generate`` with the
model's ``EncoderDecoderLM.decode_fns(cache=...)``, in the same process on the same
weights; each decode is compiled ahead of time (``lower().compile()``) so compilation is
excluded and reported separately, then timed ``--repeats`` times (median; the slow
recompute path on ``base`` once). Tokens/s counts generated tokens of all rows. The two
paths' tokens are compared (a random model can have near-ties, so a mismatch is reported,
not fatal).

    python benchmarks/encdec_decode.py [--presets tiny,base] [--batches 1,8]
        [--new_tokens 64] [--src_len 128] [--repeats 3]

Not a test: it lives outside ``tests/`` and asserts nothing about time.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax import decoding, models
from plug_jax.families.palm import PalmConfig, param_count


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _compiled_generate(fns, params, ids, mask, n):
    """``decoding.generate(..., method='greedy')`` compiled ahead of time: (compiled fn, s)."""
    t0 = time.perf_counter()
    args = (params, ids, mask, jnp.float32(1.0), jnp.float32(1.0), jax.random.PRNGKey(0))
    compiled = decoding._generate_jit.lower(
        *args, step_fn=fns.step_fn, init_cache_fn=fns.init_cache_fn, max_new_tokens=n,
        method="greedy", top_k=0, use_top_p=False, eos_id=None, pad_id=0).compile()
    return (lambda: compiled(*args)), time.perf_counter() - t0


def _time(run, repeats):
    out = np.asarray(jax.block_until_ready(run().tokens))  # first run, not timed
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run().tokens)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,base")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--src_len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow_repeats", type=int, default=1,
                    help="timed runs of the recompute path on presets other than tiny")
    args = ap.parse_args(argv)
    n = args.new_tokens
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} "
          f"({jax.devices()[0].device_kind}); load average at start {_loadavg()}")
    print(f"greedy, {n} new tokens, source {args.src_len} tokens, float32, copy head on")
    rows = []
    for preset in args.presets.split(","):
        cfg = PalmConfig.from_preset(preset)
        model = models.EncoderDecoderLM(cfg, family="palm")
        batch = {"encoder_input_tokens": np.ones((1, 8), np.int32),
                 "decoder_input_tokens": np.ones((1, 8), np.int32)}
        params = nn.unbox(jax.jit(lambda r: model.init_params(r, batch))(jax.random.PRNGKey(0)))
        print(f"\nPALM {preset}: {param_count(cfg) / 1e6:.1f}M params ({cfg.num_encoder_layers} "
              f"encoder + {cfg.num_decoder_layers} decoder layers, hidden {cfg.hidden_size}, "
              f"vocab {cfg.vocab_size})")
        for b in (int(x) for x in args.batches.split(",")):
            rng = np.random.default_rng(b)
            enc = rng.integers(1, cfg.vocab_size, (b, args.src_len)).astype(np.int32)
            inputs = {"model": params, "encoder_ids": enc}
            ids, mask = np.zeros((b, 1), np.int32), np.ones((b, 1), np.int32)
            res = {}
            for name, cache in (("recompute", False), ("cached", True)):
                run, compile_s = _compiled_generate(model.decode_fns(cache=cache), inputs,
                                                    ids, mask, n)
                reps = args.repeats if cache or preset == "tiny" else args.slow_repeats
                tokens, sec = _time(run, reps)
                res[name] = (tokens, sec)
                print(f"  batch {b:2d} {name:9s}: {b * n / sec:9.1f} tokens/s "
                      f"({sec:.3f} s per decode, median of {reps}; compile {compile_s:.1f} s)",
                      flush=True)
            ratio = res["recompute"][1] / res["cached"][1]
            same = int((res["recompute"][0] == res["cached"][0]).sum())
            print(f"  batch {b:2d} speed-up cached / recompute: {ratio:.1f}x; tokens equal "
                  f"{same}/{res['cached'][0].size}")
            rows.append((preset, b, b * n / res["recompute"][1], b * n / res["cached"][1],
                         ratio, same == res["cached"][0].size))
    print(f"\nload average at end {_loadavg()}")
    print("| preset | batch | recompute tok/s | cached tok/s | speed-up | tokens equal |")
    print("|---|---:|---:|---:|---:|---|")
    for preset, b, slow, fast, ratio, same in rows:
        print(f"| {preset} | {b} | {slow:.1f} | {fast:.1f} | {ratio:.1f}x | {same} |")


if __name__ == "__main__":
    main()
