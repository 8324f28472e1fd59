"""What a family exports: one :class:`FamilySpec` (``FAMILY`` in its package ``__init__``).

The registry (:mod:`plug_jax.families.registry`) finds the specs; everything central that used
to keep its own list of families reads them instead: the task-model wrappers build their
network through :meth:`FamilySpec.network`, ``plug-convert`` looks converters up by
``(format, direction)``, ``plug-plan --table`` concatenates every family's plan rows, and
``tests/families/test_contract.py`` runs its checks over every registered family.
docs/adding_a_family.md walks through GPT-3 as the example.

This module imports nothing heavy (no jax, flax or TensorFlow): specs are plain data, and the
callables they hold import their own modules when called.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from typing import Any, Callable, Mapping, Sequence

DIRECTIONS = ("import", "export")

# plug-convert options a converter may use besides --input / --output / --scan_layers.
CONVERTER_OPTIONS = ("preset", "vocab_size", "num_ranks", "drop_embedding_norm", "allow_missing")


@dataclasses.dataclass(frozen=True)
class Converter:
    """One checkpoint conversion, looked up by ``(format, direction)``.

    ``direction='import'``: ``fn(path, options) -> (config, params)`` reads a foreign
    checkpoint. ``direction='export'``: ``fn(config, params, out_dir, options) -> str`` writes
    one and returns a short description of what it wrote. ``options`` is a dict with the
    ``plug-convert`` options named in ``uses`` (others are refused in one line) plus
    ``scan_layers``. An import may add ``options['extra_files']`` entries ``{name in the
    converted checkpoint: file it wrote}`` (mPLUG: ``model_state.npz``, the released momentum
    copies and queues), copied into the output directory. ``describe(config) -> str``
    (optional) is printed after an import.

    For the round trip of ``tests/families/test_contract.py`` (export our params, import them
    back, compare) a format with only one direction gives one of:

    * ``fixture(config, params, out_dir)`` (import converters): writes a checkpoint in this
      format from our params, for tests; not a user-facing exporter (``plug-convert --to``
      does not list it);
    * ``checked_by``: the test file (from the repository root) that covers the format
      instead, when no fixture can be written without the reference env (or an export has
      no importer); the contract test reports the format as checked elsewhere and asserts
      that the file exists.

    ``round_trip_config(config) -> config`` (either direction, optional): the config that round
    trip starts from, given the family's ``tiny`` preset, for a format that cannot hold every
    config (e.g. a format without the copy head: ``lambda c: c.replace(copy=False)``).
    ``round_trip_params(params) -> params`` (optional): the part of the family's random params
    the format holds, for a format without some heads (XLM-R has no pre-training sentence
    head: the encoder and pooler round-trip).
    """

    format: str
    direction: str
    fn: Callable[..., Any]
    help: str = ""
    uses: tuple[str, ...] = ()
    describe: Callable[[Any], str] | None = None
    fixture: Callable[[Any, Any, str], None] | None = None
    checked_by: str | None = None
    round_trip_config: Callable[[Any], Any] | None = None
    round_trip_params: Callable[[Any], Any] | None = None

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Converter {self.format!r}: direction must be one of "
                             f"{DIRECTIONS}, got {self.direction!r}")
        bad = [u for u in self.uses if u not in CONVERTER_OPTIONS]
        if bad:
            raise ValueError(f"Converter {self.format!r}: unknown options {bad}; choose from "
                             f"{CONVERTER_OPTIONS}")
        if self.direction == "export" and self.fixture is not None:
            raise ValueError(f"Converter {self.format!r}: fixture belongs to an import "
                             f"converter (an exporter writes the format itself)")


@dataclasses.dataclass(frozen=True)
class PlanRow:
    """One row of docs/scaling.md: a model gin, a mesh, a target and gin overrides."""

    name: str
    model_gin: str
    mesh: str
    hardware: str
    published: str  # published size with its MODEL_SPECS.md tag
    where: str  # the pod the mesh stands for
    overrides: tuple[str, ...] = ()  # --gin.NAME=VALUE bindings (without --gin.)
    partitioning_gin: str = "partitioning/fsdp.gin"
    extra_gin: tuple[str, ...] = ()  # more gin files after the model's (e.g. a test family's)

    def argv(self) -> list[str]:
        return (["--gin_file=runs/plan.gin", f"--gin_file={self.model_gin}",
                 *[f"--gin_file={g}" for g in self.extra_gin],
                 f"--gin_file={self.partitioning_gin}"]
                + [f"--gin.{o}" for o in self.overrides]
                + [f"--mesh={self.mesh}", f"--hardware={self.hardware}", "--json"])

    def command(self) -> str:
        """The shell command that plans this row (human-readable report)."""
        def quote(a: str) -> str:
            if re.fullmatch(r"[\w@%+=:,./-]+", a):
                return a
            return f'"{a}"' if not re.search(r'["$`\\!]', a) else shlex.quote(a)
        return "plug-plan " + " ".join(quote(a) for a in self.argv() if a != "--json")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A tiny gin experiment of the family, run by the contract test through the CLI.

    ``flags`` shrink it to a few steps (``--gin.NAME=VALUE`` without ``--gin.``); ``needs``
    names another experiment of the family whose trained checkpoint this one starts from
    (passed as ``INIT_CHECKPOINT``)."""

    gin_file: str
    flags: tuple[str, ...] = ()
    needs: str | None = None
    infers: bool = True


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """A family as the rest of plug_jax sees it.

    * ``name``: the family name (checkpoint metadata, ``plug-convert --family``, gin
      ``family = '...'``).
    * ``config_cls``: the config dataclass; ``config_cls.from_preset(name, **overrides)``.
    * ``listing_order``: where the family comes in listings (``plug-convert --help``,
      ``plug-plan --table``, ``plug-tasks list``): the order families joined plug_jax
      (gpt3 0, structbert 1, plug 2, palm 3, ...); ties by name.
    * ``networks``: ``{kind: fn(config, **kw) -> flax module}`` for the task-model kinds the
      family offers (``'decoder_lm'``, ``'encdec_lm'``, ``'encoder'``, ``'dual_encoder'``...).
      The generic wrappers in :mod:`plug_jax.models` call :meth:`network`.
    * ``flops``: ``{kind: fn(config, batch, lengths) -> training FLOPs per step}``.
    * ``converters``: checkpoint conversions (:class:`Converter`).
    * ``plan_rows``: ``fn() -> rows`` (:class:`PlanRow`) for ``plug-plan --table``.
    * ``feature_converters``: the data-side feature converters its task models read.
    * ``experiments``: its tiny gin experiments (:class:`Experiment`).
    * ``encoder_config``: ``fn(config) -> the config of the family's text encoder`` for
      families that offer an ``'encoder'`` kind from a composite config (PLUG stage 1).
    * ``extras``: anything else the family's own wrappers look up (e.g. prompt builders).
    """

    name: str
    config_cls: type
    listing_order: int = 100
    networks: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
    flops: Mapping[str, Callable[..., float]] = dataclasses.field(default_factory=dict)
    converters: Sequence[Converter] = ()
    plan_rows: Callable[[], Sequence[PlanRow]] = tuple
    feature_converters: tuple[str, ...] = ()
    experiments: tuple[Experiment, ...] = ()
    encoder_config: Callable[[Any], Any] | None = None
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"FamilySpec: name {self.name!r} must be lower-case [a-z0-9_]")
        seen = set()
        for c in self.converters:
            key = (c.format, c.direction)
            if key in seen:
                raise ValueError(f"FamilySpec {self.name!r}: two converters for {key}")
            seen.add(key)

    def network(self, kind: str, config, **kw):
        """The flax module of task-model kind ``kind`` for ``config``."""
        if kind not in self.networks:
            raise ValueError(f"family {self.name!r} has no {kind!r} network; it offers "
                             f"{sorted(self.networks) or 'none'}")
        return self.networks[kind](config, **kw)

    def flops_per_step(self, kind: str, config, batch: int, lengths: Mapping[str, int]) -> float:
        if kind not in self.flops:
            raise ValueError(f"family {self.name!r} has no FLOP formula for {kind!r}; add "
                             f"one to its FamilySpec.flops")
        return float(self.flops[kind](config, batch, lengths))

    def converter(self, fmt: str, direction: str) -> Converter:
        for c in self.converters:
            if c.format == fmt and c.direction == direction:
                return c
        have = [c.format for c in self.converters if c.direction == direction]
        verb = "imports from" if direction == "import" else "exports to"
        raise ValueError(f"family {self.name!r} has no {direction} converter for {fmt!r}; it "
                         f"{verb}: {', '.join(have) or 'nothing'}")

    def formats(self, direction: str) -> list[str]:
        return [c.format for c in self.converters if c.direction == direction]
