"""Memory of ChatPLUG generation on one device, planned as ``plug-plan`` plans a train step.

``plug-plan`` compiles the train step; a serving row needs the decode instead. This lowers and
compiles the real generation program (``EncoderDecoderLM.decode_fns()``: the passages encoded
once, then ``decoding.beam_search`` over the decoder KV cache, cross-attention keys and values
projected once per beam row) for one fake CPU device, from abstract parameters (nothing is
allocated), and reads XLA's ``memory_analysis``: ``argument + output - alias + temp`` against the
device's memory less ``plan.HEADROOM``, as docs/scaling.md does. The caveat of that page holds:
the temporaries are XLA:CPU's, a proxy for the GPU compiler's.

    python benchmarks/chatplug_infer_memory.py [--preset 3.7B] [--batch 1] [--beams 3] \\
        [--max_new_tokens 512] [--dtype bfloat16] [--hardware h100_80gb] [--json]

Defaults are the release's serving setting: bf16 weights and activations, 20 passages of 380
tokens, 3 beams, up to 512 new tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time


def plan_generation(preset: str = "3.7B", batch: int = 1, beams: int = 3,
                    max_new_tokens: int = 512, dtype: str = "bfloat16",
                    hardware: str = "h100_80gb") -> dict:
    from plug_jax import plan
    plan.force_cpu_devices(1)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    from plug_jax import decoding, models
    from plug_jax.families.chatplug import ChatPLUGConfig

    cfg = ChatPLUGConfig.from_preset(preset, dtype=dtype, param_dtype=dtype, dropout_rate=0.0)
    model = models.EncoderDecoderLM(cfg, family="chatplug")
    enc_len = cfg.encoder_length
    batch_shapes = {"encoder_input_tokens": jax.ShapeDtypeStruct((1, enc_len), jnp.int32),
                    "decoder_input_tokens": jax.ShapeDtypeStruct((1, 8), jnp.int32)}
    params = nn.unbox(jax.eval_shape(model.init_params, jax.random.PRNGKey(0), batch_shapes))
    ids = jax.ShapeDtypeStruct((batch, enc_len), jnp.int32)
    start, mask = np.zeros((batch, 1), np.int32), np.ones((batch, 1), np.int32)
    fns = model.decode_fns()

    def generate(p, e):
        inputs = {"model": p, "encoder_ids": e}
        if beams > 1:
            return decoding.beam_search(*fns, inputs, start, mask, max_new_tokens,
                                        num_beams=beams, length_penalty=1.2, eos_id=1).sequences
        return decoding.generate(*fns, inputs, start, mask, max_new_tokens, eos_id=1).tokens

    t0 = time.perf_counter()
    lowered = jax.jit(generate).lower(params, ids)
    t1 = time.perf_counter()
    compiled = plan.compile_uncached(lowered)
    t2 = time.perf_counter()
    stats = plan.compiled_memory(compiled)
    total = stats.pop("peak")
    hw = plan.HARDWARE[hardware]
    usable = int(hw.memory_bytes * (1.0 - plan.HEADROOM))
    leaves = jax.tree_util.tree_leaves(params)
    param_bytes = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves)
    d, layers = cfg.num_heads * cfg.d_kv, cfg.decoder_layers
    itemsize = np.dtype(dtype).itemsize
    rows = batch * beams
    return {
        "preset": preset, "param_count": int(sum(math.prod(x.shape) for x in leaves)),
        "dtype": dtype, "batch": batch, "beams": beams, "max_new_tokens": max_new_tokens,
        "passages": cfg.num_passages, "passage_length": cfg.passage_length,
        "param_bytes": int(param_bytes),
        # the decoder cache by hand: cross-attention K and V of every encoder state and the
        # self-attention K and V of every decoder slot, per layer and beam row
        "cross_cache_bytes": int(2 * layers * rows * enc_len * d * itemsize),
        "self_cache_bytes": int(2 * layers * rows * (max_new_tokens + 1) * d * itemsize),
        "compiled": stats, "total_bytes": int(total),
        "hardware": hardware, "memory_bytes": hw.memory_bytes, "usable_bytes": usable,
        "fits": bool(total <= usable),
        "lower_seconds": round(t1 - t0, 1), "compile_seconds": round(t2 - t1, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="3.7B")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--max_new_tokens", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--hardware", default="h100_80gb")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = plan_generation(a.preset, a.batch, a.beams, a.max_new_tokens, a.dtype, a.hardware)
    if a.json:
        print(json.dumps(r, indent=1))
        return 0
    gb = 1e9
    c = r["compiled"]
    print(f"chatplug/{r['preset']} generation, {r['param_count']:,} parameters in {r['dtype']}: "
          f"batch {r['batch']} x {r['beams']} beams, {r['passages']} passages x "
          f"{r['passage_length']} tokens, up to {r['max_new_tokens']} new tokens")
    print(f"  parameters {r['param_bytes'] / gb:.2f} GB; decoder cache by hand: cross "
          f"{r['cross_cache_bytes'] / gb:.2f} GB + self {r['self_cache_bytes'] / gb:.2f} GB")
    print(f"  compiled (XLA:CPU proxy): arguments {c['argument'] / gb:.2f} GB, outputs "
          f"{c['output'] / gb:.3f} GB, aliased {c['alias'] / gb:.2f} GB, temporaries "
          f"{c['temp'] / gb:.2f} GB -> total {r['total_bytes'] / gb:.2f} GB")
    print(f"  {r['hardware']}: usable {r['usable_bytes'] / gb:.1f} GB of "
          f"{r['memory_bytes'] / gb:.0f} GB -> {'FITS' if r['fits'] else 'DOES NOT FIT'} "
          f"({100 * r['total_bytes'] / r['memory_bytes']:.1f}% of memory); compile "
          f"{r['compile_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
