"""X-CLIP on Shop World from CLIP, as the release trains it, in one resumable command.

    python -m plug_jax.families.xclip.recipe --workdir /tmp/xclip_shop [--gin.NAME=VALUE ...]

Stages (each runs the project's own command line in a subprocess, and is skipped when its
output is complete, so a crashed or interrupted recipe picks up where it stopped; an
interrupted ``plug-train`` resumes from its last checkpoint):

1. ``clip``: ``plug-train`` of ``experiments/xclip/clip_stage.gin``, CLIP tiny with X-CLIP's
   tower shapes (16 px patches) on the Shop World product images and captions
   (``images_64_xl``) -> ``WORKDIR/clip``;
2. ``export``: ``plug-export --to openai`` of that run -> ``WORKDIR/clip_openai/model.pt``
   (the OpenAI CLIP state dict layout) and its vocabulary;
3. ``init``: ``plug-convert --family xclip --source openai --preset tiny`` -> X-CLIP
   initialised as the release does (the temporal transformer from the first text blocks,
   the frame positions from the text positions, the eight matrices from the identity) in
   ``WORKDIR/xclip_init``;
4. ``xclip``: ``plug-train`` of ``experiments/xclip/shop_xl.gin`` from that initialisation
   -> ``WORKDIR/xclip``; ``--gin.NAME=VALUE`` bindings apply to this stage and the next;
5. ``controls``: ``python -m plug_jax.families.xclip.controls --split=test`` over the 600
   held-out videos; the table is printed and kept in ``WORKDIR/controls.txt``.

Each stage's output is in ``WORKDIR/<stage>.log``; the seconds each took, and the training
total, are printed at the end.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

CLIP_GIN = "experiments/xclip/clip_stage.gin"
XCLIP_GIN = "experiments/xclip/shop_xl.gin"
STAGES = ("clip", "export", "init", "xclip", "controls")


def _done(workdir: str, stage: str) -> bool:
    return os.path.exists(os.path.join(workdir, f".{stage}.done"))


def _run(workdir: str, stage: str, cmd: list[str]) -> float:
    """Run ``cmd`` with its output in ``WORKDIR/<stage>.log`` (and its last lines on
    failure); returns the seconds it took."""
    log = os.path.join(workdir, f"{stage}.log")
    print(f"[{stage}] {' '.join(cmd[2:] if cmd[1] == '-m' else cmd)}  (log: {log})",
          flush=True)
    t0 = time.time()
    with open(log, "a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    took = time.time() - t0
    if rc != 0:
        with open(log) as f:
            tail = f.read().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"recipe: stage {stage!r} failed (exit {rc}) after {took:.0f}s; "
                         f"fix it and run the recipe again: the finished stages are kept")
    with open(os.path.join(workdir, f".{stage}.done"), "w") as f:
        f.write(f"{took:.1f}\n")
    return took


def commands(workdir: str, bindings: list[str]) -> dict[str, list[str]]:
    """The command line of each stage (``python -m`` forms of the console scripts)."""
    py = [sys.executable, "-m"]
    d = lambda *p: os.path.join(workdir, *p)  # noqa: E731
    vocab = sorted(glob.glob(d("clip_openai", "*.model")))
    return {
        "clip": py + ["plug_jax.main", "--mode=train", f"--gin_file={CLIP_GIN}",
                      f"--gin.MODEL_DIR='{d('clip')}'"],
        "export": py + ["plug_jax.export", f"--gin_file={CLIP_GIN}",
                        "--gin_file=runs/export.gin", f"--gin.MODEL_DIR='{d('clip')}'",
                        f"--gin.EXPORT_DIR='{d('clip_openai')}'", "--to", "openai"],
        "init": py + ["plug_jax.convert.cli", "--family", "xclip", "--source", "openai",
                      "--preset", "tiny", "--input", d("clip_openai", "model.pt"),
                      "--output", d("xclip_init"), "--overwrite"]
                + (["--vocab", vocab[0]] if vocab else []),
        "xclip": py + ["plug_jax.main", "--mode=train", f"--gin_file={XCLIP_GIN}",
                       f"--gin.MODEL_DIR='{d('xclip')}'",
                       f"--gin.INIT_CHECKPOINT='{d('xclip_init')}'"] + bindings,
        "controls": py + ["plug_jax.families.xclip.controls", f"--gin_file={XCLIP_GIN}",
                          f"--gin.MODEL_DIR='{d('xclip')}'", "--split=test"] + bindings,
    }


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bindings = [a for a in argv if a.startswith("--gin.")]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True,
                    help="folder for every stage's output (made if missing; kept between "
                         "runs, so finished stages are skipped)")
    a = ap.parse_args([x for x in argv if not x.startswith("--gin.")])
    workdir = os.path.abspath(a.workdir)
    os.makedirs(workdir, exist_ok=True)
    took = {}
    for stage in STAGES:
        if _done(workdir, stage):
            with open(os.path.join(workdir, f".{stage}.done")) as f:
                took[stage] = float(f.read() or 0)
            print(f"[{stage}] done already ({took[stage]:.0f}s when it ran)", flush=True)
            continue
        took[stage] = _run(workdir, stage, commands(workdir, bindings)[stage])
        if stage == "controls":
            with open(os.path.join(workdir, "controls.log")) as f:
                table = [line for line in f.read().splitlines()
                         if line.startswith(("X-CLIP retrieval", "  "))]
            with open(os.path.join(workdir, "controls.txt"), "w") as f:
                f.write("\n".join(table) + "\n")
    with open(os.path.join(workdir, "controls.txt")) as f:
        print(f.read(), end="")
    train = took["clip"] + took["export"] + took["init"] + took["xclip"]
    print("seconds per stage: " + ", ".join(f"{s} {took[s]:.0f}" for s in STAGES)
          + f"; training from nothing to X-CLIP: {train:.0f}s ({train / 60:.1f} min)",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
