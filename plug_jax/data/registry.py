"""Registration helpers: the task naming convention, idempotent registration, ``plug-tasks``.

Names follow ``<family>_<objective>_<lang>_<version>`` (ARCHITECTURE.md §5), e.g.
``gpt3_shoplm_zh_v1``, ``structbert_mlm_zh_v1``, ``palm2_curriculum_zh_v1``: lower case,
a known family first, then one or more objective words, a language code and ``v<N>``.
Names starting with ``test_`` are exempt, for tests' throwaway tasks.

``register_task(name, spec, build)`` registers once: the same ``spec`` again returns the
registered task, a different ``spec`` under the same name raises (two meanings of one name
would make checkpoints and evaluations ambiguous; bump ``_vN`` instead).

``plug-tasks list`` prints every registered task, mixture and curriculum of
``plug_jax.tasks`` with its output features (vocabulary, size, eos) and mixing rates.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

FAMILIES = ("structbert", "palm", "palm2", "plug", "plug_moe", "gpt3", "gpt3_moe", "mplug",
            "m6", "mplug_owl", "mplug2", "hitea", "xclip", "dictbert", "amtss", "chatplug",
            "alime_kg", "shop")
LANGS = ("zh", "en", "de", "fr", "es", "ja", "ko", "ru", "ar", "vi", "th", "multi")
_TAIL = re.compile(r"^(?P<objective>[a-z0-9]+(?:_[a-z0-9]+)*)_(?P<lang>[a-z]+)_v(?P<v>[0-9]+)$")


def check_name(name: str) -> None:
    """Raise a one-line ValueError unless ``name`` follows the naming convention."""
    if name.startswith("test_"):
        return
    hint = ("fix: use <family>_<objective>_<lang>_v<N>, e.g. 'gpt3_shoplm_zh_v1' (families: "
            f"{', '.join(FAMILIES)}; languages: {', '.join(LANGS)})")
    if not re.fullmatch(r"[a-z0-9_]+", name or ""):
        raise ValueError(f"task name {name!r} is not lower-case [a-z0-9_]; {hint}")
    for fam in sorted(FAMILIES, key=len, reverse=True):  # plug_moe before plug
        if name.startswith(fam + "_"):
            m = _TAIL.match(name[len(fam) + 1:])
            if m and m["lang"] in LANGS:
                return
            raise ValueError(f"task name {name!r} does not end in _<objective>_<lang>_v<N> "
                             f"with a known language; {hint}")
    raise ValueError(f"task name {name!r} does not start with a known family; {hint}")


def register_task(name: str, spec: Mapping[str, Any], build: Callable[[], Any]):
    """Register ``build()`` (which calls ``seqio.TaskRegistry.add``) once under ``name``."""
    import seqio  # noqa: PLC0415
    check_name(name)
    if name in seqio.TaskRegistry.names():
        task = seqio.TaskRegistry.get(name)
        old = getattr(task, "plug_jax_spec", None)
        if old is not None and old != dict(spec):
            raise ValueError(f"seqio task {name!r} is already registered with {old}, not "
                             f"{dict(spec)}; pick another task name (or bump its _vN version)")
        return task
    task = build()
    task.plug_jax_spec = dict(spec)
    return task


def register_mixture(name: str, tasks: Sequence[tuple[str, float]] | Sequence[str],
                     default_rate: Optional[float] = None):
    """Register a seqio Mixture once; the same members and rates again is a no-op."""
    import seqio  # noqa: PLC0415
    check_name(name)
    members = [(m, float(default_rate or 1.0)) if isinstance(m, str) else (m[0], float(m[1]))
               for m in tasks]
    if name in seqio.MixtureRegistry.names():
        mix = seqio.MixtureRegistry.get(name)
        old = sorted((t.name, float(mix.get_rate(t))) for t in mix.tasks)
        if old != sorted(members):
            raise ValueError(f"seqio mixture {name!r} is already registered with {old}, not "
                             f"{sorted(members)}; pick another name (or bump its _vN version)")
        return mix
    return seqio.MixtureRegistry.add(name, members)


# ------------------------------------------------------------------------------ listing
def _features(provider) -> str:
    parts = []
    for key, f in provider.output_features.items():
        v = f.vocabulary
        parts.append(f"{key}[{type(v).__name__} {v.vocab_size}{', eos' if f.add_eos else ''}]")
    return ", ".join(parts) or "untokenized text features"


def describe() -> list[str]:
    """One line per registered task, mixture and curriculum (after importing plug_jax.tasks)."""
    from plug_jax.data import configure_tensorflow  # noqa: PLC0415
    configure_tensorflow()  # quiet TensorFlow before seqio imports it
    import seqio  # noqa: PLC0415

    import plug_jax.tasks  # noqa: F401,PLC0415
    from plug_jax.data import curriculum  # noqa: PLC0415
    lines = []
    for name in sorted(seqio.TaskRegistry.names()):
        if name.startswith("test_"):
            continue
        t = seqio.TaskRegistry.get(name)
        lines.append(f"task        {name}: {_features(t)}; splits {list(t.splits)}")
    for name in sorted(seqio.MixtureRegistry.names()):
        if name.startswith("test_"):
            continue
        m = seqio.MixtureRegistry.get(name)
        total = sum(float(m.get_rate(t)) for t in m.tasks) or 1.0
        rates = ", ".join(f"{t.name} {float(m.get_rate(t)) / total:.3f}" for t in m.tasks)
        lines.append(f"mixture     {name}: rates {rates}; {_features(m)}")
    for name in curriculum.names():
        if name.startswith("test_"):
            continue
        c = curriculum.get_curriculum(name)
        stages = " -> ".join(
            st.mixture_or_task_name
            + (f" (until example {st.until_example})" if st.until_example is not None else "")
            + (f" (until {st.until_fraction:.0%} of the run)" if st.until_fraction is not None
               else "")
            for st in c.stages)
        lines.append(f"curriculum  {name}: {stages}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="plug-tasks", description="Registered seqio tasks, "
                                 "mixtures and curricula of plug_jax.tasks.")
    ap.add_argument("command", choices=["list"])
    ap.parse_args(argv)
    for line in describe():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
