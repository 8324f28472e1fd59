"""Training speed and CPU MFU: plug_jax train step vs a transformers GPT-2 PyTorch step.

In one process, on this machine's CPU:

1. the plug_jax train step: ``DecoderOnlyLM(GPT3Config(...))``, ``optim.adamw`` (weight
   decay 0.1, global-norm clipping 1.0), ``TrainState``, ``make_train_step(model, 1)``
   jitted with ``donate_argnums=(0,)``; the batch is a dict of numpy arrays (unpacked);
2. a ``transformers`` ``GPT2LMHeadModel`` step of the same shape (n_embd, n_layer, n_head,
   vocab, n_positions; GPT-2's tanh GELU and LayerNorm epsilon in both): forward with
   labels, backward, grad clipping 1.0, ``torch.optim.AdamW``, ``zero_grad(set_to_none=True)``;
3. the float32 matmul rate of a jitted ``n x n`` matmul (median of several), the
   denominator of CPU MFU = ``model.flops_per_token(seq_len)`` (6 x matmul params +
   causal attention) x tokens/s / matmul FLOP/s. The torch step's MFU uses the same
   formula and the same denominator.

Dropout is 0 and everything is float32 in both. Compilation / the first steps are
warm-up, reported separately and excluded; the timed steps alternate between the two
frameworks in ``--rounds`` blocks (so a neighbour process that loads the machine hurts
both alike; each block starts with one untimed step) and the median step time is
reported. The jax side blocks on the result of
every step. torch uses ``torch.get_num_threads()`` as it is; XLA uses every core.

    python benchmarks/train_vs_transformers.py [--d_model 512 --layers 8 --heads 8
        --vocab 8192 --seq_len 512 --batch 4] [--no-scan_layers] [--remat_policy dots]
        [--xla_flags "--xla_cpu_use_onednn=true"] [--steps 6 --rounds 2] [--malloc_retain]

Not a test: it lives outside ``tests/`` and asserts nothing about time.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d_model", type=int, default=512, help="n_embd / hidden_size")
    ap.add_argument("--layers", type=int, default=8, help="n_layer / num_layers")
    ap.add_argument("--heads", type=int, default=8, help="n_head / num_heads")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--n_positions", type=int, default=None,
                    help="position-table size in both models (default: seq_len)")
    ap.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=True,
                    help="GPT3Config.scan_layers (default: the config default, scanned)")
    ap.add_argument("--remat_policy", default="none",
                    help="GPT3Config.remat_policy (none, full, dots, dots_no_batch, minimal)")
    ap.add_argument("--activation", default="gelu_tanh",
                    help="plug_jax activation; GPT-2 uses gelu_tanh (= gelu_new)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per framework")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternate jax / torch in this many blocks of steps/rounds")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed steps per framework after compilation (at least 1)")
    ap.add_argument("--matmul_n", type=int, default=2048)
    ap.add_argument("--matmul_repeats", type=int, default=10,
                    help="timed matmuls, half before and half after the train steps")
    ap.add_argument("--skip_torch", action="store_true", help="only the plug_jax step")
    ap.add_argument("--xla_flags", default="",
                    help="appended to XLA_FLAGS before jax is imported")
    ap.add_argument("--malloc_retain", action="store_true",
                    help="before anything allocates, mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1, "
                         "M_ARENA_MAX=1) so freed host memory is reused instead of being "
                         "unmapped and page-faulted again every step (affects both "
                         "frameworks; glibc only)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.steps % args.rounds:
        ap.error("--steps must be a positive multiple of --rounds")
    return args


def retain_host_memory() -> bool:
    """glibc only: keep freed memory in the heap (no mmap/munmap per large buffer).

    XLA:CPU allocates its temporaries afresh on every execution; above glibc's mmap
    threshold each one is a new mapping whose pages fault in (and are zeroed) again.
    """
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, -1)
                and libc.mallopt(m_arena_max, 1))


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matmul_flops(n: int, repeats: int) -> tuple[float, list[float]]:
    """Median float32 FLOP/s of a jitted ``n x n @ n x n`` matmul, and the times (s)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    r = np.random.default_rng(0)
    a = jnp.asarray(r.standard_normal((n, n), dtype=np.float32))
    b = jnp.asarray(r.standard_normal((n, n), dtype=np.float32))
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times), times


def torch_matmul_flops(n: int, repeats: int) -> float:
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times)


