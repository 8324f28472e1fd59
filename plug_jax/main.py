"""Command line: ``plug-train``, ``plug-eval``, ``plug-infer`` (= ``python -m plug_jax.main --mode=...``).

t5x-style flags::

    plug-train --gin_file=experiments/gpt3/shop_tiny.gin --gin.MODEL_DIR=/tmp/run \\
               --gin.TRAIN_STEPS=200 [--gin_search_paths=DIR,DIR] [--print_config]

* ``--gin_file`` (repeated) is resolved against ``--gin_search_paths`` (default: the
  installed ``gin_configs/``); later files and then ``--gin.NAME=VALUE`` bindings win.
* ``--print_config`` prints every binding with the file and line (or flag) that set it,
  then exits without running.
* The operative config is written to ``MODEL_DIR/config.gin``.
* ``plug-infer`` prints continuations of the gin-bound prompts (or ``--prompt`` flags);
  ``--chat`` (ChatPLUG) chats over several turns, ``--show_passages`` shows what it read.
* ``plug-eval`` runs the generation evaluation (ROUGE-L vs. the lead baseline,
  ``runs/eval_generation.gin``) instead of ``loop.evaluate`` when gin sets
  ``EVAL_GENERATION = True``.
* Several processes: ``--coordinator_address``, ``--num_processes``, ``--process_id``
  (or SLURM / Open MPI / Cloud TPU environment) start ``jax.distributed`` before any
  device is used; see :mod:`plug_jax.distributed` and docs/launch.md.
* A user error (unknown gin name, missing REQUIRED value, mesh vs. batch, a checkpoint
  of another model, a damaged checkpoint) prints one ``error:`` line and exits 2; nothing
  already in ``MODEL_DIR`` is removed.

TensorFlow is imported here (metric writers) and by the data layer, never by model code.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from plug_jax.cli import base_parser, configurable, user_errors


def _tensorboard_writer(model_dir: str):
    from clu import metric_writers
    return metric_writers.SummaryWriter(os.path.join(model_dir, "tensorboard"))


def run(argv: Sequence[str] | None = None, mode: str | None = None, prog: str = "plug_jax") -> int:
    from plug_jax import gin_utils
    argv = list(sys.argv[1:] if argv is None else argv)
    from plug_jax import plan  # plug-plan has its own flags (--mesh, --hardware, --json)
    if mode == "plan" or (mode is None and plan.wants_plan(argv)):
        return plan.main(argv, prog="plug-plan" if mode == "plan" else prog)
    bindings, rest = gin_utils.split_gin_flags(argv)
    args = base_parser(prog, mode).parse_args(rest)
    mode = mode or args.mode
    search = ([p for p in args.gin_search_paths.split(",") if p]
              if args.gin_search_paths else gin_utils.default_search_paths())
    try:
        sources = gin_utils.parse_gin(args.gin_file, bindings, search,
                                      check_unused=not args.print_config)
        if args.print_config:
            print(sources.format(), flush=True)
            gin_utils.check_unused_macros(sources)  # after printing: the listing helps
            return 0
        import gin
        from plug_jax.trainer import hardware, loop
        from plug_jax import distributed
        cluster = distributed.initialize_from_args(args)  # before any device is touched
        hw_kw = {"num_cpu_devices": args.num_cpu_devices} if args.num_cpu_devices else {}
        peak = gin_utils.call_with_gin_errors(configurable(hardware.hardware), **hw_kw)
        distributed.print_summary(cluster)
        if mode == "train":
            out = gin_utils.call_with_gin_errors(
                configurable(loop.train), metric_writer=_tensorboard_writer,
                config_text=gin.config_str,
                on_start=lambda d: gin_utils.write_operative_config(d, sources),
                peak_flops=peak)
            gin_utils.write_operative_config(out["model_dir"], sources)
        elif mode == "eval":
            from plug_jax.trainer import generation_eval  # runs/eval_generation.gin
            fn = (generation_eval.evaluate_generation if generation_eval.selected_by_gin()
                  else loop.evaluate)
            kw = {"prompts_jsonl": args.prompts_jsonl} if args.prompts_jsonl else {}
            if kw and fn is not loop.evaluate:
                raise ValueError("--prompts_jsonl does not apply to the generation eval "
                                 "(EVAL_GENERATION = True); drop one of them")
            gin_utils.call_with_gin_errors(configurable(fn), **kw)
        else:
            kw = {"prompts": args.prompt} if args.prompt else {}
            if args.prompts_jsonl:
                kw["prompts_jsonl"] = args.prompts_jsonl
            if args.weights_dtype:
                kw["weights_dtype"] = args.weights_dtype
            if args.chat:  # --chat without --prompt: the turns come from standard input
                kw.update(chat=True, prompts=list(args.prompt or []))
            if args.show_passages:
                kw["show_passages"] = True
            gin_utils.call_with_gin_errors(configurable(loop.infer), **kw)
    except user_errors() as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return _distributed().exit_now_if_multi_process(2)
    except BaseException:  # several processes: do not wait for the others (docs/launch.md)
        _distributed().exit_now_if_multi_process(1, print_traceback=True)
        raise
    return 0


def _distributed():
    from plug_jax import distributed
    return distributed


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv)


def train_main() -> int:
    return run(mode="train", prog="plug-train")


def eval_main() -> int:
    return run(mode="eval", prog="plug-eval")


def infer_main() -> int:
    return run(mode="infer", prog="plug-infer")


def plan_main() -> int:
    return run(mode="plan", prog="plug-plan")


if __name__ == "__main__":
    sys.exit(main())
