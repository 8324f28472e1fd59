"""Registration helpers: the task naming convention, idempotent registration, ``plug-tasks``.

Names follow ``<family>_<objective>_<lang>_<version>`` (ARCHITECTURE.md §5), e.g.
``gpt3_shoplm_zh_v1``, ``structbert_mlm_zh_v1``, ``palm2_curriculum_zh_v1``: lower case,
a known prefix first, then one or more objective words, a language code and ``v<N>``.
Names starting with ``test_`` are exempt, for tests' throwaway tasks.

The known prefixes are the registered families (:func:`plug_jax.families.registry.names`,
which lists the family folders without importing any model code) plus the prefixes that
``tasks/`` modules declare with :func:`add_task_prefixes` before registering (``palm2`` for
PALM 2.0, ``shop`` for data-source tasks, a family whose folder does not exist yet).
``plug-tasks list`` groups the tasks by the family of their prefix.

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

# extra prefix -> the family it belongs to (or the data source's own name)
_EXTRA_PREFIXES: dict[str, str] = {}


def add_task_prefixes(family: str, *prefixes: str) -> None:
    """Declares task-name prefixes that belong to ``family`` (tasks/ modules call this at
    import, before they register tasks); ``family`` itself is declared too."""
    for p in (family,) + prefixes:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", p):
            raise ValueError(f"task prefix {p!r} is not lower-case [a-z0-9_]")
        old = _EXTRA_PREFIXES.get(p)
        if old is not None and old != family and p != old:
            raise ValueError(f"task prefix {p!r} already belongs to {old!r}")
        _EXTRA_PREFIXES.setdefault(p, family)


def task_prefixes() -> dict[str, str]:
    """Every known prefix -> its family: the family registry's names and the declared ones."""
    from plug_jax.families import registry as families  # folder names only: no model code
    out = {name: name for name in families.names()}
    out.update(_EXTRA_PREFIXES)
    return out


def task_family(name: str) -> str | None:
    """The family of a task, mixture or curriculum name (its longest known prefix)."""
    for prefix, fam in sorted(task_prefixes().items(), key=lambda kv: -len(kv[0])):
        if name.startswith(prefix + "_"):
            return fam
    return None


LANGS = ("zh", "en", "de", "fr", "es", "ja", "ko", "ru", "ar", "vi", "th", "multi")
_TAIL = re.compile(r"^(?P<objective>[a-z0-9]+(?:_[a-z0-9]+)*)_(?P<lang>[a-z]+)_v(?P<v>[0-9]+)$")


def check_name(name: str) -> None:
    """Raise a one-line ValueError unless ``name`` follows the naming convention."""
    if name.startswith("test_"):
        return
    prefixes = task_prefixes()
    hint = ("fix: use <family>_<objective>_<lang>_v<N>, e.g. 'gpt3_shoplm_zh_v1' (families: "
            f"{', '.join(sorted(prefixes))}; languages: {', '.join(LANGS)})")
    if not re.fullmatch(r"[a-z0-9_]+", name or ""):
        raise ValueError(f"task name {name!r} is not lower-case [a-z0-9_]; {hint}")
    for fam in sorted(prefixes, key=len, reverse=True):  # palm2 before palm
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
        try:
            size = v.vocab_size
        except Exception as e:  # noqa: BLE001  a user's model file not there (yet): list anyway
            size = f"? ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
        parts.append(f"{key}[{type(v).__name__} {size}{', eos' if f.add_eos else ''}]")
    return ", ".join(parts) or "untokenized text features"


def describe() -> list[str]:
    """Every registered task, mixture and curriculum (after importing plug_jax.tasks), one
    line each, grouped under the family of its name."""
    from plug_jax.data import configure_tensorflow  # noqa: PLC0415
    configure_tensorflow()  # quiet TensorFlow before seqio imports it
    import seqio  # noqa: PLC0415

    import plug_jax.tasks  # noqa: F401,PLC0415
    from plug_jax.data import curriculum  # noqa: PLC0415
    entries = []
    for name in sorted(seqio.TaskRegistry.names()):
        t = seqio.TaskRegistry.get(name)
        entries.append((name, f"task        {name}: {_features(t)}; splits {list(t.splits)}"))
    for name in sorted(seqio.MixtureRegistry.names()):
        m = seqio.MixtureRegistry.get(name)
        total = sum(float(m.get_rate(t)) for t in m.tasks) or 1.0
        rates = ", ".join(f"{t.name} {float(m.get_rate(t)) / total:.3f}" for t in m.tasks)
        entries.append((name, f"mixture     {name}: rates {rates}; {_features(m)}"))
    for name in curriculum.names():
        c = curriculum.get_curriculum(name)
        stages = " -> ".join(
            st.mixture_or_task_name
            + (f" (until example {st.until_example})" if st.until_example is not None else "")
            + (f" (until {st.until_fraction:.0%} of the run)" if st.until_fraction is not None
               else "")
            for st in c.stages)
        entries.append((name, f"curriculum  {name}: {stages}"))
    groups: dict[str, list[str]] = {}
    for name, line in entries:
        if not name.startswith("test_"):
            groups.setdefault(task_family(name) or "other", []).append(line)
    lines = []
    for fam in sorted(groups):
        lines.append(f"[{fam}]")
        lines += groups[fam]
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
