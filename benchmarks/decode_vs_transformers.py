"""Greedy decoding speed: plug_jax (jitted while-loop over the KV cache) vs transformers.

A random GPT-2-shaped model (default n_embd 384, 6 layers, 6 heads, vocab 8000: ~14M
parameters), batch 1, a 16-token prompt, 128 greedy new tokens. The same weights run in
both frameworks (converted with ``plug_jax.convert.from_transformers``); the outputs are
checked to agree. plug_jax is timed after a warm-up call whose compile time is reported
separately; transformers runs ``generate(do_sample=False)`` under ``torch.inference_mode()``
after its own warm-up. Both run on this machine's CPU (torch and XLA use every core).

    python benchmarks/decode_vs_transformers.py [--repeats 5] [--new_tokens 128] [--scan_layers]
        [--weights_dtype float32,bfloat16,int8] [--batch_sizes 1,8,32] [--bandwidth_mib 1024]

Flags beyond the model shape:

* ``--weights_dtype``: plug_jax also decodes (batch 1) with weight-only low-precision
  weights (``plug_jax/layers/quant.py``: bf16, or int8 with a float32 scale per output
  channel) quantized from the float32 weights in the decoded layout. Repeatable or
  comma-separated; float32 always runs (it is the reference).
* ``--batch_sizes``: throughput with B prompts of mixed lengths (drawn from
  ``[prompt_len // 2, prompt_len]``, seed 1), left-padded to ``prompt_len`` with pad id 0
  and a 0/1 attention mask, in both frameworks (float32). Default ``1``: only the
  batch-1 run, whose prompt is one full-length row without padding.
* ``--bandwidth_mib``: size of the arrays of the memory-bandwidth measurement.

What is printed:

* ``plug_jax`` / ``transformers`` lines: tokens/s of the batch-1 decode, median of
  ``--repeats`` timed calls (plug_jax: compile time = first call - median).
* ``memory bandwidth (before|after)``: ``np.copyto`` of a float32 array of
  ``--bandwidth_mib`` MiB (well beyond the L3 cache) into a preallocated one, with 1 thread
  and with one thread per core (each copying a contiguous slice). A copy of N bytes moves
  2N bytes (N read + N written); the figure is 2N / seconds, best of 5 (median in
  parentheses). Measured in this process before and after all decode timings.
* ``bandwidth limit``: the best copy figure of the two measurements. It is used as the
  rate at which decoding can *read* memory: the read bandwidth is taken to equal the
  copy's read + write traffic rate (2N / s), an assumption; a read-only stream is not
  measured.
* ``bytes per token``: memory a decode reads per generated token, over a whole decode of
  ``new_tokens`` tokens (prefill + ``new_tokens - 1`` single-token steps: every weight is
  read once per step, and one step produces one token per row):
    - weights, as stored (``quant.param_bytes``): every parameter once per step, except
      the position table (only the looked-up rows: one per input token) and the token
      table, which is the tied LM head and so read fully once per step, *plus* one row
      (and, for int8, its scale) per input token for the lookup. Input tokens are the
      ``prompt_len`` prompt columns (padding included) and the ``new_tokens - 1`` tokens
      fed back. With batch B the per-step weight reads are shared by B tokens.
    - KV cache: ``2 (K, V) x layers x n_embd x 4 bytes (float32) x mean cache length``
      per row, mean cache length ``prompt_len + (new_tokens - 1) / 2`` (token ``t``
      attends to ``prompt_len + t`` cached positions; padding slots included). The same
      formula for both frameworks; what they really touch differs (plug_jax's fixed-size
      cache attends over all ``prompt_len + new_tokens - 1`` slots every step, masked;
      transformers' ``DynamicCache`` grows by ``torch.cat``, re-writing the cache every
      step); neither is counted. Activations and logits are not counted either.
* ``fraction of bandwidth``: bytes per token x tokens/s / bandwidth limit. Weights that fit
  in the L3 cache (the default model: 55 MB float32 vs 300 MiB) can be read faster than
  DRAM, so a fraction above 1 is possible and one below 1 is not proof of a memory limit.
  For bf16 / int8 the bytes are counted as stored; on CPU quant.py converts the narrow
  kernels to a float32 temporary before the dot (see its docstring), so the bytes really
  read per step can be the float32 ones.
* weights-dtype table (batch 1): tokens/s, ratio to float32 plug_jax tokens/s, bytes per
  token, fraction of bandwidth, and agreement with the float32 greedy tokens:
    - ``teacher-forced``: the float32 greedy sequence (prompt + new tokens) through
      ``GPT3LM.apply`` with the low-precision weights in one forward pass; the count of the
      ``new_tokens`` positions where the argmax equals the float32 token (for the float32
      row: its own full-forward argmax vs its cached greedy decode).
    - ``free-running``: the low-precision greedy decode's tokens equal to the float32 ones
      (count) and the length of their common prefix.
    - ``max|dlogit|/std``: max abs difference of that teacher-forced pass's logits from the
      float32 pass's, over the ``new_tokens`` positions that predict the new tokens,
      divided by the std of the float32 logits at those positions.
* batch table: for each batch size, tokens/s (B x new_tokens / median seconds) of both,
  their ratio, bytes per token and fraction of bandwidth (same accounting), and how many
  of the B x new_tokens greedy tokens are equal; on a difference the first differing
  (row, new-token position) is printed.

Exits non-zero when plug_jax and transformers greedy tokens differ at any batch size.
Not a test: it lives outside ``tests/`` and asserts nothing about time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from plug_jax import decoding
from plug_jax.convert import from_transformers
from plug_jax.families.gpt3.network import GPT3LM
from plug_jax.layers import quant
from plug_jax.layers.scan import stack_layers, unstack_layers

KV_ITEMSIZE = 4  # float32 KV cache in both frameworks


def _relayout(config, params, scan_layers: bool):
    """Puts the converted parameters in the requested (scanned / unrolled) layout."""
    decoder = dict(params["decoder"])
    if config.scan_layers and not scan_layers:
        decoder = unstack_layers(decoder, config.num_layers)
    elif scan_layers and not config.scan_layers:
        decoder = stack_layers(decoder, config.num_layers)
    return config.replace(scan_layers=scan_layers), {**params, "decoder": decoder}


# ------------------------------------------------------------------ memory bandwidth
def _copy_gbs(src, dst, threads: int, repeats: int):
    """(best, median) of 2 * nbytes / seconds / 1e9 for ``dst[:] = src`` split into
    ``threads`` contiguous slices copied concurrently (numpy releases the GIL)."""
    edges = np.linspace(0, src.size, threads + 1).astype(np.int64)
    slices = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    times = []
    with ThreadPoolExecutor(threads) as pool:
        for i in range(repeats + 1):  # the first copy is a warm-up
            t0 = time.perf_counter()
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), slices))
            if i:
                times.append(time.perf_counter() - t0)
    rates = [2 * src.nbytes / t / 1e9 for t in times]
    return max(rates), statistics.median(rates)


def measure_bandwidth(mib: int, repeats: int = 5) -> dict[int, tuple[float, float]]:
    """{threads: (best, median) copy GB/s} for 1 thread and one thread per core."""
    n = mib * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.zeros(n, np.float32)  # written once: the pages exist before the timing
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {}
    for threads in sorted({1, max(1, cores or 1)}):
        out[threads] = _copy_gbs(src, dst, threads, repeats)
    del src, dst
    return out


def _l3_bytes() -> int | None:
    """The L3 cache size from sysfs, or None."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(base)):
            with open(f"{base}/{index}/level") as f:
                if f.read().strip() != "3":
                    continue
            with open(f"{base}/{index}/size") as f:
                size = f.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
            return int(size.rstrip("KMG")) * mult
    except (OSError, ValueError):
        pass
    return None


