"""Curriculum definitions and their registry (no data-pipeline code).

``plug_jax.data.pipeline`` resolves a curriculum's stages here, and
``plug_jax.data.curriculum`` (the iterator over a curriculum's batches, which reads each
stage through the pipeline) re-exports everything; keeping the two apart means neither module
imports the other in both directions. See ``plug_jax.data.curriculum`` for the semantics.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: a registered task or mixture, until an example index or a fraction."""

    mixture_or_task_name: str
    until_example: Optional[int] = None
    until_fraction: Optional[float] = None

    def __post_init__(self):
        if self.until_example is not None and self.until_fraction is not None:
            raise ValueError(f"stage {self.mixture_or_task_name!r} sets both until_example and "
                             f"until_fraction; give one of them")
        if self.until_example is not None and self.until_example <= 0:
            raise ValueError(f"stage {self.mixture_or_task_name!r}: until_example must be > 0, "
                             f"got {self.until_example}")
        if self.until_fraction is not None and not 0.0 < self.until_fraction < 1.0:
            raise ValueError(f"stage {self.mixture_or_task_name!r}: until_fraction must be in "
                             f"(0, 1), got {self.until_fraction}")


@dataclasses.dataclass(frozen=True)
class Curriculum:
    name: str
    stages: tuple[Stage, ...]

    def __post_init__(self):
        if not self.stages:
            raise ValueError(f"curriculum {self.name!r} has no stages; give at least one")
        for st in self.stages[:-1]:
            if st.until_example is None and st.until_fraction is None:
                raise ValueError(f"curriculum {self.name!r}: stage {st.mixture_or_task_name!r} "
                                 f"is not the last, so it needs until_example or until_fraction")
        last = self.stages[-1]
        if last.until_example is not None or last.until_fraction is not None:
            raise ValueError(f"curriculum {self.name!r}: the last stage "
                             f"{last.mixture_or_task_name!r} is open-ended; drop its until_*")

    def boundaries(self, total_examples: Optional[int] = None) -> tuple[int, ...]:
        """Example index at which each stage after the first starts (increasing)."""
        out = []
        for st in self.stages[:-1]:
            if st.until_fraction is not None:
                if total_examples is None:
                    raise ValueError(f"curriculum {self.name!r} has fractional stage ends; "
                                     f"pass total_examples (train_steps * batch size)")
                out.append(int(round(st.until_fraction * int(total_examples))))
            else:
                out.append(int(st.until_example))
        if any(b <= a for a, b in zip([0] + out, out)):
            raise ValueError(f"curriculum {self.name!r}: stage ends {out} must be positive and "
                             f"strictly increasing; fix the until_* values")
        return tuple(out)


# ----------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Curriculum] = {}


def register_curriculum(name: str, stages: Sequence[Stage]) -> Curriculum:
    """Register (once) a curriculum; the same stages again is a no-op, others raise."""
    cur = Curriculum(name, tuple(stages))
    old = _REGISTRY.get(name)
    if old is not None:
        if old != cur:
            raise ValueError(f"curriculum {name!r} is already registered with other stages; "
                             f"pick another name (or bump its _vN version)")
        return old
    _REGISTRY[name] = cur
    return cur


def names() -> list[str]:
    return sorted(_REGISTRY)


def is_curriculum(name: str) -> bool:
    if name not in _REGISTRY:
        try:
            import plug_jax.tasks  # noqa: F401,PLC0415  (registers the project's)
        except ImportError:
            pass
    return name in _REGISTRY


def get_curriculum(name: str) -> Curriculum:
    if not is_curriculum(name):
        raise ValueError(f"unknown curriculum {name!r}; registered: {names()}")
    return _REGISTRY[name]
