"""plug_jax.gin_utils: flags, parsing with recorded sources, one-line errors, config.gin."""
import os
import sys
import textwrap
import uuid

import gin
import pytest

from plug_jax import gin_utils as gu
from plug_jax.gin_utils import GinConfigError

PKG = f"gut_{uuid.uuid4().hex[:8]}"   # toy package, unique so gin selectors never collide

LOOP_PY = '''
import gin


class UserError(RuntimeError):
    pass


def fit(*, model_dir, steps=1, data=None, mesh=None, lr=0.1, optimizer=None):
    return dict(model_dir=model_dir, steps=steps, data=data, mesh=mesh, lr=lr,
                optimizer=optimizer)


class Data:
    def __init__(self, name='x', split='train', length=8):
        self.name, self.split, self.length = name, split, length


def make_mesh(shape=(1,), rules='dp'):
    return tuple(shape), rules


def needs_req(x=gin.REQUIRED):
    return x


def kwonly(*, need):
    return need


def fails(kind='bug'):
    if kind == 'bug':
        raise KeyError('genuine', 3)
    raise UserError('batch size 12 is not a multiple of 8; fix: use 16')
'''

PLAIN_PY = '''
import gin


@gin.configurable
def plain_fn(a=1, b=2, c=None):
    return a, b, c
'''

BASE_GIN = f'''
# the run contract
from __gin__ import dynamic_registration
import {PKG}.loop as loop

MODEL_DIR = %gin.REQUIRED
STEPS = 10
PROMPTS = %gin.REQUIRED
MESH = @loop.make_mesh()

loop.fit:
  model_dir = %MODEL_DIR
  steps = %STEPS
  data = @train/loop.Data()
  mesh = %MESH

train/loop.Data.split = 'train'
loop.make_mesh.rules = 'fsdp'
loop.needs_req.x = %PROMPTS
'''