def _print_bandwidth(label, bw, mib):
    parts = [f"{t} thread{'s' if t > 1 else ''} {best:.1f} GB/s (median {med:.1f})"
             for t, (best, med) in sorted(bw.items())]
    print(f"memory bandwidth ({label}): copy of {mib} MiB float32 into a preallocated array, "
          f"2N bytes moved per N-byte copy: " + ", ".join(parts))


# ------------------------------------------------------------------ bytes per token
def _weight_bytes_per_token(total, token_table, pos_table, batch, prompt_len, n):
    """Weight bytes read per generated token over a decode of ``n`` tokens for ``batch``
    rows (module docstring, "bytes per token"). ``total``: all parameters as stored;
    ``token_table`` / ``pos_table``: ``(table bytes, rows)`` of the token / position
    embeddings (int8 scales included). Each of the ``n`` steps reads everything but the
    position table; every input token (``prompt_len`` prompt columns + ``n - 1`` fed
    back, per row) looks up one token row and one position row."""
    tok_row = token_table[0] / token_table[1]
    pos_row = pos_table[0] / pos_table[1]
    lookups = batch * (prompt_len + n - 1)
    return (n * (total - pos_table[0]) + lookups * (tok_row + pos_row)) / (batch * n)


def _kv_bytes_per_token(n_layer, n_embd, prompt_len, n):
    """KV cache bytes read per generated token (per row): 2 x layers x n_embd x 4 x mean
    cache length, token t attending to prompt_len + t cached positions."""
    return 2 * n_layer * n_embd * KV_ITEMSIZE * (prompt_len + (n - 1) / 2)


