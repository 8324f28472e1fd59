"""``plug-convert``: convert a foreign checkpoint into a plug_jax params checkpoint and back.

    plug-convert --family gpt3 --source hf --input GPT2_DIR --output OUT_DIR
    plug-convert --family gpt3 --source modelscope --input MS_DIR --output OUT_DIR \\
        [--scan_layers true|false] [--overwrite]
    plug-convert --family structbert --source hf --input BERT_DIR --output OUT_DIR
    plug-convert --family plug --source megatron --input DIR_WITH_mp_rank_files \\
        --output OUT_DIR [--preset 27B] [--vocab_size N] [--num_ranks 8] [--drop_embedding_norm]
    plug-convert --family structbert --source modelscope --input MS_DIR --output OUT_DIR \\
        [--allow_missing=cls.seq_relationship]
    plug-convert --family palm --source modelscope --input MS_DIR --output OUT [--preset base-zh]
    plug-convert --to hf --family structbert --input OUT_DIR --output HF_DIR
    plug-convert --to megatron --family plug --input OUT_DIR --output SHARDS_DIR [--num_ranks 8]

The families and their formats come from the family registry
(:mod:`plug_jax.families.registry`): each family's ``FamilySpec.converters`` names the formats it
imports from (``--source``) and exports to (``--to``); ``--help`` lists them.

Import writes ``OUT_DIR/{params/,config.json,metadata.json,vocab/}`` with
:func:`plug_jax.trainer.checkpointing.save_params`; ``--to`` reads such a directory and writes
the foreign layout. The vocabulary travels both ways (:mod:`plug_jax.convert.vocabulary`):
an import carries the input folder's ``vocab.txt`` / SentencePiece model (or ``--vocab FILE``)
into ``OUT_DIR/vocab/``, an export writes it beside the weights. A bad input prints one line ``plug-convert: error: ...`` on stderr and
exits with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

from plug_jax.convert import vocabulary
from plug_jax.families import registry

PROG = "plug-convert"


def _families_with(direction: str) -> list:
    return [s for s in registry.specs() if s.formats(direction)]


def _formats_help() -> str:
    lines = []
    for spec in registry.specs():
        for c in spec.converters:
            flag = "--source" if c.direction == "import" else "--to"
            uses = f" [{', '.join('--' + u for u in c.uses)}]" if c.uses else ""
            lines.append(f"  --family {spec.name} {flag} {c.format}: {c.help}{uses}")
    return "conversions:\n" + "\n".join(lines)


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


def _prefixes(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected one or more tensor name prefixes, e.g. "
                                         "cls.seq_relationship")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Convert a foreign checkpoint (Hugging Face, ModelScope, "
                                       "Megatron, AliceMind, ...) into a plug_jax params "
                                       "checkpoint, or back with --to.",
                epilog=_formats_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    names = ", ".join(s.name for s in registry.specs() if s.converters)
    p.add_argument("--family", required=True, help=f"family: {names}")
    p.add_argument("--source", default=None,
                   help="checkpoint format to import (see the conversions below)")
    p.add_argument("--to", default=None,
                   help="export a plug_jax params checkpoint (--input) to this format instead")
    p.add_argument("--preset", default=None,
                   help="family preset giving the config, where the converter uses one "
                        "(plug: default 27B; structbert: used instead of the input's "
                        "config.json; palm: required for alicemind, instead of the "
                        "ModelScope config.json for modelscope)")
    p.add_argument("--vocab_size", type=int, default=None, help="override the preset's vocab_size")
    p.add_argument("--num_ranks", type=int, default=8,
                   help="plug: tensor-parallel rank files to read / write (default 8)")
    p.add_argument("--drop_embedding_norm", action="store_true",
                   help="plug: convert although PlugModel has no place for "
                        "bert.embeddings.LayerNorm (outputs then differ from PLUG's)")
    p.add_argument("--allow_missing", type=_prefixes, default=None, metavar="PREFIX[,PREFIX]",
                   help="initialise tensors under these name prefixes fresh when the input "
                        "lacks them (e.g. cls.seq_relationship); they are reported")
    p.add_argument("--vocab", default=None, metavar="FILE",
                   help="import: the vocabulary to carry (a WordPiece vocab.txt or a "
                        "SentencePiece .model) when the input folder has none beside the "
                        "weights; it is copied into the output and recorded in its metadata")
    p.add_argument("--no_vocab_lower_case", action="store_true",
                   help="import: the WordPiece vocabulary is cased (do_lower_case=False)")
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


def _options(args, converter) -> dict:
    """The options ``converter`` uses; a set option it does not use is an error."""
    given = {"preset": args.preset, "vocab_size": args.vocab_size,
             "num_ranks": args.num_ranks if args.num_ranks != 8 else None,
             "drop_embedding_norm": args.drop_embedding_norm or None,
             "allow_missing": args.allow_missing}
    unused = [k for k, v in given.items() if v is not None and k not in converter.uses]
    if unused:
        flags = " / ".join(f"--{k}" for k in unused)
        verb = "is" if len(unused) == 1 else "are"
        raise _UsageError(f"{flags} {verb} not used by family {args.family!r} "
                          f"({'--source' if converter.direction == 'import' else '--to'} "
                          f"{converter.format}); drop it")
    # "report": lines a converter adds (tensors skipped or initialised fresh), printed after
    # a successful conversion.
    return {"preset": args.preset, "vocab_size": args.vocab_size, "num_ranks": args.num_ranks,
            "drop_embedding_norm": args.drop_embedding_norm,
            "allow_missing": args.allow_missing or (), "scan_layers": args.scan_layers,
            "report": []}


def _converter(args):
    """The registered converter for the arguments, or a one-line _UsageError."""
    if args.family not in registry.names():
        supported = ", ".join(s.name for s in registry.specs() if s.converters)
        raise _UsageError(f"unknown family {args.family!r}; supported families: {supported}")
    spec = registry.get(args.family)
    if args.to is not None:
        if args.source is not None:
            raise _UsageError("pass either --source (import) or --to (export), not both")
        if args.to not in spec.formats("export"):
            combos = ", ".join(f"--family {s.name} --to {t}" for s in _families_with("export")
                               for t in s.formats("export"))
            raise _UsageError(f"cannot export family {args.family!r} to {args.to!r}; "
                              f"supported: {combos}")
        return spec, spec.converter(args.to, "export")
    sources = spec.formats("import")
    if args.source is None:
        raise _UsageError("the following arguments are required: --source (or --to to export)")
    known = {c.format for s in registry.specs() for c in s.converters}
    if args.source not in known:
        raise _UsageError(f"unknown source {args.source!r}; choose one of {', '.join(sources)} "
                          f"(family {args.family})")
    if args.source not in sources:
        raise _UsageError(f"family {args.family!r} cannot be converted from source "
                          f"{args.source!r}; use --source {' or '.join(sources)}")
    return spec, spec.converter(args.source, "import")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        spec, converter = _converter(args)
        options = _options(args, converter)
    except _UsageError as e:
        return _fail(str(e))
    except ValueError as e:  # a family module that cannot be imported, a bad FamilySpec
        return _fail(str(e))
    if args.num_ranks < 1:
        return _fail(f"--num_ranks must be >= 1, got {args.num_ranks}")
    if not os.path.exists(args.input):
        return _fail(f"input {args.input} does not exist")
    if converter.direction == "export" and (args.vocab or args.no_vocab_lower_case):
        return _fail("--vocab / --no_vocab_lower_case are for imports; an export writes the "
                     "vocabulary its input carries")
    if args.vocab and not os.path.isfile(args.vocab):
        return _fail(f"--vocab {args.vocab} does not exist; pass a vocab.txt or a "
                     f"SentencePiece .model file")

    from plug_jax.trainer import checkpointing

    try:
        out = checkpointing.check_output_dir(args.output, args.overwrite)  # fail before work
        if converter.direction == "export":
            config, params = _load_ours(args, spec)
            os.makedirs(out, exist_ok=True)
            what = converter.fn(config, params, out, options)
            options["report"] += vocabulary.export_to(args.input, out, args.to)
            print(f"{PROG}: {args.family} {args.input} -> {args.to} {out}: {what}")
            for line in options["report"]:
                print(f"{PROG}: {line}")
            return 0
        vocab_path, vocab_note = ((args.vocab, None) if args.vocab
                                  else vocabulary.find_vocabulary(args.input))
        vocab_entry = None
        if vocab_path:  # read and checked before the (long) weight conversion
            vocab_entry = vocabulary.describe(vocab_path,
                                              do_lower_case=not args.no_vocab_lower_case)
        config, params = converter.fn(args.input, options)
        count = int(sum(np.size(x) for x in _leaves(params)))
        metadata = {"family": args.family, "preset": config.preset,
                    "scanned": config.scan_layers,
                    "source": {"format": args.source, "path": os.path.abspath(args.input)}}
        extra = {}
        if vocab_entry is not None:
            vocabulary.check_fits(vocab_entry, vocab_path, getattr(config, "vocab_size", None))
            metadata["vocabulary"] = vocab_entry
            extra[vocab_entry["file"]] = vocab_path
            options["report"].append(
                f"vocabulary: {vocab_entry['kind']} {os.path.basename(vocab_path)} "
                f"({vocab_entry['size']} tokens, embedding rows "
                f"{getattr(config, 'vocab_size', '?')}) -> {vocab_entry['file']}")
        elif vocab_note:
            options["report"].append(vocab_note)
        extra.update(options.get("extra_files") or {})  # e.g. a model state the import kept
        path = checkpointing.save_params(out, params, config_dict=dataclasses.asdict(config),
                                         metadata=metadata, overwrite=args.overwrite,
                                         extra_files=extra)
    except (ValueError, TypeError, OSError, KeyError) as e:
        return _fail(str(e) if not isinstance(e, KeyError) else f"missing key {e}")
    print(f"{PROG}: {args.family} from {args.source} {args.input}: {count:,} parameters "
          f"({'scanned' if config.scan_layers else 'unscanned'}) -> {path}")
    if converter.describe is not None:
        print(f"{PROG}: config: {converter.describe(config)}")
    for line in options["report"]:
        print(f"{PROG}: {line}")
    return 0


def _load_ours(args, spec):
    from plug_jax.trainer import checkpointing

    config_dict, params, metadata = checkpointing.load_params(args.input)
    family = metadata.get("family")
    if family != args.family:
        raise ValueError(f"{args.input} holds a {family!r} checkpoint, not {args.family!r}; "
                         f"pass --family {family}")
    return registry.config_from_dict(args.family, config_dict), params


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
