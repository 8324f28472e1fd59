"""plug-plan's CPU-proxy memory estimate against the native compiler and a measured step.

docs/scaling.md's "fits" column comes from XLA:CPU compiling the per-device program (see the
caveat in plug_jax/plan.py). This runs, for each case and in fresh processes, ``plug-plan``
twice on the same gin files and one-device mesh:

* the proxy: fake CPU devices, as docs/scaling.md does;
* ``--native --measure``: this machine's first device with its own compiler, then the state
  allocated and the step run (the device's peak bytes in use, the step time).

It prints per case the proxy total (arguments + outputs - aliased + temporaries), the native
compiled total, the measured peak and their ratios to the proxy. On a CPU-only machine
"native" is XLA:CPU as well (ratios near 1 and no peak: the CPU keeps no statistics); run it
on a GPU or TPU to check the proxy. The StructBERT case is one device of the
``structbert-large-zh / 8xH100`` row (data parallel, so the per-device program is the same
apart from the gradient all-reduce)::

    python benchmarks/plan_vs_native.py                 # all cases on a GPU/TPU, else gpt3-tiny
    python benchmarks/plan_vs_native.py --cases gpt3-tiny,structbert-large-zh

(The large cases allocate their state and run a step on the device: tens of GB, so on a CPU
machine only ``gpt3-tiny`` runs unless named.)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BIG = ["--gin.ACTIVATION_DTYPE='bfloat16'", "--gin.REMAT_POLICY='full'",
        "--gin.TASK_FEATURE_LENGTHS={'targets': 2048}"]
CASES = {
    "gpt3-tiny": ["--gin_file=models/gpt3/tiny.gin", "--gin_file=partitioning/fsdp.gin",
                  "--gin.TASK_FEATURE_LENGTHS={'targets': 128}", "--gin.BATCH_SIZE=16"],
    "structbert-large-zh": ["--gin_file=models/structbert/large-zh.gin",
                            "--gin_file=partitioning/dp.gin",
                            "--gin.ACTIVATION_DTYPE='bfloat16'",
                            "--gin.TASK_FEATURE_LENGTHS={'inputs': 512}",
                            "--gin.BATCH_SIZE=32", "--gin.NUM_MICROBATCHES=4"],
    "gpt3-1.3B": ["--gin_file=models/gpt3/1.3B.gin", "--gin_file=partitioning/fsdp.gin",
                  *_BIG, "--gin.BATCH_SIZE=8"],
}


def _plan(args: list[str], native: bool, timeout: float) -> dict:
    from plug_jax import plan  # imports no JAX: the child processes get the device
    argv = ["--gin_file=runs/plan.gin", *args, "--mesh=data:1", "--json"]
    try:
        return plan.run_plan(argv + (["--native", "--measure"] if native else []),
                             label=f"plug-plan ({'native' if native else 'proxy'})",
                             timeout=timeout, cpu_only=not native, cwd=REPO)
    except RuntimeError as e:
        raise SystemExit(str(e)) from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=None,
                    help=f"comma-separated, from {list(CASES)} (default: all on a GPU/TPU, "
                         f"gpt3-tiny on a CPU)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)
    if args.cases is None:  # ask a child: JAX here would take the GPU's memory from the runs
        backend = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                                 capture_output=True, text=True, timeout=300).stdout.strip()
        args.cases = "gpt3-tiny" if backend in ("cpu", "") else ",".join(CASES)
    names = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    results = {}
    print(f"{'case':<22}{'proxy total':>14}{'native total':>14}{'measured peak':>15}"
          f"{'native/proxy':>14}{'peak/proxy':>12}{'step s':>9}  device", flush=True)
    for name in names:
        proxy = _plan(CASES[name], False, args.timeout)
        native = _plan(CASES[name], True, args.timeout)
        p, n = proxy["peak_bytes_per_device"], native["peak_bytes_per_device"]
        m = native["measured"]
        peak = m["peak_bytes_in_use"]
        results[name] = {"proxy": proxy, "native": native}
        print(f"{name:<22}{p / 1e9:>12.2f}GB{n / 1e9:>12.2f}GB"
              + (f"{peak / 1e9:>13.2f}GB" if peak else f"{'n/a':>15}")
              + f"{n / p:>14.2f}" + (f"{peak / p:>12.2f}" if peak else f"{'n/a':>12}")
              + f"{m['step_seconds']:>9.3f}  {m['device']} ({native['compiled_backend']})",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
