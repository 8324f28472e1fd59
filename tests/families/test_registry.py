"""The family registry: discovery, lookup, and no family-name branching outside families/."""
import ast
import importlib
import os
import subprocess
import sys

import pytest

import plug_jax
from plug_jax.families import registry
from plug_jax.families.spec import Converter, FamilySpec

PACKAGE = os.path.dirname(os.path.abspath(plug_jax.__file__))
FAMILIES_DIR = os.path.join(PACKAGE, "families")


def test_registry_lists_the_family_folders_without_importing_them():
    code = ("import sys; from plug_jax.families import registry; n = registry.names(); "
            "print(','.join(n)); "
            "print(any(m.startswith('plug_jax.families.gpt3') for m in sys.modules)); "
            "print('tensorflow' in sys.modules, 'flax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={k: v for k, v in os.environ.items()
                                           if k != registry.ENV})
    assert out.returncode == 0, out.stderr[-2000:]
    names, imported, heavy = out.stdout.split("\n")[:3]
    assert {"gpt3", "structbert", "plug", "palm"} <= set(names.split(","))
    assert imported == "False" and heavy == "False False"


def test_specs_and_their_order():
    specs = registry.specs()
    assert [s.name for s in specs][:4] == ["gpt3", "structbert", "plug", "palm"]
    gpt3 = registry.get("gpt3")
    assert gpt3.formats("import") == ["hf", "modelscope"]
    assert registry.get("palm").formats("export") == ["alicemind", "modelscope"]
    assert "decoder_lm" in gpt3.networks and "encoder" in registry.get("plug").networks
    with pytest.raises(ValueError, match="unknown family 'bogus'; known families: gpt3"):
        registry.get("bogus")
    with pytest.raises(ValueError, match="has no 'dual_encoder' network"):
        gpt3.network("dual_encoder", None)
    with pytest.raises(ValueError, match="no import converter for 'tf'"):
        gpt3.converter("tf", "import")


def test_register_and_environment_families(tmp_path, monkeypatch):
    spec = FamilySpec(name="toyfam", config_cls=dict, listing_order=99,
                      converters=(Converter("toy", "import", lambda p, o: None),))
    registry.register(spec)
    try:
        assert "toyfam" in registry.names() and registry.get("toyfam") is spec
        with pytest.raises(ValueError, match="already registered"):
            registry.register(FamilySpec(name="toyfam", config_cls=dict))
    finally:
        registry.unregister("toyfam")
    assert "toyfam" not in registry.names()
    (tmp_path / "envfam_mod.py").write_text(
        "from plug_jax.families.spec import FamilySpec\n"
        "FAMILY = FamilySpec(name='envfam', config_cls=dict)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registry.ENV, "envfam_mod")
    assert registry.get("envfam").name == "envfam" and "envfam" in registry.names()
    monkeypatch.setenv(registry.ENV, "no_such_module_xyz")
    with pytest.raises(ValueError, match="cannot import family module 'no_such_module_xyz'"):
        registry.names()


def test_spec_validation():
    with pytest.raises(ValueError, match="lower-case"):
        FamilySpec(name="Bad-Name", config_cls=dict)
    with pytest.raises(ValueError, match="direction must be one of"):
        Converter("hf", "sideways", print)
    with pytest.raises(ValueError, match="unknown options"):
        Converter("hf", "import", print, uses=("colour",))
    c = Converter("hf", "import", print)
    with pytest.raises(ValueError, match="two converters for"):
        FamilySpec(name="dup", config_cls=dict, converters=(c, c))


# --------------------------------------------------------------------- the source scan
def _family_names() -> set[str]:
    from plug_jax.data import registry as tasks_registry
    return set(registry.names()) | set(tasks_registry._EXTRA_PREFIXES) | {"gpt3_moe",
                                                                          "plug_moe"}


def _strings(node) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def family_branches(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each place ``source`` branches on a family name: a comparison with
    one (``==``, ``!=``, ``in``, ``not in``), a dict keyed by one, a ``match`` case on one,
    or a module- / class-level tuple, list or set of them. Defaults (of arguments and of
    dataclass fields), call arguments, messages and docstrings are not branches."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                found += [(node.lineno, f"compares with {s!r}") for s in _strings(side)
                          if s in names]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, f"dict key {s!r}") for k in node.keys if k is not None
                      for s in _strings(k) if s in names]
        elif isinstance(node, ast.match_case):
            found += [(node.pattern.lineno, f"match case {s!r}") for s in
                      _strings(getattr(node.pattern, "value", None)) if s in names]
    for body in [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        for stmt in body:
            value = getattr(stmt, "value", None)
            targets = getattr(stmt, "targets", None) or [getattr(stmt, "target", None)]
            if any(getattr(t, "id", None) == "__all__" for t in targets):
                continue  # names of objects (e.g. the models.gpt3 helper), not families
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and \
                    isinstance(value, (ast.Tuple, ast.List, ast.Set)):
                found += [(stmt.lineno, f"collection holding {s!r}")
                          for s in _strings(value) if s in names]
    return sorted(set(found))


def test_the_scan_finds_branches():
    names = {"gpt3", "palm"}
    src = ("FAMS = ('gpt3', 'x')\n"
           "def f(family='gpt3', m=None):\n"
           "    '''gpt3'''\n"
           "    if family == 'gpt3': pass\n"
           "    if family in ('palm', 'y'): pass\n"
           "    d = {'palm': 1}\n"
           "    g(family='gpt3')\n"
           "    raise ValueError(f'family {family} is not gpt3')\n")
    assert [line for line, _ in family_branches(src, names)] == [1, 4, 5, 6]


def test_no_family_name_branching_outside_families_and_tasks():
    names = _family_names()
    offenders = []
    for folder, _, files in os.walk(PACKAGE):
        if folder.startswith(FAMILIES_DIR):
            continue
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                for line, what in family_branches(open(path, encoding="utf-8").read(), names):
                    offenders.append(f"{os.path.relpath(path, PACKAGE)}:{line}: {what}")
    assert not offenders, "family names branched on outside families/:\n" + "\n".join(offenders)


@pytest.mark.parametrize("family", registry.names())
def test_config_survives_its_saved_dict(family):
    """What a checkpoint's metadata and a plug-convert folder's config.json hold
    (``dataclasses.asdict``, nested parts as dicts) reads back to the same config: every
    preset, through ``registry.config_from_dict`` (runs/converted.gin, plug-convert --to)."""
    import dataclasses
    import json
    spec = registry.get(family)
    presets = getattr(importlib.import_module(spec.config_cls.__module__), "PRESETS", ())
    names = list(presets) if not isinstance(presets, str) else [presets]
    assert "tiny" in names
    for name in names:
        config = spec.config_cls.from_preset(name)
        saved = json.loads(json.dumps(dataclasses.asdict(config)))
        assert registry.config_from_dict(family, saved) == config, name
