"""``plug-convert``: convert a foreign checkpoint into a plug_jax params checkpoint.

    plug-convert --family gpt3 --source hf --input GPT2_DIR --output OUT_DIR
    plug-convert --family gpt3 --source modelscope --input MS_DIR --output OUT_DIR \\
        [--scan_layers true|false] [--overwrite]

Writes ``OUT_DIR/{params/,config.json,metadata.json}`` with
:func:`plug_jax.trainer.checkpointing.save_params`. A bad input prints one line
``plug-convert: error: ...`` on stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

PROG = "plug-convert"
SOURCES = ("hf", "modelscope")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise _UsageError(message)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Convert a Hugging Face or ModelScope checkpoint into "
                                       "a plug_jax params checkpoint.")
    p.add_argument("--family", required=True, help="target family (gpt3)")
    p.add_argument("--source", required=True, help="checkpoint format: hf or modelscope")
    p.add_argument("--input", required=True, help="model directory or weights file")
    p.add_argument("--output", required=True, help="output directory (must be new or empty)")
    p.add_argument("--scan_layers", type=_bool, default=True,
                   help="write the scanned layout (true, default) or layers_0.. (false)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty output directory")
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        return _fail(str(e))

    from plug_jax.convert.io import SUPPORTED_FAMILIES

    if args.family not in SUPPORTED_FAMILIES:
        return _fail(f"unknown family {args.family!r}; supported families: "
                     f"{', '.join(SUPPORTED_FAMILIES)}")
    if args.source not in SOURCES:
        return _fail(f"unknown source {args.source!r}; choose one of {', '.join(SOURCES)}")
    if not os.path.exists(args.input):
        return _fail(f"input {args.input} does not exist")

    from plug_jax.convert import from_modelscope, from_transformers
    from plug_jax.trainer import checkpointing

    try:
        out = checkpointing.check_output_dir(args.output, args.overwrite)  # fail before work
        convert = from_transformers if args.source == "hf" else from_modelscope
        config, params = convert(args.input, family=args.family, scan_layers=args.scan_layers)
        import numpy as np

        count = int(sum(np.size(x) for x in _leaves(params)))
        metadata = {"family": args.family, "preset": config.preset,
                    "scanned": config.scan_layers,
                    "source": {"format": args.source, "path": os.path.abspath(args.input)}}
        path = checkpointing.save_params(out, params, config_dict=dataclasses.asdict(config),
                                         metadata=metadata, overwrite=args.overwrite)
    except (ValueError, TypeError, OSError, KeyError) as e:
        return _fail(str(e) if not isinstance(e, KeyError) else f"missing key {e}")
    print(f"{PROG}: {args.family} from {args.source} {args.input}: {count:,} parameters "
          f"({'scanned' if config.scan_layers else 'unscanned'}) -> {path}")
    print(f"{PROG}: config: layers={config.num_layers} heads={config.num_heads} "
          f"hidden={config.hidden_size} ffn={config.mlp_dim} vocab={config.vocab_size} "
          f"max_pos={config.max_position_embeddings} activation={config.activation} "
          f"eps={config.layer_norm_epsilon:g} tied={config.tie_word_embeddings}")
    return 0


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
