"""Greedy agreement of bf16 / int8 weights with float32 on a *trained* model.

``decode_vs_transformers.py`` reports agreement on a random GPT-2 (its logits are nearly
flat, so tiny weight errors flip the argmax); this measures it where it matters, on a run
of an experiment: its ``PROMPTS`` (the ``make demo`` run: Shop World product prompts from
the test split), 128 greedy new tokens each, in float32 and with the weights converted at
load time exactly as ``plug-infer --weights_dtype`` converts them
(``loop.load_weights_dtype``). Printed per weights dtype:

* teacher-forced agreement: the float32 greedy sequence fed through the low-precision model
  in one forward pass; the fraction of the new-token positions whose argmax equals the
  float32 token (what each step would pick given the same history);
* free-running agreement: the fraction of positions where the low-precision greedy tokens
  equal the float32 ones, and the mean length of the common prefix (one early flip makes
  every later token differ, so this is the harsher figure);
* the maximum logit difference over those positions, relative to the float32 logits'
  standard deviation.

    python benchmarks/quant_agreement.py --gin_file=experiments/gpt3/shop_tiny.gin \\
        --gin.MODEL_DIR=/tmp/plug_jax_demo [--new_tokens 128]

Decoder-only experiments (GPT-3); EOS is ignored, so every row has ``new_tokens`` tokens.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None) -> int:
    import gin

    from plug_jax import decoding, gin_utils
    from plug_jax.cli import add_gin_flags
    from plug_jax.layers import quant
    from plug_jax.trainer import loop

    bindings, rest = gin_utils.split_gin_flags(sys.argv[1:] if argv is None else argv)
    ap = add_gin_flags(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--num_prompts", type=int, default=16)
    a = ap.parse_args(rest)
    search = a.gin_search_paths.split(",") if a.gin_search_paths else None
    gin_utils.parse_gin(a.gin_file, bindings, search)
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    model_dir = gin.query_parameter("%MODEL_DIR")
    prompts = gin.query_parameter("%PROMPTS")
    if hasattr(prompts, "scoped_configurable_fn"):
        prompts = prompts.scoped_configurable_fn()
    prompts = list(prompts)[:a.num_prompts]
    data = loop.DatasetConfig(gin.query_parameter("%MIXTURE_OR_TASK_NAME"),
                              gin.query_parameter("%TASK_FEATURE_LENGTHS"), batch_size=1,
                              converter=gin.query_parameter("%FEATURE_CONVERTER"))
    if getattr(model, "encoder_decoder", False) or not hasattr(model, "logits"):
        raise SystemExit("quant_agreement: decoder-only experiments only (GPT-3)")
    params, step, _ = loop.load_for_inference(model, model_dir, data, loop.MeshConfig(rules="dp"))
    params = jax.device_get(params)
    vocabulary, _ = loop.inference_vocabulary(model_dir, data)
    encoded = [list(vocabulary.encode(p)) for p in prompts]
    width = max(len(e) for e in encoded)
    ids = np.zeros((len(encoded), width), np.int32)
    for r, e in enumerate(encoded):
        ids[r, width - len(e):] = e
    mask = ids != 0
    n = a.new_tokens
    fns = model.decode_fns()
    print(f"{model_dir} @ step {step}: {len(prompts)} prompts (left-padded to {width}), "
          f"{n} greedy new tokens, EOS ignored")

    def greedy(p):
        return np.asarray(decoding.generate(*fns, p, ids, mask, n).tokens)

    def logits_of(p, seq):
        return np.asarray(model.logits(p, {"decoder_input_tokens": seq}), np.float32)

    ref = greedy(params)
    print(f"  {'weights':9s} {'MB':>8s} {'teacher-forced':>15s} {'free-running':>13s} "
          f"{'mean prefix':>12s} {'max|dlogit|/std':>16s}")
    ref_logits = None
    for wd in ("float32", "bfloat16", "int8"):
        p = loop.load_weights_dtype(model, params, data, wd, log=False)
        got = ref if wd == "float32" else greedy(p)
        lg = _aligned_logits(model, p, ids, mask, ref, logits_of)
        if ref_logits is None:
            ref_logits = lg
        tf = float(np.mean(np.argmax(lg, -1) == ref))
        free = float(np.mean(got == ref))
        prefix = float(np.mean([int(np.argmin(np.append(r == g, False))) for r, g in
                                zip(ref, got)]))
        err = float(np.max(np.abs(lg - ref_logits)) / np.std(ref_logits))
        print(f"  {wd:9s} {quant.param_bytes(p) / 1e6:8.2f} {tf:15.3f} {free:13.3f} "
              f"{prefix:12.1f} {err:16.2e}", flush=True)
    return 0


def _aligned_logits(model, p, ids, mask, ref, logits_of):
    """Logits ``[rows, n, V]`` that predict each of the ``n`` float32 greedy tokens, from one
    forward pass per row over its real prompt tokens followed by the greedy tokens (no
    padding, so positions and attention are those of the decode)."""
    out = []
    for r in range(len(ids)):
        real = ids[r][mask[r]]
        seq = np.concatenate([real, ref[r]])[None].astype(np.int32)
        lg = logits_of(p, jnp.asarray(seq))[0]
        out.append(lg[len(real) - 1:len(real) - 1 + ref.shape[1]])
    return np.stack(out)


if __name__ == "__main__":
    sys.exit(main())
