"""The family registry: every :class:`~plug_jax.families.spec.FamilySpec`, found lazily.

Where a spec comes from, in order:

1. the packages ``plug_jax/families/<name>/`` (each exports ``FAMILY``), listed from the folder
   without importing them; a family's package is imported the first time it is asked for;
2. modules named in ``$PLUG_JAX_FAMILIES`` (comma-separated import paths, each exporting
   ``FAMILY``): families that live outside this repository, and test families that must
   reach a subprocess (``plug-convert``, ``plug-plan``, ``plug-train``);
3. :func:`register` (in-process).

Nothing here imports TensorFlow, and listing names imports no family.
"""
from __future__ import annotations

import importlib
import os
from plug_jax.families.spec import FamilySpec

ENV = "PLUG_JAX_FAMILIES"
_HERE = os.path.dirname(os.path.abspath(__file__))
_REGISTERED: dict[str, FamilySpec] = {}


def _package_names() -> list[str]:
    return sorted(d for d in os.listdir(_HERE)
                  if os.path.isfile(os.path.join(_HERE, d, "__init__.py"))
                  and not d.startswith(("_", ".")))


def _env_modules() -> list[str]:
    return [m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()]


def _spec_of(module_name: str) -> FamilySpec:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import family module {module_name!r} ({e}); fix {ENV} or "
                         f"the package") from e
    spec = getattr(module, "FAMILY", None)
    if not isinstance(spec, FamilySpec):
        raise ValueError(f"module {module_name!r} does not export FAMILY = FamilySpec(...); "
                         f"see docs/adding_a_family.md")
    return spec


def register(spec: FamilySpec) -> FamilySpec:
    """Registers ``spec`` in this process (the same spec again is a no-op)."""
    if not isinstance(spec, FamilySpec):
        raise TypeError(f"register: expected a FamilySpec, got {type(spec).__name__}")
    old = _REGISTERED.get(spec.name)
    if old is not None and old is not spec:
        raise ValueError(f"family {spec.name!r} is already registered; pick another name")
    _REGISTERED[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Forgets a family registered with :func:`register` (tests)."""
    _REGISTERED.pop(name, None)


def _from_env() -> dict[str, FamilySpec]:
    out = {}
    for m in _env_modules():
        spec = _spec_of(m)
        out[spec.name] = spec
    return out


def names() -> list[str]:
    """Every family name (packages, $PLUG_JAX_FAMILIES, registered), sorted."""
    return sorted(set(_package_names()) | set(_from_env()) | set(_REGISTERED))


def get(name: str) -> FamilySpec:
    """The spec of family ``name``; one-line ValueError naming the known families."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _package_names():
        spec = _spec_of(f"plug_jax.families.{name}")
        if spec.name != name:
            raise ValueError(f"plug_jax.families.{name} exports FAMILY named {spec.name!r}; "
                             f"the folder and the spec must have the same name")
        return spec
    env = _from_env()
    if name in env:
        return env[name]
    known = ", ".join(s.name for s in specs())  # in listing order (the order they joined)
    raise ValueError(f"unknown family {name!r}; known families: {known}")


def specs() -> list[FamilySpec]:
    """Every spec, in listing order (imports each family package)."""
    return sorted((get(n) for n in names()), key=lambda s: (s.listing_order, s.name))


def config_from_dict(name: str, config_dict: dict):
    """Family ``name``'s config from a saved ``config.json`` dict (composite configs through
    their ``from_dict``, which also reads older flat forms; unknown keys dropped)."""
    import dataclasses
    cls = get(name).config_cls
    if hasattr(cls, "from_dict"):
        return cls.from_dict(config_dict)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config_dict.items() if k in known})


def converted_config(path: str, overrides: dict | None = None):
    """The config a plug-convert output was written with (``DIR/config.json`` of the family in
    ``DIR/metadata.json``), with ``overrides`` (e.g. ``{'dtype': 'bfloat16'}``) replaced.
    runs/converted.gin binds every task model's ``config`` to this, so a converted checkpoint
    runs with exactly the shapes it holds."""
    import json
    meta_path = os.path.join(path, "metadata.json")
    cfg_path = os.path.join(path, "config.json")
    if not (os.path.isfile(meta_path) and os.path.isfile(cfg_path)):
        raise ValueError(f"CONVERTED={path!r} is not a plug-convert output (it needs "
                         f"config.json and metadata.json); fix: point it at the --output of "
                         f"plug-convert")
    with open(meta_path, encoding="utf-8") as f:
        family = json.load(f).get("family")
    with open(cfg_path, encoding="utf-8") as f:
        config = config_from_dict(family, json.load(f))
    return config.replace(**dict(overrides or {})) if overrides else config