EXP_GIN = f'''
from __gin__ import dynamic_registration
import {PKG}.loop as loop

include 'runs/base.gin'

STEPS = 20
loop.fit.lr = 0.5
train/loop.Data.name = 'shop'
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy package on sys.path and a search path folder with base/experiment files."""
    root = tmp_path_factory.mktemp("gin_utils")
    pkg = root / "py" / PKG
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "loop.py").write_text(LOOP_PY)
    (pkg / "plain.py").write_text(PLAIN_PY)
    cfg = root / "configs"
    (cfg / "runs").mkdir(parents=True)
    (cfg / "runs" / "base.gin").write_text(BASE_GIN)
    (cfg / "exp.gin").write_text(EXP_GIN)
    sys.path.insert(0, str(root / "py"))
    import importlib
    loop = importlib.import_module(f"{PKG}.loop")
    yield {"root": root, "cfg": str(cfg), "loop": loop}
    sys.path.remove(str(root / "py"))


@pytest.fixture(autouse=True)
def _clean_gin():
    yield
    gin.clear_config()


def line_of(path, needle):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if needle in line:
                return i
    raise AssertionError(needle)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return str(p)


def fit(toy):
    return gin.get_configurable(toy["loop"].fit)


def one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and "fix:" in msg, msg
    return msg


# --- flags ------------------------------------------------------------------------------

def test_split_gin_flags_and_auto_quoting():
    argv = ["--gin_file=a.gin", "--gin.MODEL_DIR=/tmp/x", "--gin.STEPS=5", "--gin.X=@foo()",
            "--gin.S='a'", "--gin.M=%OTHER", "--gin.D={'targets': 64}", "--gin.L=[1, 2]",
            "--gin.F=1e-3", "--gin.B=True", "--gin.N=None", "--gin.NAME=gpt3_shoplm_zh_v1",
            "--gin.U=gs://bucket/run", "--gin.E=", "--gin.loop.fit.lr", "0.5", "--print_config",
            "--gin.BAD=[1, 2", "--", "--gin.AFTER=1"]
    bindings, rest = gu.split_gin_flags(argv)
    assert bindings == [
        "MODEL_DIR='/tmp/x'", "STEPS=5", "X=@foo()", "S='a'", "M=%OTHER",
        "D={'targets': 64}", "L=[1, 2]", "F=1e-3", "B=True", "N=None",
        "NAME='gpt3_shoplm_zh_v1'", "U='gs://bucket/run'", "E=''", "loop.fit.lr=0.5",
        "BAD=[1, 2"]   # looks like gin syntax: left for gin to report, not quoted
    assert rest == ["--gin_file=a.gin", "--print_config", "--", "--gin.AFTER=1"]
    # mistakes pass through split_gin_flags and are reported by parse_gin (inside the
    # command line's error handling)
    bindings, _ = gu.split_gin_flags(["--gin.SHUFFLE=false", "--gin.STEPS"])
    assert bindings == ["SHUFFLE=false", "STEPS"]
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([], bindings[:1], [])
    assert "--gin.SHUFFLE=False" in one_line(e) and "'false'" in str(e.value)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([], bindings[1:], [])
    assert "--gin.STEPS has no value" in one_line(e)


def test_auto_quoted_flags_parse_to_the_intended_types(toy):
    bindings, _ = gu.split_gin_flags(["--gin.MODEL_DIR=/tmp/x", "--gin.STEPS=5",
                                      "--gin.PROMPTS=['a']"])
    gu.parse_gin(["exp.gin"], bindings, [toy["cfg"]])
    out = gu.call_with_gin_errors(fit(toy))
    assert out["model_dir"] == "/tmp/x" and out["steps"] == 5


# --- parsing and sources -----------------------------------------------------------------

def test_files_includes_flags_order_and_sources(toy):
    base = os.path.join(toy["cfg"], "runs", "base.gin")
    exp = os.path.join(toy["cfg"], "exp.gin")
    sources = gu.parse_gin(["exp.gin"], ["MODEL_DIR='/tmp/run'", "STEPS=30"], [toy["cfg"]])
    out = gu.call_with_gin_errors(fit(toy))
    assert out["model_dir"] == "/tmp/run"
    assert out["steps"] == 30                     # flag beats experiment beats base
    assert out["lr"] == 0.5
    assert (out["data"].name, out["data"].split) == ("shop", "train")
    assert out["mesh"] == ((1,), "fsdp")
    assert sources.source_of("STEPS") == "--gin.STEPS flag"
    assert sources.history("STEPS") == [f"runs/base.gin:{line_of(base, 'STEPS = 10')}",
                                        f"exp.gin:{line_of(exp, 'STEPS = 20')}",
                                        "--gin.STEPS flag"]
    assert sources.source_of("MODEL_DIR") == "--gin.MODEL_DIR flag"
    # binding keys: full selector, partial selector, scoped, block lines
    full = f"{PKG}.loop.fit.model_dir"
    assert sources.source_of(full) == f"runs/base.gin:{line_of(base, 'model_dir = %MODEL_DIR')}"
    assert sources.source_of("loop.fit.lr") == f"exp.gin:{line_of(exp, 'loop.fit.lr')}"
    assert sources.source_of("train/loop.Data.name") == f"exp.gin:{line_of(exp, 'Data.name')}"
    assert sources.source_of("train/Data.split") == f"runs/base.gin:{line_of(base, 'Data.split')}"
    assert sources.source_of("loop.fit.optimizer") is None
    assert [name for name, _ in sources.files] == ["exp.gin", "runs/base.gin"]


def test_format_lists_every_binding_with_value_and_source(toy):
    sources = gu.parse_gin(["exp.gin"], ["MODEL_DIR='/tmp/run'"], [toy["cfg"]])
    text = sources.format()
    lines = [x for x in text.splitlines() if not x.startswith("#")]
    n_bindings = sum(len(v) for v in gin.config._CONFIG.values())
    assert len(lines) == n_bindings and all("  # set in " in x for x in lines)
    assert "MODEL_DIR = '/tmp/run'" in text and "# set in --gin.MODEL_DIR flag" in text
    assert "PROMPTS = %gin.REQUIRED" in text
    assert "STEPS = 20" in text and "# set in exp.gin:" in text
    assert f"train/{PKG}.loop.Data.name = 'shop'" in text
    assert f"{PKG}.loop.fit.data = @train/loop.Data()" in text
    assert "# set in runs/base.gin:" in text
    first_param = next(i for i, x in enumerate(lines) if "." in x.split(" = ")[0])
    assert all("." not in x.split(" = ")[0] for x in lines[:first_param])   # macros first
    assert text == sources.format()                                           # stable


def test_plain_configurable_style(toy, tmp_path):
    path = write(tmp_path, "plain.gin", f"""
        import {PKG}.plain
        {PKG}.plain.plain_fn.a = 10
        plain_fn.b = %B
        B = 'bee'
    """)
    sources = gu.parse_gin([path], ["plain_fn.c=3"], [])
    plain = sys.modules[f"{PKG}.plain"]
    assert gu.call_with_gin_errors(plain.plain_fn) == (10, "bee", 3)
    assert sources.source_of("plain_fn.a") == f"{path}:{line_of(path, 'plain_fn.a')}"
    assert sources.source_of("B") == f"{path}:{line_of(path, 'B =')}"
    assert sources.source_of("plain_fn.c") == "--gin.plain_fn.c flag"


# --- REQUIRED values ---------------------------------------------------------------------

def test_required_macro_filled_by_flag(toy):
    gu.parse_gin(["exp.gin"], ["MODEL_DIR='/tmp/filled'"], [toy["cfg"]])
    assert gu.call_with_gin_errors(fit(toy))["model_dir"] == "/tmp/filled"


def test_missing_required_macro_is_one_line_naming_macro_user_and_flag(toy):
    base = os.path.join(toy["cfg"], "runs", "base.gin")
    gu.parse_gin(["exp.gin"], [], [toy["cfg"]])   # parses and finalizes fine
    with pytest.raises(GinConfigError) as e:
        gu.call_with_gin_errors(fit(toy))
    msg = one_line(e)
    assert msg.startswith("missing required gin value MODEL_DIR ")
    assert f"needed by {PKG}.loop.fit.model_dir" in msg
    assert f"runs/base.gin:{line_of(base, 'MODEL_DIR = %gin.REQUIRED')}" in msg
    assert "--gin.MODEL_DIR=..." in msg
    assert "PROMPTS" not in msg       # declared REQUIRED too, but fit does not need it


def test_unused_required_macro_does_not_block_and_caller_args_win(toy):
    gu.parse_gin(["exp.gin"], [], [toy["cfg"]])
    assert gu.call_with_gin_errors(fit(toy), model_dir="/tmp/caller")["model_dir"] == "/tmp/caller"
    with pytest.raises(GinConfigError) as e:      # needs_req.x = %PROMPTS
        gu.call_with_gin_errors(gin.get_configurable(toy["loop"].needs_req))
    assert "PROMPTS" in one_line(e) and "--gin.PROMPTS=..." in str(e.value)


def test_required_detected_through_scoped_reference_and_plain_wrapper(toy, tmp_path):
    extra = write(tmp_path, "extra.gin", f"""
        from __gin__ import dynamic_registration
        import {PKG}.loop as loop
        LENGTH = %gin.REQUIRED
        train/loop.Data.length = %LENGTH
    """)
    gu.parse_gin(["exp.gin", extra], ["MODEL_DIR='/m'"], [toy["cfg"]])
    with pytest.raises(GinConfigError) as e:
        gu.call_with_gin_errors(fit(toy))
    assert f"LENGTH (needed by train/{PKG}.loop.Data.length" in one_line(e)
    # fn that is not itself a configurable: caught after gin handed out the REQUIRED value
    with pytest.raises(GinConfigError) as e:
        gu.call_with_gin_errors(lambda: fit(toy)()["data"].length + 1)
    assert "LENGTH" in one_line(e) and "--gin.LENGTH=..." in str(e.value)


def test_parameter_bound_to_required_and_signature_required(toy, tmp_path):
    path = write(tmp_path, "p.gin", f"""
        from __gin__ import dynamic_registration
        import {PKG}.loop as loop
        loop.fit.model_dir = %gin.REQUIRED
        FUNCTIONS = [@loop.needs_req, @loop.kwonly]   # registers them, binds nothing
    """)
    gu.parse_gin([path], [], [])
    with pytest.raises(GinConfigError) as e:
        gu.call_with_gin_errors(fit(toy))
    assert f"{PKG}.loop.fit.model_dir" in one_line(e)
    with pytest.raises(GinConfigError) as e:      # def needs_req(x=gin.REQUIRED), unbound
        gu.call_with_gin_errors(gin.get_configurable(toy["loop"].needs_req))
    assert "needs_req.x" in one_line(e)
    with pytest.raises(GinConfigError) as e:      # def kwonly(*, need), unbound
        gu.call_with_gin_errors(gin.get_configurable(toy["loop"].kwonly))
    assert "kwonly.need" in one_line(e)


# --- parse errors ------------------------------------------------------------------------

def test_unknown_parameter_in_file_and_flag(toy, tmp_path):
    path = write(tmp_path, "bad.gin", f"""
        from __gin__ import dynamic_registration
        import {PKG}.loop as loop

        loop.fit:
          steps = 3
          lrr = 0.1
    """)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [])
    msg = one_line(e)
    assert "'lrr'" in msg and f"{path}:{line_of(path, 'lrr')}" in msg and "did you mean lr" in msg
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin(["exp.gin"], ["loop.fit.no_such_arg=3"], [toy["cfg"]])
    msg = one_line(e)
    assert "'no_such_arg'" in msg and "--gin.loop.fit.no_such_arg flag" in msg


def test_unknown_configurable(toy, tmp_path):
    path = write(tmp_path, "bad.gin", f"""
        from __gin__ import dynamic_registration
        import {PKG}.loop as loop
        loop.fitt.steps = 3
    """)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [])
    msg = one_line(e)
    assert "loop.fitt" in msg and f"{path}:{line_of(path, 'fitt')}" in msg
    assert "did you mean fit" in msg and "check the spelling or the import" in msg
    path = write(tmp_path, "noimport.gin", """
        from __gin__ import dynamic_registration
        optim.adamw.b1 = 0.9
    """)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [])
    assert "'optim' is not imported" in one_line(e) and f"{path}:" in str(e.value)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([], ["nothing_like_this_zz.param=1"], [])
    msg = one_line(e)
    assert "nothing_like_this_zz" in msg and "--gin.nothing_like_this_zz.param flag" in msg
    path = write(tmp_path, "badref.gin", f"""
        from __gin__ import dynamic_registration
        import {PKG}.loop as loop
        loop.fit.mesh = @loop.no_mesh()
    """)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [])
    assert "no_mesh" in one_line(e) and f"{path}:{line_of(path, 'no_mesh')}" in str(e.value)


def test_undefined_macro_is_reported_at_parse(toy, tmp_path):
    path = write(tmp_path, "m.gin", f"""
        from __gin__ import dynamic_registration
        import {PKG}.loop as loop
        loop.fit.steps = %NOT_SET
    """)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [])
    msg = one_line(e)
    assert "%NOT_SET" in msg and f"{path}:{line_of(path, 'NOT_SET')}" in msg
    assert "--gin.NOT_SET=..." in msg


def test_missing_file_names_search_paths(toy, tmp_path):
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin(["runs/nope.gin"], [], [toy["cfg"], str(tmp_path)])
    msg = one_line(e)
    assert "runs/nope.gin" in msg and toy["cfg"] in msg and str(tmp_path) in msg
    path = write(tmp_path, "inc.gin", "include 'missing/other.gin'\n")
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [toy["cfg"]])
    assert "missing/other.gin" in one_line(e) and f"included from {path}:1" in str(e.value)


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "syn.gin", """
        A = 1
        B = = 2
    """)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [])
    assert f"syntax error in {path}:{line_of(path, 'B =')}" in one_line(e)
    path = write(tmp_path, "open.gin", "A = [1, 2\n")
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [])
    assert f"syntax error in {path}" in one_line(e)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([], ["BAD=[1, 2"], [])
    assert "--gin.BAD flag" in one_line(e)


def test_failing_import_names_module_and_line(tmp_path):
    path = write(tmp_path, "imp.gin", """
        from __gin__ import dynamic_registration
        import no_such_module_zz.sub as sub
    """)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [])
    msg = one_line(e)
    assert "no_such_module_zz" in msg and f"{path}:{line_of(path, 'import no_such')}" in msg


# --- calling -----------------------------------------------------------------------------

def test_non_gin_exception_propagates_unchanged(toy, tmp_path):
    path = write(tmp_path, "f.gin", f"""
        from __gin__ import dynamic_registration
        import {PKG}.loop as loop
        loop.fails.kind = %KIND
        KIND = 'bug'
    """)
    gu.parse_gin([path], [], [])
    fails = gin.get_configurable(toy["loop"].fails)
    with pytest.raises(KeyError) as e:
        gu.call_with_gin_errors(fails)
    assert type(e.value) is KeyError and e.value.args == ("genuine", 3)
    assert not isinstance(e.value, GinConfigError)
    assert any("fails" in n for n in getattr(e.value, "__notes__", []))   # gin's context kept
    gu.parse_gin([path], ["KIND='user'"], [])
    with pytest.raises(toy["loop"].UserError) as e:
        gu.call_with_gin_errors(gin.get_configurable(toy["loop"].fails))
    assert str(e.value) == "batch size 12 is not a multiple of 8; fix: use 16"
    with pytest.raises(ZeroDivisionError):
        gu.call_with_gin_errors(lambda: 1 / 0)


# --- operative config --------------------------------------------------------------------

def test_write_operative_config_parses_back(toy, tmp_path):
    sources = gu.parse_gin(["exp.gin"], ["MODEL_DIR='/tmp/op'", "STEPS=7"], [toy["cfg"]])
    model_dir = str(tmp_path / "run")
    early = gu.write_operative_config(model_dir, sources)   # before any call: parsed config
    assert "PROMPTS = %gin.REQUIRED" in open(early).read()
    gu.call_with_gin_errors(fit(toy))
    path = gu.write_operative_config(model_dir, sources)
    assert path == os.path.join(model_dir, "config.gin")
    assert os.listdir(model_dir) == ["config.gin"]           # no temporary file left
    text = open(path).read()
    assert "STEPS = 7" in text and "'/tmp/op'" in text and "# flag: --gin.STEPS=7" in text
    assert "PROMPTS" not in text                             # not used by fit
    gin.clear_config()
    gin.parse_config_file(path)
    assert gu.call_with_gin_errors(fit(toy))["steps"] == 7


def test_default_search_paths_finds_repo_gin_configs():
    paths = gu.default_search_paths()
    assert paths and all(os.path.isdir(p) for p in paths)
    assert paths[0].endswith("gin_configs")
