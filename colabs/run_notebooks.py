"""Executes the notebooks in colabs/ top to bottom (``make notebooks``; CI runs it through
``make test``).

    .venv/bin/python colabs/run_notebooks.py [NAME_OR_PATH ...]

Each notebook runs in a fresh IPython kernel started from *this* interpreter (the
project venv: a kernelspec written to a temporary folder, so a user-level ``python3``
kernelspec cannot pick another Python), with the working directory and
``PLUG_JAX_NOTEBOOK_OUT`` set to ``colabs/executed/``, ``PLUG_JAX_RUN_LOCALLY=1`` (tiny
runs) and ``JAX_PLATFORMS=cpu`` unless already set. The executed copy is saved as
``colabs/executed/<name>.ipynb`` (also when a cell fails, with the error in it); the
notebook writes its plots there as ``<name>_*.png``. Prints each notebook's wall time and
the PNGs it wrote; exits 1 if any cell raised, 2 on a bad argument. ``--jobs N`` (default 2)
runs N notebooks at once, each through this script in its own process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

HERE = Path(__file__).resolve().parent
OUT = HERE / "executed"
KERNEL_NAME = "plug_jax_venv"
CELL_TIMEOUT_S = 600  # one cell; the notebooks themselves take a minute or two on a CPU


def _write_kernelspec(spec_root: Path) -> None:
    """Kernelspec ``KERNEL_NAME`` = ``sys.executable -m ipykernel_launcher`` under
    ``spec_root/kernels`` (put first on ``JUPYTER_PATH`` by :func:`main`)."""
    spec_dir = spec_root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"plug_jax ({sys.executable})",
        "language": "python",
    }))


def run_one(path: Path) -> tuple[bool, float, list[Path]]:
    """Executes ``path``; returns (ok, wall seconds, PNGs written)."""
    name = path.stem
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob(f"{name}_*.png"):
        old.unlink()
    nb = nbformat.read(path, as_version=4)
    env = {"PLUG_JAX_NOTEBOOK_OUT": str(OUT), "PLUG_JAX_RUN_LOCALLY": "1",
           "PYTHONUNBUFFERED": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    saved = {k: os.environ.get(k) for k in (*env, "JAX_PLATFORMS")}
    os.environ.update(env)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(OUT)}})
    t0 = time.perf_counter()
    ok = True
    try:
        client.execute(cwd=str(OUT))
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        ok = False
        print(f"notebooks: {path.name}: cell failed:\n{e}", file=sys.stderr, flush=True)
    finally:
        wall = time.perf_counter() - t0
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        nbformat.write(nb, OUT / path.name)
    pngs = sorted(p for p in OUT.glob(f"{name}_*.png"))
    return ok, wall, pngs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="names (quickstart) or paths; default: "
                    "every colabs/*.ipynb")
    ap.add_argument("--jobs", type=int,
                    default=int(os.environ.get("PLUG_JAX_NOTEBOOK_JOBS", "2")),
                    help="notebooks run at once, each in its own process (default 2, or "
                         "$PLUG_JAX_NOTEBOOK_JOBS); 1 runs them one after another here")
    args = ap.parse_args(argv)
    if args.notebooks:
        paths = []
        for a in args.notebooks:
            p = Path(a) if a.endswith(".ipynb") else HERE / f"{a}.ipynb"
            if not p.is_file():
                print(f"notebooks: error: no notebook {a!r} ({p})", file=sys.stderr)
                return 2
            paths.append(p.resolve())
    else:
        paths = sorted(HERE.glob("*.ipynb"))
    if not paths:
        print(f"notebooks: error: no notebooks in {HERE}", file=sys.stderr)
        return 2
    if args.jobs > 1 and len(paths) > 1:
        return _run_parallel(paths, args.jobs)
    results = []
    with tempfile.TemporaryDirectory(prefix="plug_jax_kernels_") as spec_root:
        _write_kernelspec(Path(spec_root))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [spec_root] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p])
        for p in paths:
            print(f"notebooks: {p.name} ...", flush=True)
            ok, wall, pngs = run_one(p)
            results.append((p, ok, wall, pngs))
            print(f"notebooks: {p.name}: {'ok' if ok else 'FAILED'} in {wall:.0f}s; "
                  f"PNGs: {', '.join(x.name for x in pngs) or 'none'}", flush=True)
    total = sum(r[2] for r in results)
    print(f"notebooks: {len(results)} run in {total:.0f}s; executed copies and PNGs in "
          f"{OUT.relative_to(HERE.parent)}/")
    for p, ok, wall, pngs in results:
        print(f"  {'ok    ' if ok else 'FAILED'} {wall:6.0f}s  {p.name}  ({len(pngs)} PNGs)")
    return 0 if all(r[1] for r in results) else 1


def _run_parallel(paths: list[Path], jobs: int) -> int:
    """Each notebook through this script in a child process (``--jobs 1``), ``jobs`` at a
    time, longest first; a child's output is printed whole when it finishes."""
    import subprocess
    t0 = time.perf_counter()
    pending = sorted(paths, key=lambda p: -p.stat().st_size)
    running: list[tuple[Path, subprocess.Popen, float]] = []
    results = []
    print(f"notebooks: {len(paths)} notebooks, {jobs} at a time", flush=True)
    while pending or running:
        while pending and len(running) < jobs:
            p = pending.pop(0)
            proc = subprocess.Popen([sys.executable, __file__, "--jobs", "1", str(p)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running.append((p, proc, time.perf_counter()))
        time.sleep(0.5)
        for item in list(running):
            p, proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out = proc.stdout.read()
            print(out.rstrip(), flush=True)
            results.append((p, proc.returncode == 0, time.perf_counter() - start))
    print(f"notebooks: {len(results)} run in {time.perf_counter() - t0:.0f}s wall "
          f"({jobs} at a time); executed copies and PNGs in {OUT.relative_to(HERE.parent)}/")
    for p, ok, wall in sorted(results):
        print(f"  {'ok    ' if ok else 'FAILED'} {wall:6.0f}s  {p.name}")
    return 0 if all(r[1] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
