"""Greedy decoding speed: plug_jax (jitted while-loop over the KV cache) vs transformers.

A random GPT-2-shaped model (default n_embd 384, 6 layers, 6 heads, vocab 8000: ~14M
parameters), batch 1, a 16-token prompt, 128 greedy new tokens. The same weights run in
both frameworks (converted with ``plug_jax.convert.from_transformers``); the outputs are
checked to agree. plug_jax is timed after a warm-up call whose compile time is reported
separately; transformers runs ``generate(do_sample=False)`` under ``torch.inference_mode()``
after its own warm-up. Both run on this machine's CPU (torch and XLA use every core).

    python benchmarks/decode_vs_transformers.py [--repeats 5] [--new_tokens 128] [--scan_layers]

Not a test: it lives outside ``tests/`` and asserts nothing about time.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import torch
import transformers

from plug_jax import decoding
from plug_jax.convert import from_transformers
from plug_jax.families.gpt3.network import GPT3LM
from plug_jax.layers.scan import stack_layers, unstack_layers


def _relayout(config, params, scan_layers: bool):
    """Puts the converted parameters in the requested (scanned / unrolled) layout."""
    decoder = dict(params["decoder"])
    if config.scan_layers and not scan_layers:
        decoder = unstack_layers(decoder, config.num_layers)
    elif scan_layers and not config.scan_layers:
        decoder = stack_layers(decoder, config.num_layers)
    return config.replace(scan_layers=scan_layers), {**params, "decoder": decoder}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n_embd", type=int, default=384)
    ap.add_argument("--n_layer", type=int, default=6)
    ap.add_argument("--n_head", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scan_layers", action="store_true",
                    help="decode with the scanned layer layout (default: unrolled)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head, vocab_size=args.vocab,
        n_positions=max(256, args.prompt_len + args.new_tokens), initializer_range=0.1,
        bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    n_params = sum(p.numel() for p in hf.parameters())
    config, params = from_transformers(hf, family="gpt3")
    config, params = _relayout(config, params, args.scan_layers)
    step_fn, init_cache_fn = decoding.flax_lm_adapter(GPT3LM(config))

    rng = np.random.default_rng(0)
    prompt = rng.integers(1, args.vocab, size=(1, args.prompt_len), dtype=np.int64)
    mask = np.ones_like(prompt, dtype=bool)
    n = args.new_tokens
    print(f"model: GPT-2 shape, {n_params / 1e6:.1f}M params (n_embd {args.n_embd}, "
          f"{args.n_layer} layers, vocab {args.vocab}); batch 1, prompt {args.prompt_len}, "
          f"{n} greedy new tokens; {'scanned' if args.scan_layers else 'unrolled'} layers")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); transformers {transformers.__version__}")

    def run_jax():
        out = decoding.generate(step_fn, init_cache_fn, params, prompt, mask, n)
        return np.asarray(jax.block_until_ready(out.tokens))

    t0 = time.perf_counter()
    jax_tokens = run_jax()
    first = time.perf_counter() - t0
    jax_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run_jax()
        jax_times.append(time.perf_counter() - t0)
    jax_s = statistics.median(jax_times)

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(torch.from_numpy(prompt), attention_mask=torch.ones_like(torch.from_numpy(prompt)),
                              do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        return out[:, args.prompt_len:].numpy()

    hf_tokens = run_hf()  # warm-up
    hf_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run_hf()
        hf_times.append(time.perf_counter() - t0)
    hf_s = statistics.median(hf_times)

    agree = np.array_equal(jax_tokens, hf_tokens)
    same = int((jax_tokens == hf_tokens).sum())
    print(f"plug_jax:     compile ~{first - jax_s:.2f} s (first call {first:.2f} s); "
          f"{n / jax_s:8.1f} tokens/s (median of {args.repeats}: {jax_s * 1e3:.1f} ms)")
    print(f"transformers: {n / hf_s:8.1f} tokens/s (median of {args.repeats}: {hf_s * 1e3:.1f} ms)")
    print(f"ratio plug_jax / transformers (tokens/s): {hf_s / jax_s:.2f}x")
    print(f"outputs agree: {agree} ({same}/{jax_tokens.size} tokens equal)")
    if not agree:
        raise SystemExit("plug_jax and transformers greedy outputs differ")


if __name__ == "__main__":
    main()
