"""Curricula: a list of stages, each a seqio task or mixture, switching at example indices.

A curriculum is trained like one task: ``CurriculumIterator`` has the interface of
``pipeline.BatchIterator`` (``step``, ``state()``, ``from_state``, ``feature_shapes``,
``feature_specs``, ``close``) and adds ``stage`` and ``stage_name``.

Positions are *global example indices*: global batch ``n`` holds examples
``n*B .. n*B + B - 1`` (``B`` the global batch size) whatever the process count. Stage ``s``
covers examples ``[start_s, end_s)``; a batch belongs to the stage that contains its first
example, so a boundary that is not a multiple of ``B`` takes effect at the first batch that
starts at or after it. Each stage reads its own mixture from that mixture's beginning: the
``k``-th batch of a stage is batch ``k`` of that stage's seqio stream (seeded like any other
stream). So the global example sequence depends only on the curriculum, the batch size and
the seed, never on the process count, and a run resumed from a checkpoint (which stores the
global step) is in the same stage at the same example.

Stage ends are given either as absolute example indices (``until_example``) or as fractions
of the run's total examples (``until_fraction``, resolved with ``total_examples =
train_steps * global_batch_size`` when the iterator is built; PLUG's "MLM for the first 90%
of steps" is ``until_fraction=0.9``). The last stage is open-ended.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from plug_jax.data import features
from plug_jax.data.curriculum_registry import (  # noqa: F401  (re-exported)
    _REGISTRY, Curriculum, Stage, get_curriculum, is_curriculum, names, register_curriculum)

STATE_VERSION = 1


def batch_boundaries(example_boundaries: Sequence[int], global_batch_size: int) -> tuple[int, ...]:
    """First global batch of each later stage: the first batch starting at or after it."""
    return tuple(math.ceil(b / global_batch_size) for b in example_boundaries)


def stage_of_batch(step: int, batch_bounds: Sequence[int]) -> int:
    return int(np.searchsorted(np.asarray(batch_bounds, np.int64), step, side="right"))


# ----------------------------------------------------------------------------- iterator
class CurriculumIterator:
    """This process's rows of each global batch of a curriculum (see module docstring)."""

    def __init__(self, curriculum: str | Curriculum, task_feature_lengths: Mapping[str, int],
                 split: str, global_batch_size: int, *, total_examples: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, pack: bool = True,
                 process_index: int = 0, process_count: int = 1, start_step: int = 0,
                 converter: str = "decoder", example_boundaries: Optional[Sequence[int]] = None,
                 index_mixtures: bool = True, index_based: Optional[bool] = None):
        self.curriculum = (curriculum if isinstance(curriculum, Curriculum)
                           else get_curriculum(curriculum))
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.example_boundaries = (tuple(int(b) for b in example_boundaries)
                                   if example_boundaries is not None
                                   else self.curriculum.boundaries(total_examples))
        if len(self.example_boundaries) != len(self.curriculum.stages) - 1:
            raise ValueError(f"curriculum {self.curriculum.name!r} has "
                             f"{len(self.curriculum.stages)} stages but the position holds "
                             f"{len(self.example_boundaries)} boundaries")
        self.global_batch_size = int(global_batch_size)
        self.batch_boundaries = batch_boundaries(self.example_boundaries, self.global_batch_size)
        self.feature_lengths = features.normalize_lengths(task_feature_lengths)
        self.split, self.shuffle, self.seed, self.pack = split, bool(shuffle), int(seed), bool(pack)
        self.converter = converter
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.step = int(start_step)
        # Mixture stages read by global index (pipeline.BatchIterator's default); positions
        # saved before mixtures could be read by index say nothing, and resume on the stream.
        self.index_mixtures = bool(index_mixtures)
        # Every stage's index_based (pipeline.BatchIterator): None reads each stage by index
        # where it can; False keeps every stage on the stream (gin INDEX_BASED_INPUT=False);
        # True requires every stage to be readable by index.
        self.index_based = None if index_based is None else bool(index_based)
        self._inner = None
        self._inner_stage = -1
        self._open(self.stage)

    @property
    def stage(self) -> int:
        """Index of the stage the next batch comes from."""
        return stage_of_batch(self.step, self.batch_boundaries)

    @property
    def stage_name(self) -> str:
        return self.curriculum.stages[self.stage].mixture_or_task_name

    def _stage_start(self, s: int) -> int:
        return 0 if s == 0 else self.batch_boundaries[s - 1]

    def _open(self, s: int) -> None:
        import seqio  # noqa: PLC0415
        from plug_jax.data.pipeline import BatchIterator  # noqa: PLC0415
        if self._inner is not None:
            self._inner.close()
        name = self.curriculum.stages[s].mixture_or_task_name
        stream_only = self.index_based is False or (
            not self.index_mixtures and name in seqio.MixtureRegistry.names())
        self._inner = BatchIterator(
            name, self.feature_lengths, self.split,
            self.global_batch_size, shuffle=self.shuffle, seed=self.seed, repeat=True,
            pack=self.pack, process_index=self.process_index,
            process_count=self.process_count, start_step=self.step - self._stage_start(s),
            converter=self.converter,
            index_based=False if stream_only else self.index_based)
        self._inner_stage = s

    @property
    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._inner.feature_shapes

    @property
    def feature_specs(self) -> dict:
        return self._inner.feature_specs

    def __iter__(self) -> "CurriculumIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._inner is None:
            raise StopIteration  # closed
        s = self.stage
        if s != self._inner_stage:
            self._open(s)
        batch = next(self._inner)
        self.step += 1
        return batch

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
        self._inner = None

    def state(self) -> dict[str, Any]:
        """JSON-serialisable position (global step and the resolved stage boundaries)."""
        return {
            "version": STATE_VERSION,
            "curriculum": self.curriculum.name,
            "stages": [st.mixture_or_task_name for st in self.curriculum.stages],
            "example_boundaries": list(self.example_boundaries),
            "stage": self.stage,
            "step": self.step,
            "split": self.split,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "feature_lengths": {k: list(v) if isinstance(v, tuple) else v
                                for k, v in self.feature_lengths.items()},
            "pack": self.pack,
            "shuffle": self.shuffle,
            "converter": self.converter,
            "index_mixtures": self.index_mixtures,
            "index_based": self.index_based,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, process_index: int = 0,
                   process_count: int = 1) -> "CurriculumIterator":
        if state.get("version") != STATE_VERSION or "curriculum" not in state:
            raise ValueError(f"not a curriculum iterator state (version "
                             f"{state.get('version')!r}); it was written by another reader")
        cur = get_curriculum(state["curriculum"])
        if [st.mixture_or_task_name for st in cur.stages] != list(state["stages"]):
            raise ValueError(f"curriculum {cur.name!r} now has stages "
                             f"{[st.mixture_or_task_name for st in cur.stages]}, but the saved "
                             f"position has {state['stages']}; resume with the curriculum it "
                             f"was written with")
        return cls(cur, state["feature_lengths"], state["split"], state["global_batch_size"],
                   shuffle=state["shuffle"], seed=state["seed"], pack=state["pack"],
                   process_index=process_index, process_count=process_count,
                   start_step=state["step"], converter=state.get("converter", "decoder"),
                   example_boundaries=state["example_boundaries"],
                   index_mixtures=bool(state.get("index_mixtures", False)),
                   index_based=state.get("index_based"))

    def __repr__(self) -> str:
        return (f"CurriculumIterator({self.curriculum.name!r}, step={self.step}, "
                f"stage={self.stage} {self.stage_name!r})")
