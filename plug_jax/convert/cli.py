"""``plug-convert``: convert a foreign checkpoint into a plug_jax params checkpoint and back.

    plug-convert --family gpt3 --source hf --input GPT2_DIR --output OUT_DIR
    plug-convert --family gpt3 --source modelscope --input MS_DIR --output OUT_DIR \\
        [--scan_layers true|false] [--overwrite]
    plug-convert --family structbert --source hf --input BERT_DIR --output OUT_DIR
    plug-convert --family plug --source megatron --input DIR_WITH_mp_rank_files \\
        --output OUT_DIR [--preset 27B] [--vocab_size N] [--num_ranks 8] [--drop_embedding_norm]
    plug-convert --to hf --family structbert --input OUT_DIR --output HF_DIR
    plug-convert --to megatron --family plug --input OUT_DIR --output SHARDS_DIR [--num_ranks 8]

Import writes ``OUT_DIR/{params/,config.json,metadata.json}`` with
:func:`plug_jax.trainer.checkpointing.save_params`; ``--to`` reads such a directory and writes
the foreign layout (``config.json`` + ``model.safetensors`` for ``hf``,
``mp_rank_XX_model_states.pt`` for ``megatron``). A bad input prints one line
``plug-convert: error: ...`` on stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

PROG = "plug-convert"
SOURCES = ("hf", "modelscope", "megatron")
# family -> sources it is imported from / formats it is exported to (--to)
FAMILY_SOURCES = {"gpt3": ("hf", "modelscope"), "structbert": ("hf",), "plug": ("megatron",)}
FAMILY_TARGETS = {"structbert": ("hf",), "plug": ("megatron",)}
DEFAULT_PRESETS = {"plug": "27B"}  # structbert: config.json of the input, or --preset


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
    p = _Parser(prog=PROG, description="Convert a Hugging Face, ModelScope or Megatron "
                                       "checkpoint into a plug_jax params checkpoint, or back "
                                       "with --to.")
    p.add_argument("--family", required=True, help="family: gpt3, structbert or plug")
    p.add_argument("--source", default=None,
                   help="checkpoint format to import: hf or modelscope (gpt3), hf (structbert), "
                        "megatron (plug)")
    p.add_argument("--to", default=None,
                   help="export a plug_jax params checkpoint (--input) instead: hf (structbert) "
                        "or megatron (plug)")
    p.add_argument("--preset", default=None,
                   help="family preset giving the config (plug: default 27B; structbert: used "
                        "instead of the input's config.json)")
    p.add_argument("--vocab_size", type=int, default=None, help="override the preset's vocab_size")
    p.add_argument("--num_ranks", type=int, default=8,
                   help="plug: tensor-parallel rank files to read / write (default 8)")
    p.add_argument("--drop_embedding_norm", action="store_true",
                   help="plug: convert although PlugModel has no place for "
                        "bert.embeddings.LayerNorm (outputs then differ from PLUG's)")
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

    if args.family not in FAMILY_SOURCES:
        return _fail(f"unknown family {args.family!r}; supported families: "
                     f"{', '.join(FAMILY_SOURCES)}")
    if args.to is not None:
        if args.source is not None:
            return _fail("pass either --source (import) or --to (export), not both")
        targets = FAMILY_TARGETS.get(args.family, ())
        if args.to not in targets:
            combos = ", ".join(f"--family {f} --to {t}" for f, ts in FAMILY_TARGETS.items()
                               for t in ts)
            return _fail(f"cannot export family {args.family!r} to {args.to!r}; supported: "
                         f"{combos}")
    else:
        if args.source is None:
            return _fail("the following arguments are required: --source (or --to to export)")
        if args.source not in SOURCES:
            return _fail(f"unknown source {args.source!r}; choose one of "
                         f"{', '.join(FAMILY_SOURCES[args.family])} (family {args.family})")
        if args.source not in FAMILY_SOURCES[args.family]:
            return _fail(f"family {args.family!r} cannot be converted from source "
                         f"{args.source!r}; use --source "
                         f"{' or '.join(FAMILY_SOURCES[args.family])}")
    if args.family == "gpt3" and (args.preset or args.vocab_size):
        return _fail("--preset / --vocab_size are not used by family 'gpt3' (its config comes "
                     "from the input)")
    if args.family == "structbert" and args.vocab_size is not None and not args.preset:
        return _fail("--vocab_size needs --preset for family 'structbert' (otherwise the "
                     "input's config.json gives the vocabulary)")
    if args.num_ranks < 1:
        return _fail(f"--num_ranks must be >= 1, got {args.num_ranks}")
    if not os.path.exists(args.input):
        return _fail(f"input {args.input} does not exist")
    if args.to is not None or args.family != "gpt3":
        return _main_bert_plug(args)

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


def _preset_config(args):
    """The family config from ``--preset`` (or the family default) and ``--vocab_size``."""
    name = args.preset or DEFAULT_PRESETS.get(args.family)
    if name is None:
        return None
    if args.family == "plug":
        from plug_jax.families.plug.config import PlugConfig as cls
    else:
        from plug_jax.families.structbert.config import StructBERTConfig as cls
    over = {"scan_layers": args.scan_layers}
    if args.vocab_size is not None:
        over["vocab_size"] = args.vocab_size
    return cls.from_preset(name, **over)


def _main_bert_plug(args) -> int:
    """structbert (hf <->) and plug (megatron <->) conversions."""
    from plug_jax.trainer import checkpointing

    try:
        out = checkpointing.check_output_dir(args.output, args.overwrite)  # fail before work
        if args.to is not None:
            return _export(args, out)
        config = _preset_config(args)
        if args.family == "structbert":
            from plug_jax.convert.hf_bert import load_bert_checkpoint, to_bert_config

            hf_cfg = None
            if config is not None:  # --preset: its config instead of the input's config.json
                hf_cfg = to_bert_config(config).to_dict()
            over = {"preset": config.preset} if config is not None else {}
            config, params = load_bert_checkpoint(args.input, hf_cfg,
                                                  scan_layers=args.scan_layers, **over)
        else:
            from plug_jax.convert.megatron import find_megatron_shards
            from plug_jax.convert.plug import load_plug_checkpoint

            if os.path.isdir(args.input):
                find_megatron_shards(args.input)  # one clear line when no mp_rank files
            params = load_plug_checkpoint(
                args.input, config, num_ranks=args.num_ranks,
                embedding_norm="drop" if args.drop_embedding_norm else "error")
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
    layers = (f"layers={config.num_layers}" if args.family == "structbert" else
              f"encoder_layers={config.num_encoder_layers} "
              f"decoder_layers={config.num_decoder_layers}")
    print(f"{PROG}: config: preset={config.preset} {layers} heads={config.num_heads} "
          f"hidden={config.hidden_size} ffn={config.mlp_dim} vocab={config.vocab_size} "
          f"max_pos={config.max_position_embeddings} norm={config.norm_placement}")
    return 0


def _load_ours(args):
    from plug_jax.trainer import checkpointing

    config_dict, params, metadata = checkpointing.load_params(args.input)
    family = metadata.get("family")
    if family != args.family:
        raise ValueError(f"{args.input} holds a {family!r} checkpoint, not {args.family!r}; "
                         f"pass --family {family}")
    if args.family == "plug":
        from plug_jax.families.plug.config import PlugConfig as cls
    else:
        from plug_jax.families.structbert.config import StructBERTConfig as cls
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config_dict.items() if k in known}), params


def _export(args, out: str) -> int:
    config, params = _load_ours(args)
    os.makedirs(out, exist_ok=True)
    note = ""
    if args.to == "hf":
        from safetensors.numpy import save_file

        from plug_jax.convert.hf_bert import (to_bert_config, to_bert_state_dict,
                                              to_megatron_bert_state_dict)

        fn = to_megatron_bert_state_dict if config.pre_norm else to_bert_state_dict
        sd = fn(config, params, as_numpy=True)
        hf_cfg = to_bert_config(config)
        hf_cfg.architectures = [("MegatronBert" if config.pre_norm else "Bert") + "ForPreTraining"]
        hf_cfg.save_pretrained(out)
        save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        count = int(sum(v.size for k, v in sd.items() if not k.startswith("cls.predictions.dec")))
        classes = config.num_sentence_classes
        if classes != 2:
            note = (f"; note: cls.seq_relationship has {classes} classes, HF's pre-training "
                    f"head 2: load with BertModel or ignore_mismatched_sizes=True")
        what = "model.safetensors + config.json"
    else:
        from plug_jax.convert.plug import plug_to_megatron_shards, save_megatron_shards

        shards = plug_to_megatron_shards(params, config, num_shards=args.num_ranks)
        save_megatron_shards(shards, out)
        count = int(sum(np.size(x) for x in _leaves(params)))
        what = f"{len(shards)} mp_rank_XX_model_states.pt files"
    print(f"{PROG}: {args.family} {args.input} -> {args.to} {out}: {count:,} parameters "
          f"({what}){note}")
    return 0


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