def make_batch(batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
    """Unpacked LM batch of numpy arrays with seqio's decoder feature names."""
    import numpy as np
    r = np.random.default_rng(seed)
    tokens = r.integers(1, vocab, (batch, seq_len + 1)).astype(np.int32)
    return {
        "decoder_input_tokens": tokens[:, :-1].copy(),
        "decoder_target_tokens": tokens[:, 1:].copy(),
        "decoder_loss_weights": np.ones((batch, seq_len), np.float32),
    }


def build_jax(args, config_overrides: dict | None = None, step_fn=None):
    """Returns ``(model, config, n_params, state, step, compile_s)``; ``step`` is the
    compiled step. ``config_overrides`` update the GPT3Config fields and ``step_fn``
    replaces ``make_train_step`` (both for experiments that import this module).
    """
    import jax
    from flax import linen as nn

    from plug_jax import models, optim
    from plug_jax.families.gpt3 import GPT3Config
    from plug_jax.trainer.state import TrainState
    from plug_jax.trainer.step import make_train_step

    n_pos = args.n_positions or args.seq_len
    kw = dict(vocab_size=args.vocab, num_layers=args.layers, num_heads=args.heads,
              hidden_size=args.d_model, ffn_size=4 * args.d_model,
              max_position_embeddings=n_pos, layer_norm_epsilon=1e-5,
              activation=args.activation, dropout_rate=0.0, attention_dropout_rate=0.0,
              tie_word_embeddings=True, dtype="float32", param_dtype="float32",
              scan_layers=args.scan_layers, remat_policy=args.remat_policy)
    cfg = GPT3Config(**{**kw, **(config_overrides or {})})
    model = models.DecoderOnlyLM(cfg, family="gpt3")
    batch = make_batch(args.batch, args.seq_len, args.vocab)
    params = nn.unbox(model.init_params(jax.random.PRNGKey(0), batch))
    n_params = models.count_params(params)
    tx = optim.adamw(1e-4, weight_decay=0.1, clip_norm=1.0)
    state = TrainState.create(params, tx)
    fn = step_fn(model) if step_fn is not None else make_train_step(model, num_microbatches=1)
    rng = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    step = jax.jit(fn, donate_argnums=(0,)).lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    return model, cfg, n_params, state, step, compile_s


def build_torch(args):
    """Returns ``(n_params, step_closure, attn_impl)``."""
    import numpy as np
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    n_pos = args.n_positions or args.seq_len
    hf_cfg = transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=n_pos, n_embd=args.d_model, n_layer=args.layers,
        n_head=args.heads, n_inner=4 * args.d_model, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        tie_word_embeddings=True, use_cache=False, bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(hf_cfg).float().train()
    n_params = sum(p.numel() for p in hf.parameters())
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.1)
    ids = torch.from_numpy(
        np.random.default_rng(0).integers(1, args.vocab, (args.batch, args.seq_len))
        .astype(np.int64))

    def step():
        loss = hf(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    attn = getattr(hf.config, "_attn_implementation", None) or "default"
    return n_params, step, attn


def main(argv=None):
    args = parse_args(argv)
    malloc_note = "glibc defaults"
    if args.malloc_retain:
        malloc_note = ("mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1, M_ARENA_MAX=1)"
                       if retain_host_memory() else "mallopt unavailable (not glibc)")
    if args.xla_flags:
        if "jax" in sys.modules:
            print("warning: jax is already imported; --xla_flags may have no effect")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()

    import jax

    load_start = _loadavg()
    # The matmul reference is sampled before and after the steps (half the repeats
    # each) and the median of all samples is used: it drifts by several % over a run.
    _, mm_times = matmul_flops(args.matmul_n, (args.matmul_repeats + 1) // 2)
    model, cfg, n_params, state, step, compile_s = build_jax(args)
    batch = make_batch(args.batch, args.seq_len, args.vocab)
    rng = jax.random.PRNGKey(1)
    tokens = args.batch * args.seq_len
    fpt = model.flops_per_token(args.seq_len)

    print(f"config: d_model {args.d_model}, {args.layers} layers, {args.heads} heads, "
          f"ffn {4 * args.d_model}, vocab {args.vocab}, n_positions "
          f"{args.n_positions or args.seq_len}; batch {args.batch} x seq {args.seq_len} = "
          f"{tokens} tokens/step; float32, dropout 0, tied embeddings, {args.activation}")
    print(f"plug_jax: {n_params / 1e6:.2f}M params; "
          f"{'scanned' if args.scan_layers else 'unrolled'} layers; remat_policy "
          f"{args.remat_policy}; AdamW(wd 0.1) + clip 1.0; "
          f"{fpt / 1e6:.1f} MFLOP/token (6 x matmul params + causal attention)")
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs; python {platform.python_version()}; "
          f"jax/jaxlib {jax.__version__} on {jax.devices()[0].platform} "
          f"({jax.device_count()} device); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
          f"host malloc: {malloc_note}")

    # ---------------------------------------------------------------- warm-up
    t0 = time.perf_counter()
    for _ in range(max(args.warmup, 1)):
        state, metrics = step(state, batch, rng)
        jax.block_until_ready(metrics)
    jax_warm_s = time.perf_counter() - t0
    first_loss = float(metrics["loss"])

    hf_step = None
    if not args.skip_torch:
        import torch
        import transformers
        t0 = time.perf_counter()
        hf_params, hf_step, attn_impl = build_torch(args)
        hf_build_s = time.perf_counter() - t0
        print(f"transformers: GPT2LMHeadModel {hf_params / 1e6:.2f}M params, attention "
              f"{attn_impl!r}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
              f"transformers {transformers.__version__}")
        t0 = time.perf_counter()
        for _ in range(max(args.warmup, 1)):
            hf_loss = hf_step()
        hf_warm_s = time.perf_counter() - t0

    # ------------------------------------------------------------ timed steps
    # Right after the other framework ran, the first step is slower (caches, host memory
    # handed back and faulted in again), so when both run every block of timed steps
    # starts with one untimed step.
    jax_times, hf_times = [], []
    per_round = args.steps // args.rounds
    for _ in range(args.rounds):
        if hf_step is not None:
            state, metrics = step(state, batch, rng)
            jax.block_until_ready(metrics)
        for _ in range(per_round):
            t0 = time.perf_counter()
            state, metrics = step(state, batch, rng)
            jax.block_until_ready((state, metrics))
            jax_times.append(time.perf_counter() - t0)
        if hf_step is not None:
            hf_step()
            for _ in range(per_round):
                t0 = time.perf_counter()
                hf_loss = hf_step()
                hf_times.append(time.perf_counter() - t0)
    last_loss = float(metrics["loss"])

    mm_times += matmul_flops(args.matmul_n, args.matmul_repeats // 2 or 1)[1]
    mm = 2.0 * args.matmul_n ** 3 / statistics.median(mm_times)
    load_end = _loadavg()

    # ----------------------------------------------------------------- report
    jax_s = statistics.median(jax_times)
    jax_tps = tokens / jax_s
    jax_mfu = fpt * jax_tps / mm

    def fmt(ts):
        return ", ".join(f"{t:.3f}" for t in ts)

    print(f"matmul: jitted {args.matmul_n}x{args.matmul_n} float32: {mm / 1e9:.1f} GFLOP/s "
          f"(median of {len(mm_times)}, before and after the steps; min..max "
          f"{2 * args.matmul_n ** 3 / max(mm_times) / 1e9:.1f}.."
          f"{2 * args.matmul_n ** 3 / min(mm_times) / 1e9:.1f})")
    if hf_step is not None:
        print(f"         torch {args.matmul_n}x{args.matmul_n} float32 (reference): "
              f"{torch_matmul_flops(args.matmul_n, args.matmul_repeats) / 1e9:.1f} GFLOP/s")
    print(f"plug_jax:     compile {compile_s:.2f} s, {max(args.warmup, 1)} warm-up steps "
          f"{jax_warm_s:.2f} s (excluded); step {jax_s * 1e3:.1f} ms (median of {len(jax_times)}: {fmt(jax_times)} s)")
    print(f"              {jax_tps:9.1f} tokens/s, {fpt * jax_tps / 1e9:.1f} model GFLOP/s, "
          f"CPU MFU {100 * jax_mfu:.1f}%  (loss {first_loss:.3f} -> {last_loss:.3f})")
    if hf_step is not None:
        hf_s = statistics.median(hf_times)
        hf_tps = tokens / hf_s
        print(f"transformers: build {hf_build_s:.2f} s, {max(args.warmup, 1)} warm-up steps "
              f"{hf_warm_s:.2f} s (excluded); step {hf_s * 1e3:.1f} ms (median of "
              f"{len(hf_times)}: {fmt(hf_times)} s)")
        print(f"              {hf_tps:9.1f} tokens/s, {fpt * hf_tps / 1e9:.1f} model GFLOP/s, "
              f"CPU MFU {100 * fpt * hf_tps / mm:.1f}% (same formula and denominator; "
              f"loss {hf_loss:.3f})")
        print(f"ratio plug_jax / transformers (tokens/s): {jax_tps / hf_tps:.2f}x")
    print(f"load average at start / end: {load_start} / {load_end} "
          f"(other processes on these {os.cpu_count()} CPUs distort every number above)")
    return {"jax_tokens_per_s": jax_tps, "jax_mfu": jax_mfu, "matmul_flops": mm,
            "torch_tokens_per_s": tokens / statistics.median(hf_times) if hf_times else None,
            "compile_s": compile_s}


if __name__ == "__main__":
    main()
