"""Composite family configs: a config that *holds* the configs of the parts it combines.

PALM is a StructBERT encoder plus a Transformer decoder; PLUG the same with PLUG's sizes. Their
configs (``PalmConfig``, ``PlugConfig``) are frozen dataclasses whose fields are the parts
(``encoder: StructBERTConfig``, ``decoder: TransformerDecoderConfig``) plus the settings of the
composite itself (``copy``, ``position_offset``, ``preset``...), instead of copies of the parts'
fields. A subclass declares

* ``PARTS``: ``{field: config class}`` of its nested parts;
* ``ROUTES``: ``{flat name: ((part, part field), ...)}``, the flat names the composite has
  always taken (``hidden_size``, ``num_decoder_layers``...).

and is decorated ``@dataclasses.dataclass(frozen=True, init=False)``: this class gives it the
constructor. ``Config(encoder=..., decoder=..., copy=True, hidden_size=64)`` starts from the
given parts (configs, or dicts as ``dataclasses.asdict`` wrote them; the field defaults
otherwise) and writes each flat keyword into every ``(part, field)`` its route names (a shared
size such as ``hidden_size`` goes to both parts). Flat names read as properties, from the
first part of their route. ``dataclasses.replace(config, hidden_size=...)``,
``config.replace(...)``, ``from_preset(name, **flat)`` and gin bindings of the flat names
therefore work as before.

``dataclasses.asdict`` of a composite config is nested (``{'encoder': {...}, 'decoder':
{...}, ...}``): that is what checkpoints record (``metadata['config']``, plug-convert's
``config.json``). Migration: checkpoints written before the parts were nested recorded the
flat form (``{'hidden_size': ..., 'num_decoder_layers': ..., ...}``); :meth:`from_dict`
reads either form (and the constructor takes flat keywords anyway), so
``Config.from_dict(old_flat_dict) == Config.from_dict(new_nested_dict)`` for the same model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from plug_jax.layers.config_base import ConfigBase

Route = tuple[tuple[str, str], ...]


def _as_part(owner: str, name: str, cls: type, value: Any) -> Any:
    """``value`` (a ``cls`` instance or a dict of its fields) as a ``cls`` instance."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise TypeError(f"{owner}: {name} has no fields {unknown} ({cls.__name__})")
        try:
            return cls(**{k: v for k, v in value.items() if k in known})
        except ValueError as e:
            raise ValueError(f"{owner}.{name}: {e}") from None
    raise TypeError(f"{owner}: {name} must be a {cls.__name__} (or a dict of its fields), got "
                    f"{type(value).__name__}")


class CompositeConfig(ConfigBase):
    """Base of the composite family configs (module docstring); ``replace`` (parts and
    fields, or flat names routed into the parts) and the dtypes come from ConfigBase."""

    PARTS: ClassVar[dict[str, type]] = {}
    ROUTES: ClassVar[dict[str, Route]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        own = set(getattr(cls, "__annotations__", {}))
        for flat, route in cls.__dict__.get("ROUTES", {}).items():
            if flat in own:
                raise TypeError(f"{cls.__name__}: {flat!r} is both a field and a flat route")
            for part, _ in route:
                if part not in cls.PARTS:
                    raise TypeError(f"{cls.__name__}: route {flat!r} names unknown part "
                                    f"{part!r}")
            setattr(cls, flat, _flat_property(flat, route))

    def __init__(self, **kwargs):
        cls = type(self)
        name = cls.__name__
        fields = {f.name: f for f in dataclasses.fields(cls)}
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.ROUTES}
        unknown = sorted(set(kwargs) - set(fields))
        if unknown:
            raise TypeError(f"{name}.__init__() got unexpected keyword arguments {unknown}; it "
                            f"takes the fields {sorted(fields)} and the flat names of "
                            f"{name}.ROUTES")
        values = {}
        for fname, f in fields.items():
            if fname in kwargs:
                values[fname] = kwargs[fname]
            elif f.default is not dataclasses.MISSING:
                values[fname] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                values[fname] = f.default_factory()
            else:
                raise TypeError(f"{name}.__init__() missing required argument {fname!r}")
        for part, part_cls in cls.PARTS.items():
            values[part] = _as_part(name, part, part_cls, values[part])
        changes: dict[str, dict[str, Any]] = {part: {} for part in cls.PARTS}
        for key, value in flat.items():
            for part, field in cls.ROUTES[key]:
                changes[part][field] = value
        for part, change in changes.items():
            if change:
                try:
                    values[part] = dataclasses.replace(values[part], **change)
                except ValueError as e:
                    raise ValueError(f"{name}.{part}: {e}") from None
        for fname, value in values.items():
            object.__setattr__(self, fname, value)
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    @classmethod
    def flat_names(cls) -> tuple[str, ...]:
        """The flat keywords the constructor takes besides the fields."""
        return tuple(cls.ROUTES)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """The config ``dataclasses.asdict`` recorded, in either form: nested (parts as dicts)
        or the flat form of checkpoints written before the parts were nested. Unknown keys
        (at the top or in a part) are ignored, as plug-convert always did for config.json."""
        known = {f.name for f in dataclasses.fields(cls)} | set(cls.ROUTES)
        kw = {k: v for k, v in data.items() if k in known}
        for part, part_cls in cls.PARTS.items():
            if isinstance(kw.get(part), Mapping):
                names = {f.name for f in dataclasses.fields(part_cls)}
                kw[part] = {k: v for k, v in kw[part].items() if k in names}
        return cls(**kw)

    def check_shared(self, *flat: str) -> None:
        """One-line error when the parts disagree on a flat name they share (a size both
        parts must have, e.g. ``hidden_size``)."""
        for key in flat:
            seen = {f"{part}.{field}": getattr(getattr(self, part), field)
                    for part, field in type(self).ROUTES[key]}
            if len(set(map(repr, seen.values()))) > 1:
                raise ValueError(f"{type(self).__name__}: the parts disagree on {key} ("
                                 + ", ".join(f"{k}={v!r}" for k, v in seen.items())
                                 + f"); set {key} once (flat) or give the parts the same value")



def _flat_property(flat: str, route: Route) -> property:
    part, field = route[0]
    where = ", ".join(f"{p}.{f}" for p, f in route)

    def get(self):
        return getattr(getattr(self, part), field)

    return property(get, doc=f"Flat view of {where} (read from {part}.{field}).")