def _jax_tables(params):
    """``(bytes, rows)`` of plug_jax's token and position tables (scales included)."""
    def table(name):
        node = params[name]
        return quant.param_bytes(node), int(np.shape(node["embedding"])[0])
    return table("token_embed"), table("pos_embed")


def _hf_weight_bytes(hf):
    """``(total, token table, position table)`` of the transformers model, same accounting
    (``parameters()`` yields the tied wte / lm_head weight once)."""
    total = sum(p.numel() * p.element_size() for p in hf.parameters())
    wte, wpe = hf.transformer.wte.weight, hf.transformer.wpe.weight
    return (total, (wte.numel() * wte.element_size(), wte.shape[0]),
            (wpe.numel() * wpe.element_size(), wpe.shape[0]))


# ------------------------------------------------------------------ helpers
def _parse_list(values, default, cast=str):
    out = []
    for value in values or [default]:
        for item in str(value).split(","):
            if item.strip():
                item = cast(item.strip())
                if item not in out:
                    out.append(item)
    return out


def _time(fn, repeats):
    """(first call result, first call seconds, median seconds of ``repeats`` more calls)."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return result, first, statistics.median(times)


def _mixed_prompts(batch, prompt_len, vocab, seed=1):
    """``batch`` prompts with lengths in ``[prompt_len // 2, prompt_len]``, left-padded to
    ``prompt_len`` with id 0; returns ``(ids int64 [B, P], mask int64 [B, P], lengths)``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, prompt_len // 2), prompt_len + 1, size=batch)
    ids = np.zeros((batch, prompt_len), np.int64)
    mask = np.zeros((batch, prompt_len), np.int64)
    for row, length in enumerate(lengths):
        ids[row, prompt_len - length:] = rng.integers(1, vocab, size=length)
        mask[row, prompt_len - length:] = 1
    return ids, mask, lengths


def _first_difference(a, b):
    rows, cols = np.nonzero(a != b)
    return None if rows.size == 0 else (int(rows[0]), int(cols[0]))


def _common_prefix(a, b):
    diff = np.nonzero(a.reshape(-1) != b.reshape(-1))[0]
    return int(a.size if diff.size == 0 else diff[0])


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
    ap.add_argument("--weights_dtype", action="append", default=None,
                    help="plug_jax weight-only precision(s): float32, bfloat16, int8 "
                         "(repeatable or comma-separated; float32 always runs)")
    ap.add_argument("--batch_sizes", action="append", default=None,
                    help="batch sizes for the throughput table, e.g. 1,8,32 (default 1)")
    ap.add_argument("--bandwidth_mib", type=int, default=1024,
                    help="MiB per array of the memory-bandwidth copy (keep it >> L3)")
    args = ap.parse_args(argv)
    weights_dtypes = _parse_list(args.weights_dtype, "float32", quant.check_weights_dtype)
    weights_dtypes = ["float32"] + [w for w in weights_dtypes if w != "float32"]
    batch_sizes = _parse_list(args.batch_sizes, "1", int)
    if any(b < 1 for b in batch_sizes):
        ap.error(f"batch sizes must be >= 1, got {batch_sizes}")

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head, vocab_size=args.vocab,
        n_positions=max(256, args.prompt_len + args.new_tokens), initializer_range=0.1,
        bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    n_params = sum(p.numel() for p in hf.parameters())
    config, params = from_transformers(hf, family="gpt3")
    config, params = _relayout(config, params, args.scan_layers)
    params = jax.device_put(params)
    model = GPT3LM(config)
    step_fn, init_cache_fn = decoding.flax_lm_adapter(model)

    rng = np.random.default_rng(0)
    prompt = rng.integers(1, args.vocab, size=(1, args.prompt_len), dtype=np.int64)
    mask = np.ones_like(prompt, dtype=bool)
    n = args.new_tokens
    P = args.prompt_len
    print(f"model: GPT-2 shape, {n_params / 1e6:.1f}M params (n_embd {args.n_embd}, "
          f"{args.n_layer} layers, vocab {args.vocab}); batch 1, prompt {args.prompt_len}, "
          f"{n} greedy new tokens; {'scanned' if args.scan_layers else 'unrolled'} layers")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); transformers {transformers.__version__}")

    bw_before = measure_bandwidth(args.bandwidth_mib)
    _print_bandwidth("before", bw_before, args.bandwidth_mib)

    def run_jax(p=params, ids=prompt, m=mask):
        out = decoding.generate(step_fn, init_cache_fn, p, ids, m, n)
        return np.asarray(jax.block_until_ready(out.tokens))

    def run_hf(ids=prompt, m=None):
        ids = torch.from_numpy(ids)
        m = torch.ones_like(ids) if m is None else torch.from_numpy(m)
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=m, do_sample=False, max_new_tokens=n,
                              min_new_tokens=n, pad_token_id=0)
        return out[:, ids.shape[1]:].numpy()

    jax_tokens, first, jax_s = _time(run_jax, args.repeats)
    hf_tokens, _, hf_s = _time(run_hf, args.repeats)  # the first call is the warm-up

    failures = []
    agree = np.array_equal(jax_tokens, hf_tokens)
    same = int((jax_tokens == hf_tokens).sum())
    print(f"plug_jax:     compile ~{first - jax_s:.2f} s (first call {first:.2f} s); "
          f"{n / jax_s:8.1f} tokens/s (median of {args.repeats}: {jax_s * 1e3:.1f} ms)")
    print(f"transformers: {n / hf_s:8.1f} tokens/s (median of {args.repeats}: {hf_s * 1e3:.1f} ms)")
    print(f"ratio plug_jax / transformers (tokens/s): {hf_s / jax_s:.2f}x")
    print(f"outputs agree: {agree} ({same}/{jax_tokens.size} tokens equal)")
    if not agree:
        failures.append("plug_jax and transformers greedy outputs differ")

    # ---- weights dtypes (plug_jax, batch 1)
    ids8 = jnp.zeros((1, 8), jnp.int32)
    targets = quant.quantization_targets(
        lambda: GPT3LM(config).init(jax.random.PRNGKey(0), ids8, positions=ids8))
    seq = jnp.asarray(np.concatenate([prompt, jax_tokens], axis=1), jnp.int32)
    seq_pos = jnp.broadcast_to(jnp.arange(seq.shape[1], dtype=jnp.int32), seq.shape)
    forward = jax.jit(lambda p: model.apply({"params": p}, seq, positions=seq_pos))
    gen_slice = slice(P - 1, P + n - 1)  # logits at these positions predict new tokens 0..n-1
    ref_logits = np.asarray(forward(params))[0, gen_slice]
    ref_std = float(ref_logits.std())
    kv_tok = _kv_bytes_per_token(args.n_layer, args.n_embd, P, n)
    wd_rows = []
    for wd in weights_dtypes:
        if wd == "float32":
            p, tokens, first_w, s = params, jax_tokens, first, jax_s
        else:
            p = jax.device_put(quant.quantize_params(params, wd, targets))
            tokens, first_w, s = _time(lambda p=p: run_jax(p), args.repeats)
        logits = np.asarray(forward(p))[0, gen_slice]
        tf_equal = int((logits.argmax(-1) == jax_tokens[0]).sum())
        free_equal = int((tokens == jax_tokens).sum())
        err = float(np.abs(logits - ref_logits).max()) / ref_std
        tok_table, pos_table = _jax_tables(p)
        w_tok = _weight_bytes_per_token(quant.param_bytes(p), tok_table, pos_table, 1, P, n)
        wd_rows.append((wd, first_w - s, n / s, jax_s / s, w_tok, w_tok + kv_tok, tf_equal,
                        free_equal, _common_prefix(tokens, jax_tokens), err))

    # ---- batched throughput (float32)
    tok_f32, pos_f32 = _jax_tables(params)
    total_f32 = quant.param_bytes(params)
    hf_total, hf_tok_table, hf_pos_table = _hf_weight_bytes(hf)
    batch_rows = []
    for b in batch_sizes:
        if b == 1:  # the run above: one full-length prompt, no padding
            j_tok, h_tok, j_s, h_s, j_first = jax_tokens, hf_tokens, jax_s, hf_s, first
        else:
            ids, m, _ = _mixed_prompts(b, P, args.vocab)
            j_tok, j_first, j_s = _time(lambda ids=ids, m=m: run_jax(ids=ids, m=m.astype(bool)),
                                        args.repeats)
            h_tok, _, h_s = _time(lambda ids=ids, m=m: run_hf(ids, m), args.repeats)
        bytes_j = _weight_bytes_per_token(total_f32, tok_f32, pos_f32, b, P, n) + kv_tok
        bytes_h = _weight_bytes_per_token(hf_total, hf_tok_table, hf_pos_table, b, P, n) + kv_tok
        batch_rows.append((b, j_first - j_s, b * n / j_s, b * n / h_s, bytes_j, bytes_h,
                           int((j_tok == h_tok).sum()), j_tok.size,
                           _first_difference(j_tok, h_tok), j_tok, h_tok))

    bw_after = measure_bandwidth(args.bandwidth_mib)
    _print_bandwidth("after", bw_after, args.bandwidth_mib)
    limit = max(best for bw in (bw_before, bw_after) for best, _ in bw.values())
    print(f"bandwidth limit: {limit:.1f} GB/s = best copy rate above (read + written bytes "
          f"per second), taken as the rate at which decoding can read memory")

    # ---- batch-1 bandwidth accounting
    w_j = _weight_bytes_per_token(total_f32, tok_f32, pos_f32, 1, P, n)
    w_h = _weight_bytes_per_token(hf_total, hf_tok_table, hf_pos_table, 1, P, n)
    print(f"bytes per token (batch 1): weights plug_jax {w_j / 1e6:.2f} MB, transformers "
          f"{w_h / 1e6:.2f} MB (float32, all parameters as stored: {total_f32 / 1e6:.2f} MB); "
          f"KV cache {kv_tok / 1e6:.3f} MB (mean cache length {P + (n - 1) / 2:g})")
    frac_j = (w_j + kv_tok) * (n / jax_s) / (limit * 1e9)
    frac_h = (w_h + kv_tok) * (n / hf_s) / (limit * 1e9)
    print(f"fraction of bandwidth limit (batch 1): plug_jax {frac_j:.2f} "
          f"({(w_j + kv_tok) * n / jax_s / 1e9:.1f} GB/s), transformers {frac_h:.2f} "
          f"({(w_h + kv_tok) * n / hf_s / 1e9:.1f} GB/s)")
    # XLA:CPU streams a batch-1 matrix-vector product on one thread (docs/decoding.md,
    # "Bandwidth"), so the one-thread copy rate is what plug_jax's decoding can reach here.
    one = max(bw[1][0] for bw in (bw_before, bw_after) if 1 in bw)
    print(f"fraction of the one-thread copy rate ({one:.1f} GB/s): plug_jax "
          f"{(w_j + kv_tok) * n / jax_s / (one * 1e9):.2f}, transformers "
          f"{(w_h + kv_tok) * n / hf_s / (one * 1e9):.2f}")
    l3 = _l3_bytes()
    if l3 is not None and total_f32 < l3:
        print(f"note: the float32 weights ({total_f32 / 1e6:.1f} MB) fit in the L3 cache "
              f"({l3 / (1 << 20):.0f} MiB): decoding may read them at cache, not DRAM, speed")

    # ---- weights-dtype table
    print(f"weights dtype (plug_jax, batch 1; agreement with float32 over {n} new tokens):")
    print(f"  {'dtype':9s} {'compile':>8s} {'tokens/s':>9s} {'vs f32':>7s} {'MB/token':>9s} "
          f"{'fraction':>8s} {'teacher-forced':>15s} {'free-running':>13s} {'prefix':>7s} "
          f"{'max|dlogit|/std':>16s}")
    for wd, comp, tps, rel, w_tok, b_tok, tf_eq, fr_eq, prefix, err in wd_rows:
        frac = b_tok * tps / (limit * 1e9)
        print(f"  {wd:9s} {comp:7.2f}s {tps:9.1f} {rel:6.2f}x {b_tok / 1e6:9.2f} {frac:8.2f} "
              f"{f'{tf_eq}/{n}':>15s} {f'{fr_eq}/{n}':>13s} {prefix:7d} {err:16.2e}")
    if jax.default_backend() == "cpu" and len(wd_rows) > 1:
        print("  (MB/token counts bf16 / int8 weights as stored; on CPU quant.py converts them to "
              "float32 before each dot, so the bytes actually read can be the float32 ones)")

    # ---- batch table
    print(f"batched throughput (float32; B prompts of lengths {max(1, P // 2)}..{P} "
          f"left-padded to {P}; batch 1 = the run above):")
    print(f"  {'batch':>5s} {'compile':>8s} {'plug_jax tok/s':>15s} {'transformers tok/s':>19s} "
          f"{'ratio':>6s} {'MB/token pj|hf':>15s} {'fraction pj|hf':>15s} {'tokens equal':>14s}")
    for b, comp, tj, th, bj, bh, eq, size, diff, j_tok, h_tok in batch_rows:
        fj, fh = bj * tj / (limit * 1e9), bh * th / (limit * 1e9)
        print(f"  {b:5d} {comp:7.2f}s {tj:15.1f} {th:19.1f} {tj / th:5.2f}x "
              f"{f'{bj / 1e6:.2f}|{bh / 1e6:.2f}':>15s} {f'{fj:.2f}|{fh:.2f}':>15s} "
              f"{f'{eq}/{size}':>14s}")
        if diff is not None:
            r, t = diff
            print(f"    batch {b}: first difference at row {r}, new token {t}: plug_jax "
                  f"{j_tok[r, t]} vs transformers {h_tok[r, t]}")
            if b != 1:
                failures.append(f"plug_jax and transformers greedy outputs differ at batch {b}")
    if failures:
        raise SystemExit("; ".join(failures))


if __name__ == "__main__":
    main()
