"""The AMTSS Shop World intent experiment, end to end, with a results table.

    python -m plug_jax.families.amtss.shop_experiment --out DIR [--teacher_steps 150]
        [--student_steps 600] [--limit N] [--langs zh,en,de,fr,es,ja]

Stages (each through the command line's own entry points, in this process; the CPU time of
each is measured with ``resource.getrusage``, this process and its threads):

1. teachers: ``experiments/amtss/shop_teacher_small.gin`` once per language
   (``LANG``), into ``DIR/teachers/<lang>``;
2. scoring: :func:`plug_jax.families.amtss.score.score` writes ``DIR/teacher_logits.npz``;
3. student: ``experiments/amtss/shop_student_small.gin`` (max-margin weights) into
   ``DIR/student``, and the uniform-weights ablation
   (``experiments/amtss/shop_student_uniform_small.gin``) into ``DIR/student_uniform``;
4. the table: per language the teacher's accuracy on its own language's test queries (from
   the scored test logits), the mean teacher accuracy, the student's and the ablation's test
   accuracy (their final eval in ``metrics.jsonl``), then
   :func:`plug_jax.families.amtss.report.format_report` (parameters and jitted forward time
   of the student against the teachers summed, on a batch of 32 test queries).

Writes ``DIR/results.json`` and ``DIR/table.txt``; prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Sequence

import numpy as np

TEACHER_GIN = "experiments/amtss/shop_teacher_small.gin"
STUDENT_GIN = "experiments/amtss/shop_student_small.gin"
UNIFORM_GIN = "experiments/amtss/shop_student_uniform_small.gin"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


class Stages:
    def __init__(self):
        self.cpu, self.wall = {}, {}

    def run(self, name, fn, *args, **kw):
        c0, w0 = cpu_seconds(), time.time()
        out = fn(*args, **kw)
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu_seconds() - c0
        self.wall[name] = self.wall.get(name, 0.0) + time.time() - w0
        return out


def _train(gin_file: str, model_dir: str, bindings: Sequence[str]) -> None:
    from plug_jax import main
    argv = ["--mode=train", f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'",
            *[f"--gin.{b}" for b in bindings]]
    rc = main.run(argv)
    if rc != 0:
        raise RuntimeError(f"python -m plug_jax.main {' '.join(argv)} exited {rc}")


def final_eval(model_dir: str) -> dict:
    """The last eval row of ``model_dir/metrics.jsonl`` (``eval/`` names without the prefix)."""
    row = None
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if "eval/accuracy" in r:
                row = r
    if row is None:
        raise RuntimeError(f"{model_dir}/metrics.jsonl has no eval row")
    return {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}


def teacher_accuracies(path: str, split: str = "test") -> dict[str, float]:
    """Teacher ``t``'s accuracy on its own language's ``split`` queries (from the scored
    logits: row ``i`` with ``lang == t``, column ``t``)."""
    from plug_jax.families.amtss import logits_file
    data = logits_file.read(path)
    d = data["splits"][split]
    out = {}
    for t, name in enumerate(data["teachers"]):
        own = (d["lang"] == t) & (d["mask"][:, t] > 0)
        if own.any():
            out[name] = float(np.mean(d["logits"][own, t].argmax(-1) == d["label"][own]))
    return out


def size_report(out: str, langs: Sequence[str], student_dir: str, bindings: Sequence[str]):
    import gin
    import jax

    from plug_jax import gin_utils
    from plug_jax.families.amtss import report, score
    from plug_jax.trainer import loop
    teachers = [score.load_teacher(os.path.join(out, "teachers", lang), lang,
                                   (TEACHER_GIN,), bindings)[:2] for lang in langs]
    try:
        gin_utils.parse_gin([STUDENT_GIN], [*bindings, f"MODEL_DIR='{student_dir}'"])
        student = gin.query_parameter("%MODEL").scoped_configurable_fn()
        lengths = dict(gin.query_parameter("%TASK_FEATURE_LENGTHS"))
    finally:
        gin.clear_config()
    import plug_jax.tasks.amtss as amtss_tasks
    cfg = loop.DatasetConfig(amtss_tasks.student_task_name(), lengths, batch_size=1,
                             converter="amtss_student")
    params, _, _ = loop.load_for_inference(student, student_dir, cfg,
                                           loop.MeshConfig(rules="dp", num_devices=1))
    n = 32
    ids = np.concatenate([score.query_ids("test", n // len(amtss_tasks.QUERY_LANGS) + 1, k,
                                          lengths["inputs"])
                          for k in range(len(amtss_tasks.QUERY_LANGS))])[:n]
    lang = np.repeat(np.arange(len(amtss_tasks.QUERY_LANGS)), n // 6 + 1)[:n].astype(np.int32)
    batch = {"encoder_input_tokens": ids, "lang": lang}
    return report.size_and_speed(student, jax.device_get(params), teachers, batch)


def format_table(res: dict) -> str:
    langs = res["languages"]
    t, s, u = res["teacher_accuracy"], res["student"], res["student_uniform"]
    lines = [f"{'language':<10}{'teacher':>9}{'student':>9}{'uniform':>9}{'student-mean':>14}",
             "-" * 51]
    for lang in langs:
        lines.append(f"{lang:<10}{t[lang]:>9.3f}{s[lang]:>9.3f}{u[lang]:>9.3f}"
                     f"{100 * (s[lang] - res['mean_teacher_accuracy']):>+13.1f}p")
    lines.append("-" * 51)
    lines.append(f"{'mean':<10}{res['mean_teacher_accuracy']:>9.3f}{s['all']:>9.3f}"
                 f"{u['all']:>9.3f}")
    lines.append("teacher: its own language's test queries; student / uniform: the max-margin "
                 "and uniform-weights students (one model, every language's test queries); "
                 "student-mean: student minus the mean teacher accuracy, in points")
    ok = all(s[lang] >= res["mean_teacher_accuracy"] - 0.02 for lang in langs)
    lines.append(f"student within 2 points of the mean teacher accuracy on every language: "
                 f"{'yes' if ok else 'no'}")
    lines.append(res["report"])
    lines.append("CPU seconds per stage: " + ", ".join(
        f"{k} {v:.0f} (wall {res['wall_seconds'][k]:.0f})" for k, v in res["cpu_seconds"].items())
        + f"; total {sum(res['cpu_seconds'].values()):.0f}")
    return "\n".join(lines)


def run(out: str, langs: Sequence[str], teacher_steps: int, student_steps: int,
        limit: int | None = None, bindings: Sequence[str] = ()) -> dict:
    from plug_jax.families.amtss import report, score
    import plug_jax.tasks.amtss as amtss_tasks
    os.makedirs(out, exist_ok=True)
    stages = Stages()
    for lang in langs:
        stages.run("teachers", _train, TEACHER_GIN, os.path.join(out, "teachers", lang),
                   [f"LANG='{lang}'", f"TRAIN_STEPS={teacher_steps}",
                    f"CHECKPOINT_PERIOD={teacher_steps}", *bindings])

    def do_score():
        teachers = {lang: score.load_teacher(os.path.join(out, "teachers", lang), lang,
                                             (TEACHER_GIN,), bindings)[:2] for lang in langs}
        return score.score(teachers, os.path.join(out, "teacher_logits.npz"), limit=limit,
                           log=lambda m: print(m, flush=True))
    logits = stages.run("scoring", do_score)
    students = {}
    for key, gin_file in (("student", STUDENT_GIN), ("student_uniform", UNIFORM_GIN)):
        model_dir = os.path.join(out, key)
        stages.run(key, _train, gin_file, model_dir,
                   [f"TEACHER_LOGITS='{logits}'", f"TRAIN_STEPS={student_steps}",
                    f"CHECKPOINT_PERIOD={student_steps}", *bindings])
        ev = final_eval(model_dir)
        students[key] = {"all": ev["accuracy"],
                         **{lang: ev[f"{lang}_accuracy"] for lang in amtss_tasks.QUERY_LANGS
                            if f"{lang}_accuracy" in ev}}
    teacher_acc = teacher_accuracies(logits)
    sizes = stages.run("report", size_report, out, langs, os.path.join(out, "student"),
                       bindings)
    res = {"languages": list(langs), "teacher_accuracy": teacher_acc,
           "mean_teacher_accuracy": float(np.mean([teacher_acc[lang] for lang in langs])),
           **students, "sizes": sizes, "report": report.format_report(sizes),
           "cpu_seconds": stages.cpu, "wall_seconds": stages.wall, "logits": logits,
           "teacher_steps": teacher_steps, "student_steps": student_steps, "limit": limit}
    res["table"] = format_table(res)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out, "table.txt"), "w", encoding="utf-8") as f:
        f.write(res["table"] + "\n")
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plug_jax.families.amtss.shop_experiment",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--langs", default="zh,en,de,fr,es,ja")
    ap.add_argument("--teacher_steps", type=int, default=150)
    ap.add_argument("--student_steps", type=int, default=600)
    ap.add_argument("--limit", type=int, default=None,
                    help="score (and train the student on) only the first N examples of "
                         "each split")
    ap.add_argument("--gin", action="append", default=[],
                    help="NAME=VALUE bindings for every run (e.g. BATCH_SIZE=8)")
    args = ap.parse_args(argv)
    langs = [x for x in args.langs.split(",") if x]
    res = run(args.out, langs, args.teacher_steps, args.student_steps, args.limit, args.gin)
    print(res["table"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
