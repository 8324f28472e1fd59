"""Pieces every plug_jax command shares: the base flag parser, the user-error classes that
become one ``error:`` line and exit 2, and gin's configured version of a function.

``plug_jax.main`` (plug-train / -eval / -infer) and ``plug_jax.plan`` (plug-plan) both build
on these; neither imports the other's module for them.
"""
from __future__ import annotations

import argparse

MODES = ("train", "eval", "infer", "plan")
DESCRIPTION = "plug_jax: train, evaluate, generate from and plan the AliceMind / X-PLUG models."


def add_gin_flags(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--gin_file``, ``--gin_search_paths`` and ``--print_config`` (every gin command)."""
    ap.add_argument("--gin_file", action="append", default=[],
                    help="gin file (repeatable), relative to the search paths or a path")
    ap.add_argument("--gin_search_paths", default=None,
                    help="comma-separated folders for gin files and includes "
                         "(default: the installed gin_configs/)")
    ap.add_argument("--print_config", action="store_true",
                    help="print every gin binding and where it was set, then exit")
    return ap


def add_weights_dtype_flag(ap: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--weights_dtype``: weight-only low precision of the restored float weights
    (layers/quant.py; docs/decoding.md "Weight-only low precision")."""
    from plug_jax.layers.quant import WEIGHTS_DTYPES
    ap.add_argument("--weights_dtype", choices=WEIGHTS_DTYPES, default=None,
                    help=f"{prefix}store the matmul weights as bfloat16, or int8 with one "
                         "scale per output channel, converted from the float checkpoint at "
                         "load time (default float32)")


def base_parser(prog: str, mode: str | None) -> argparse.ArgumentParser:
    """``--gin_file``, ``--gin_search_paths``, ``--print_config``, ``--prompt`` and the
    multi-process flags; ``--mode`` when no mode is fixed by the command's name."""
    ap = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    if mode is None:
        ap.add_argument("--mode", choices=MODES, default="train")
    add_gin_flags(ap)
    ap.add_argument("--prompt", action="append", default=None,
                    help="(infer) a prompt; repeatable; overrides the gin-bound prompts")
    if mode in (None, "infer", "eval"):
        ap.add_argument("--prompts_jsonl", default=None, metavar="PATH",
                        help="(infer, eval) prompts, one JSON object a line with keys among "
                             "text, image, video (paths relative to the file's folder); "
                             "see docs/media_prompts.md")
    else:
        ap.set_defaults(prompts_jsonl=None)
    if mode in (None, "infer"):
        add_weights_dtype_flag(ap, "(infer) ")
        ap.add_argument("--chat", action="store_true",
                        help="(infer) a multi-turn chat (families with a chat mode: "
                             "ChatPLUG): the --prompt flags are the user's turns in order; "
                             "without them, one turn a line from standard input")
        ap.add_argument("--show_passages", action="store_true",
                        help="(infer --chat) print the passages each response read")
    else:
        ap.set_defaults(weights_dtype=None, chat=False, show_passages=False)
    from plug_jax import distributed
    distributed.add_flags(ap)  # --coordinator_address, --num_processes, --process_id, ...
    return ap


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: printed as one line, exit status 2."""
    from plug_jax.distributed import DistributedError
    from plug_jax.gin_utils import GinConfigError
    from plug_jax.partitioning import MeshError, PartitioningError
    from plug_jax.trainer.checkpointing import CheckpointError
    from plug_jax.data.media import MediaError
    from plug_jax.data.record_files import RecordFileError
    from plug_jax.trainer.loop import TrainError
    return (GinConfigError, MeshError, PartitioningError, CheckpointError, TrainError,
            DistributedError, MediaError, RecordFileError)


def configurable(fn):
    """gin's configured version of ``fn`` when a gin file binds it, else ``fn`` itself."""
    import gin
    try:
        return gin.get_configurable(fn)
    except (KeyError, ValueError):
        return fn
