"""The gin layer of the t5x-style command line (see docs/gin.md).

``plug-train --gin_file=FILE --gin.NAME=VALUE --gin_search_paths=DIR,DIR [--print_config]``

* :func:`split_gin_flags` pulls ``--gin.NAME=VALUE`` flags out of ``argv``.
* :func:`parse_gin` clears gin, parses the files (and their ``include``\\ s) in order and
  then the flag bindings, recording for every binding statement where it was set
  (``runs/pretrain.gin:33`` or ``--gin.MODEL_DIR flag``) in a :class:`ConfigSources`.
* :func:`call_with_gin_errors` runs a configured function and turns gin's call-time
  problems (above all a ``%gin.REQUIRED`` value nobody filled in) into one-line
  :class:`GinConfigError` s.
* :func:`check_unused_macros` (``parse_gin(..., check_unused=True)``) refuses a macro set
  by a ``--gin.`` flag or a user's gin file that nothing uses (a typo such as
  ``--gin.TRAIN_STEP=3``).
* :func:`write_operative_config` writes ``MODEL_DIR/config.gin`` atomically.

Every user mistake surfaces as a :class:`GinConfigError` whose message is one line naming
the problem, where it is, and the fix. Anything that is not a configuration problem
propagates as the original exception.

Parsing is done here rather than by ``gin.parse_config_files_and_bindings`` so that each
statement's file and line can be recorded and errors can name them; it follows
``gin.config.parse_config`` statement for statement (one parse context per file, so
``from __gin__ import dynamic_registration`` and ``import x as y`` stay file-local, as
in gin) and binds through gin's own ``bind_parameter``. It relies on a few private names
of gin-config 0.5.0 (pinned in setup.py): ``_parse_scope``, ``_CONFIG``, ``_IMPORTS``,
``_OPERATIVE_CONFIG``, ``_FINALIZE_HOOKS``, ``_inverse_lookup``.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import os
import re
import sys
import tempfile
import tokenize
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gin
from gin import config as gin_config
from gin import config_parser

__all__ = [
    "GinConfigError", "ConfigSources", "Source", "default_search_paths", "split_gin_flags",
    "gin_value", "parse_gin", "check_unused_macros", "used_macros", "call_with_gin_errors",
    "write_operative_config", "unwrap_gin_exception", "MACROS_READ_BY_CODE",
]

GIN_FLAG_PREFIX = "--gin."
CONFIG_FILE_NAME = "config.gin"
_REQUIRED_NAME = "gin.REQUIRED"
_MACRO_SELECTOR = "gin.macro"
# Macros that Python code reads with gin.query_parameter instead of a binding using them
# (plug_jax.trainer.generation_eval.GIN_SWITCH); check_unused_macros counts them as used.
MACROS_READ_BY_CODE = frozenset({"EVAL_GENERATION"})


class GinConfigError(ValueError):
    """A user error in the gin configuration; ``str(e)`` is one line with the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# --------------------------------------------------------------------------------------
# Search paths and flags
# --------------------------------------------------------------------------------------

def default_search_paths() -> list[str]:
    """The installed ``gin_configs/`` folder (existing folders only).

    A source checkout / editable install uses the repository's top-level ``gin_configs/``
    next to the ``plug_jax/`` package; otherwise ``<sys.prefix>/share/plug_jax/gin_configs``
    (a non-editable install that ships the files as data_files). Empty if neither exists.
    """
    return _project_config_dirs()[:1]


def _project_config_dirs() -> list[str]:
    """Every folder that holds the project's own gin files (see default_search_paths)."""
    candidates = [Path(__file__).resolve().parents[1] / "gin_configs",
                  Path(sys.prefix) / "share" / "plug_jax" / "gin_configs"]
    return [str(c) for c in candidates if c.is_dir()]


class _AnyReference(config_parser.ParserDelegate):
    """Parser delegate that accepts any ``@ref`` / ``%macro`` without looking it up."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return ("@", scoped_configurable_name, evaluate)

    def macro(self, macro_name):
        return ("%", macro_name)


def _is_gin_value(text: str) -> bool:
    """True if ``text`` is exactly one gin value (literal, container, @ref, %macro)."""
    if not text.strip() or "\n" in text:
        return False
    try:
        parser = config_parser.ConfigParser(text.strip(), _AnyReference())
        parser.parse_value()
        return parser.current_token.type in (tokenize.NEWLINE, tokenize.ENDMARKER)
    except Exception:  # noqa: BLE001 - any tokenizer/parser failure means "not a value"
        return False


_GIN_SYNTAX_START = tuple("[({@%'\"")
_WRONG_CASE = {"true": "True", "false": "False", "none": "None", "null": "None"}


def gin_value(value: str, flag: str = "--gin.NAME") -> str:
    """The gin text for a ``--gin.NAME=VALUE`` flag value (the auto-quoting rule).

    * VALUE that is a gin value (``5``, ``1e-3``, ``True``, ``None``, ``'a'``,
      ``[1, 2]``, ``{'targets': 64}``, ``@foo()``, ``%MACRO``) is used as written;
    * VALUE that starts like gin syntax (``[ ( { @ % ' "``) but does not parse is also
      used as written, so gin reports the syntax error instead of silently getting a string;
    * ``true``/``false``/``none``/``null`` in another spelling than Python's are refused
      (say ``False`` for the boolean or ``'false'`` for the string);
    * anything else (``/tmp/run``, ``gpt3_shoplm_zh_v1``, ``gs://b/x``, an empty value)
      becomes a Python string literal: ``'/tmp/run'``.
    """
    stripped = value.strip()
    if _is_gin_value(stripped):
        return stripped
    if stripped.lower() in _WRONG_CASE:
        raise GinConfigError(
            f"{flag}={value} is ambiguous; fix: write {flag}={_WRONG_CASE[stripped.lower()]} "
            f"for the Python value or {flag}=\"'{stripped}'\" for the string")
    if stripped.startswith(_GIN_SYNTAX_START):
        return stripped
    return repr(value)


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pulls ``--gin.NAME=VALUE`` (or ``--gin.NAME VALUE``) flags out of ``argv``.

    Returns ``(bindings, rest)``: bindings as gin statements ``"NAME=VALUE"`` in flag
    order (later ones win), with VALUE run through :func:`gin_value` (auto-quoting), and
    the other arguments unchanged for argparse. Everything after a bare ``--`` is left alone.
    Never raises: a flag without a value or with an ambiguous ``false`` is passed on as
    written and :func:`parse_gin` reports it as a GinConfigError.
    """
    bindings: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if not arg.startswith(GIN_FLAG_PREFIX):
            rest.append(arg)
            i += 1
            continue
        body = arg[len(GIN_FLAG_PREFIX):]
        if "=" in body:
            name, value = body.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            name, value = body, args[i + 1]
            i += 1
        else:  # no value: left for parse_gin to report (it runs inside the CLI's error handling)
            bindings.append(body)
            i += 1
            continue
        name = name.strip()
        try:
            bindings.append(f"{name}={gin_value(value, GIN_FLAG_PREFIX + name)}")
        except GinConfigError:  # true/false/none: kept as written, parse_gin explains
            bindings.append(f"{name}={value.strip()}")
        i += 1
    return bindings, rest


def _check_flag_binding(binding: str) -> None:
    """The flag mistakes split_gin_flags leaves in place, as one-line errors."""
    if "\n" in binding:
        return
    if "=" not in binding:
        flag = GIN_FLAG_PREFIX + binding.strip()
        raise GinConfigError(f"flag {flag} has no value; fix: write {flag}=VALUE")
    name, value = (x.strip() for x in binding.split("=", 1))
    if not name:
        raise GinConfigError(f"flag --gin.={value} names no gin binding; fix: write "
                             "--gin.NAME=VALUE")
    gin_value(value, GIN_FLAG_PREFIX + name)   # raises for true/false/none/null


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Source:
    """Where one binding statement was set."""
    where: str                 # "runs/pretrain.gin:33" or "--gin.MODEL_DIR flag"
    path: str | None = None    # resolved file path (None for flags)
    line: int | None = None

    def __str__(self) -> str:
        return self.where


# (scope, complete selector, parameter); a macro NAME is (NAME, "gin.macro", "value")
Key = tuple[str, str, str]


def _key_str(scope: str, selector: str, param: str) -> str:
    if selector == _MACRO_SELECTOR:
        return scope
    return f"{scope}/{selector}.{param}" if scope else f"{selector}.{param}"


def _format_value(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not break --print_config
        return f"<{type(value).__name__}>"


class ConfigSources:
    """Where each gin binding was set, recorded by :func:`parse_gin` (last writer wins)."""

    def __init__(self, search_paths: Sequence[str] = ()):
        self.search_paths: list[str] = list(search_paths)
        self.files: list[tuple[str, str]] = []   # (name as written, resolved path), parse order
        self.bindings: list[str] = []            # the flag bindings, in order
        self.required_macros: set[str] = set()   # macros ever set to %gin.REQUIRED
        self._by_key: dict[Key, Source] = {}
        self._history: dict[Key, list[Source]] = {}

    # -- recording -------------------------------------------------------------------
    def _record(self, key: Key, source: Source) -> None:
        self._by_key[key] = source
        self._history.setdefault(key, []).append(source)

    # -- queries ---------------------------------------------------------------------
    def _resolve_key(self, key: str) -> Key | None:
        key = key.strip()
        if key.startswith("%"):
            key = key[1:]
        scope, selector, param = config_parser.parse_binding_key(key)
        if not param:  # a macro, maybe scoped
            name = f"{scope}/{selector}" if scope else selector
            k = (name, _MACRO_SELECTOR, "value")
            return k if k in self._by_key else None
        exact = (scope, selector, param)
        if exact in self._by_key:
            return exact
        matches = [k for k in self._by_key
                   if k[0] == scope and k[2] == param and k[1].endswith("." + selector)]
        if len(matches) > 1:
            raise KeyError(f"ambiguous gin key {key!r}: matches "
                           + ", ".join(_key_str(*m) for m in matches))
        return matches[0] if matches else None

    def source(self, key: str) -> Source | None:
        k = self._resolve_key(key)
        return self._by_key.get(k) if k else None

    def source_of(self, key: str) -> str | None:
        """Where ``key`` (``"scope/module.fn.param"``, a partial selector, or ``"MACRO"``)
        was last set: ``"path/file.gin:LINE"`` or ``"--gin.NAME flag"``; None if never."""
        s = self.source(key)
        return s.where if s else None

    def history(self, key: str) -> list[str]:
        """Every place ``key`` was set, in parse order (the last one won)."""
        k = self._resolve_key(key)
        return [s.where for s in self._history.get(k, [])] if k else []

    def source_for(self, scope: str, selector: str, param: str) -> Source | None:
        return self._by_key.get((scope, selector, param))

    def format(self) -> str:
        """Every binding in gin's current config with its value and where it was set.

        One binding per line, ``KEY = VALUE  # set in WHERE``; macros first (by name), then
        parameters by configurable, scope and name. What ``--print_config`` prints.
        """
        lines = [f"# gin file: {name}" + (f" ({path})" if path != name else "")
                 for name, path in self.files]
        macros, params = [], []
        for (scope, selector), values in gin_config._CONFIG.items():
            for param, value in values.items():
                key = (scope, selector, param)
                entry = (_key_str(*key), _format_value(value), self._by_key.get(key))
                if selector == _MACRO_SELECTOR:
                    macros.append(((scope,), entry))
                else:
                    params.append(((selector, scope, param), entry))
        rows = [e for _, e in sorted(macros)] + [e for _, e in sorted(params)]
        width = min(max((len(f"{k} = {v}") for k, v, _ in rows), default=0), 60)
        for k, v, src in rows:
            text = f"{k} = {v}"
            where = src.where if src else "python code (not a gin file or flag)"
            lines.append(f"{text.ljust(width)}  # set in {where}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ConfigSources({len(self._by_key)} bindings, files={[f for f, _ in self.files]})"


_last_sources: ConfigSources | None = None


def last_sources() -> ConfigSources | None:
    """The :class:`ConfigSources` of the latest :func:`parse_gin` call in this process."""
    return _last_sources


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------

def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def _parameter_names(configurable_) -> list[str] | None:
    target = configurable_.wrapped
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    return [p.name for p in sig.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]


class _Parser:
    """Parses gin files and bindings into gin's global config, recording sources."""

    def __init__(self, sources: ConfigSources):
        self.sources = sources
        self.stack: list[str] = []   # resolved paths being parsed (include cycles)

    # -- files -------------------------------------------------------------------------
    def _candidates(self, name: str) -> list[str]:
        if os.path.isabs(name):
            return [name]
        return [name] + [os.path.join(p, name) for p in self.sources.search_paths]

    def _searched(self, name: str) -> str:
        if os.path.isabs(name):
            return name
        return ", ".join([os.getcwd()] + [os.path.abspath(p) for p in self.sources.search_paths])

    def parse_file(self, name: str, included_from: str | None = None) -> None:
        path = next((c for c in self._candidates(name) if os.path.isfile(c)), None)
        origin = f" (included from {included_from})" if included_from else ""
        if path is None:
            raise GinConfigError(
                f"gin file not found: {name}{origin}; searched: {self._searched(name)}; "
                "fix: check the file name, or add its folder with --gin_search_paths=DIR")
        real = os.path.realpath(path)
        if real in self.stack:
            cycle = " -> ".join([os.path.basename(p) for p in self.stack] + [name])
            raise GinConfigError(f"gin include cycle: {cycle}{origin}; fix: remove one of the "
                                 "include statements")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise GinConfigError(f"cannot read gin file {path}{origin}: {e}; fix: check the "
                                 "file's permissions and that it is UTF-8 text") from e
        self.sources.files.append((name, path))
        self.stack.append(real)
        try:
            self.parse_text(text, display=name, path=path)
        finally:
            self.stack.pop()

    # -- one file or binding string ------------------------------------------------------
    def parse_text(self, text: str, display: str | None, path: str | None = None) -> None:
        """``display`` None means flag bindings (each statement is named by its key)."""
        stream = io.StringIO(text)
        stream.name = path or display or "--gin flags"
        parser = None

        def where(line: int | None, stmt_key: str | None = None) -> Source:
            if display is None:
                flag = stmt_key or text.split("=", 1)[0].strip()
                return Source(f"--gin.{flag} flag")
            return Source(f"{display}:{line}" if line else display, path, line)

        with gin_config._parse_scope() as ctx:
            while True:
                start = parser.current_token.start[0] if parser else 1
                try:
                    if parser is None:  # reads the first token: may already fail
                        parser = config_parser.ConfigParser(stream, gin_config.ParserDelegate())
                    statement = next(parser)
                except StopIteration:
                    break
                except GinConfigError:
                    raise
                except SyntaxError as e:
                    msg = getattr(e, "msg", None) or str(e)
                    near = (e.text or "").strip()
                    near = f" near `{near}`" if near and display is not None else ""
                    raise GinConfigError(
                        f"gin syntax error in {where(e.lineno)}: {msg.splitlines()[0]}{near}; "
                        "fix: correct the statement (NAME = VALUE, a `configurable:` block, "
                        "import or include)") from e
                except tokenize.TokenError as e:
                    what = ("a bracket or string opened in the statement starting here"
                            if display is not None else "a bracket or string")
                    raise GinConfigError(
                        f"gin syntax error in {where(start)}: {e.args[0]} ({what} is never "
                        "closed); fix: close it") from e
                except (ValueError, AttributeError, NameError, KeyError) as e:
                    # A @reference or %macro in a value that gin could not resolve.
                    line = parser.current_token.start[0] if parser else None
                    raise GinConfigError(
                        f"unknown gin reference in {where(line)}: {_reason(e)}; fix: check "
                        "the spelling or the import in the gin file") from e
                self._statement(ctx, statement, where)
            gin_config._IMPORTS.update(ctx.imports)

    def _statement(self, ctx, statement, where: Callable[..., Source]) -> None:
        loc = statement.location
        if isinstance(statement, config_parser.BindingStatement):
            scope, selector, arg_name, value, _ = statement
            if not arg_name:  # a macro: NAME = VALUE
                name = f"{scope}/{selector}" if scope else selector
                key = (name, _MACRO_SELECTOR, "value")
                src = where(loc.line_num, name)
            else:
                key = (scope, selector, arg_name)
                src = where(loc.line_num, _key_str(scope, selector, arg_name))
            configurable_ = self._lookup(ctx, key[1], src)
            try:
                pbk = gin_config.ParsedBindingKey.parse(key)
            except (ValueError, KeyError) as e:
                msg = _first_line(e)
                if "doesn't have a parameter named" in msg:
                    names = _parameter_names(configurable_) or []
                    listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
                    raise GinConfigError(
                        f"unknown gin parameter {arg_name!r} of {configurable_.selector} "
                        f"({src}); fix: check the spelling; {_suggest(arg_name, names)}"
                        f"its parameters are: {listed or '(none)'}") from e
                raise GinConfigError(f"bad gin binding {_key_str(*key)} ({src}): {msg}; fix: "
                                     "check the gin file") from e
            gin.bind_parameter(pbk, value)
            self.sources._record(pbk.scope_selector_arg, src)
            if not arg_name and any(_is_required(r) for r in _iter_refs(value)):
                self.sources.required_macros.add(key[0])   # a contract: counts as used
        elif isinstance(statement, config_parser.BlockDeclaration):
            self._lookup(ctx, statement.selector, where(loc.line_num, statement.selector))
        elif isinstance(statement, config_parser.ImportStatement):
            self._import(ctx, statement, where(loc.line_num, statement.module))
        elif isinstance(statement, config_parser.IncludeStatement):
            if not self.stack:
                raise GinConfigError(f"`include {statement.filename!r}` is not allowed in a --gin "
                                     "flag; fix: pass the file with --gin_file instead")
            self.parse_file(statement.filename, included_from=str(where(loc.line_num)))
        else:  # pragma: no cover - gin has no other statement types
            raise AssertionError(f"unknown gin statement {statement!r}")

    def _lookup(self, ctx, selector: str, src: Source):
        """The configurable named ``selector`` in this file's context, or GinConfigError."""
        fix = "fix: check the spelling or the import in the gin file"
        try:
            configurable_ = ctx.get_configurable(selector)
        except NameError as e:
            root = selector.split(".")[0]
            raise GinConfigError(
                f"unknown gin configurable {selector} ({src}): {root!r} is not imported in "
                f"this file (it uses dynamic registration); fix: add `import MODULE as {root}` "
                "to the gin file or check the spelling") from e
        except AttributeError as e:
            raise GinConfigError(
                f"unknown gin configurable {selector} ({src}): {_reason(e)}; {fix}") from e
        except KeyError as e:  # ambiguous partial selector
            raise GinConfigError(f"ambiguous gin name {selector} ({src}): {_first_line(e)}; fix: "
                                 "use a longer name (more of the module path)") from e
        except (ValueError, TypeError) as e:
            raise GinConfigError(f"cannot configure {selector} ({src}): {_first_line(e)}; "
                                 f"{fix}") from e
        if not configurable_:
            raise GinConfigError(
                f"unknown gin configurable {selector} ({src}): nothing of that name is "
                f"registered with gin; {fix} (files without `from __gin__ import "
                "dynamic_registration` need the module imported and decorated with "
                "@gin.configurable)")
        return configurable_

    def _import(self, ctx, statement, src: Source) -> None:
        module = statement.module
        try:
            ctx.process_import(statement)
        except ImportError as e:
            raise GinConfigError(
                f"gin file {src} imports {module}, which cannot be imported "
                f"({type(e).__name__}: {_first_line(e)}); fix: check the module name in the "
                "gin file, or install what it needs") from e
        except SyntaxError as e:
            if not module.startswith("__gin__"):
                raise  # a Python syntax error inside the imported module: a bug, not config
            raise GinConfigError(f"bad gin import `{statement.format()}` ({src}): "
                                 f"{getattr(e, 'msg', e)}; fix: put `from __gin__ import "
                                 "dynamic_registration` first and without `as`") from e
        except ValueError as e:
            raise GinConfigError(f"bad gin import `{statement.format()}` ({src}): "
                                 f"{_first_line(e)}; fix: use another alias") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError) and text.startswith(("'", '"')) and text.endswith(("'", '"')):
        text = text[1:-1]
    return text.splitlines()[0].strip().rstrip(".")


def _reason(e: BaseException) -> str:
    """gin's resolution error, shortened; with a "did you mean" for a module attribute."""
    m = re.search(r"<module '([^']+)'.*?> has no attribute (\w+)", str(e))
    if not m:
        return _first_line(e)
    module, attr = m.groups()
    names = [n for n in dir(sys.modules.get(module)) if not n.startswith("_")]
    hint = _suggest(attr, names).replace("? ", "?").strip()
    return f"module {module} has no attribute {attr}" + (f" ({hint})" if hint else "")


def _iter_refs(value: Any) -> Iterator[Any]:
    """Every gin ConfigurableReference inside a (nested) binding value."""
    if isinstance(value, gin_config.ConfigurableReference):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _iter_refs(k)
            yield from _iter_refs(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _iter_refs(v)


def _is_macro(ref) -> bool:
    return ref.configurable.wrapped is gin_config.macro and ref.evaluate


def _is_constant(ref) -> bool:
    return ref.configurable.wrapped is gin_config._retrieve_constant


def _is_required(ref) -> bool:
    return _is_constant(ref) and "/".join(ref.scopes) == _REQUIRED_NAME


def _check_macros_defined(sources: ConfigSources) -> None:
    """Every ``%NAME`` used in a binding is set somewhere (gin's validate_macros_hook,
    but naming the binding and file that use it)."""
    for (scope, selector), values in list(gin_config._CONFIG.items()):
        for param, value in values.items():
            for ref in _iter_refs(value):
                if _is_macro(ref) and ref.config_key not in gin_config._CONFIG:
                    name = "/".join(ref.scopes)
                    src = sources.source_for(scope, selector, param)
                    at = f" at {src}" if src else ""
                    raise GinConfigError(
                        f"gin macro %{name} is used by {_key_str(scope, selector, param)}{at} "
                        f"but never set; fix: set `{name} = ...` in a gin file or pass "
                        f"--gin.{name}=...")


def used_macros(sources: ConfigSources | None = None) -> set[str]:
    """The macros the parsed config uses: a ``%NAME`` anywhere in any binding's value (any
    scope, inside containers, in another macro's value, in the parameters of a configurable
    that an ``@reference`` calls), a macro Python code reads (MACROS_READ_BY_CODE), or one
    ever set to ``%gin.REQUIRED`` (a run file's contract). ``sources``: the parse's
    :class:`ConfigSources` (default: the latest :func:`parse_gin`'s)."""
    sources = sources if sources is not None else _last_sources
    used = set(MACROS_READ_BY_CODE) | (sources.required_macros if sources else set())
    for values in list(gin_config._CONFIG.values()):
        for value in values.values():
            for ref in _iter_refs(value):
                if ref.configurable.wrapped is gin_config.macro:
                    used.add("/".join(ref.scopes))
    return used


def _is_project_file(path: str | None, project_dirs: Sequence[str]) -> bool:
    if path is None:
        return False
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, d]) == d for d in project_dirs)


def _flag_text(sources: ConfigSources, name: str) -> str:
    """The --gin flag (as gin got it, after auto-quoting) that set macro ``name`` last."""
    for binding in reversed(sources.bindings):
        if "\n" not in binding and "=" in binding and binding.split("=", 1)[0].strip() == name:
            return GIN_FLAG_PREFIX + binding.strip()
    return f"{GIN_FLAG_PREFIX}{name}=..."


def check_unused_macros(sources: ConfigSources) -> None:
    """Refuses a macro set by a ``--gin.NAME=VALUE`` flag or by a user's gin file that no
    binding uses (almost always a typo: ``--gin.TRAIN_STEP=3`` for ``TRAIN_STEPS``).

    Checked: unscoped macros (``NAME = VALUE``) set at least once by a flag or by a file
    outside the project's own ``gin_configs/`` (a ``--gin_file`` or an ``include`` of
    yours). The project's files may offer a macro that a given combination of files does
    not use (a model file's ``AUX_LOSS_FACTORS`` with runs/infer.gin alone); that every
    experiment uses all its macros is checked by tests/test_gin_typos.py instead. Used:
    see :func:`used_macros`. Raises one GinConfigError naming the flag or ``file:line``
    that set it last and the closest used macro; runs on the parsed config, before
    anything is called or written."""
    used = used_macros(sources)
    project = [os.path.realpath(d) for d in _project_config_dirs()]
    unused: list[tuple[str, Source]] = []
    for (name, selector), _ in list(gin_config._CONFIG.items()):
        if selector != _MACRO_SELECTOR or "/" in name:
            continue
        if name in used or any(u.endswith("/" + name) for u in used):
            continue
        mine = [s for s in sources._history.get((name, _MACRO_SELECTOR, "value"), [])
                if not _is_project_file(s.path, project)]
        if mine:
            unused.append((name, mine[-1]))
    if not unused:
        return
    name, src = unused[0]   # the first one set (gin keeps its config in that order)
    what = _flag_text(sources, name) if src.path is None else str(src)
    close = difflib.get_close_matches(name, sorted(used), n=1, cutoff=0.6)
    msg = f"{what} sets macro {name}, which no binding uses; "
    msg += (f"did you mean {close[0]}?" if close else
            "fix: check the spelling (--print_config lists the bindings and the macros "
            "they use) or remove it")
    if len(unused) > 1:
        msg += " (also unused: " + ", ".join(
            f"{n} at {_flag_text(sources, n) if s.path is None else s}"
            for n, s in unused[1:4]) + (", ..." if len(unused) > 4 else "") + ")"
    raise GinConfigError(msg)


def _finalize() -> None:
    """gin.finalize() without gin's ``find_missing_overrides_hook``: a ``%gin.REQUIRED``
    value is checked when something that needs it is called (call_with_gin_errors), so an
    experiment that includes the train, eval and infer run files does not need the infer
    PROMPTS to train."""
    hooks = gin_config._FINALIZE_HOOKS
    saved = list(hooks)
    hooks[:] = [h for h in hooks if h is not gin_config.find_missing_overrides_hook]
    try:
        gin.finalize()
    except (ValueError, KeyError) as e:
        raise GinConfigError(f"gin config check failed: {_first_line(e)}; fix: correct the "
                             "gin files or flags") from e
    finally:
        hooks[:] = saved


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] | None = None, finalize: bool = True,
              check_unused: bool = False) -> ConfigSources:
    """Clears gin, parses ``gin_files`` in order, then ``bindings`` (bindings win).

    ``gin_files`` and ``include`` statements are resolved like gin does: an absolute path
    as is, else against the current folder and then each of ``search_paths`` in order
    (None: :func:`default_search_paths`). The search paths are also added to gin's own
    list (``gin.add_config_file_search_path``). With ``finalize`` the config is checked
    (every used ``%MACRO`` is set) and locked; ``%gin.REQUIRED`` values are checked later,
    by :func:`call_with_gin_errors`, when something that needs them is called. With
    ``check_unused`` (the command line's choice) a macro set by a flag or a user's file
    that nothing uses is refused too (:func:`check_unused_macros`).

    Returns the :class:`ConfigSources` (also kept for :func:`call_with_gin_errors`).
    Raises :class:`GinConfigError` for a missing file, a syntax error, an unknown
    configurable, parameter or macro, or an import that fails.
    """
    global _last_sources
    if isinstance(gin_files, str) or isinstance(bindings, str):
        raise TypeError("parse_gin takes lists of gin files and bindings, not a string")
    paths = default_search_paths() if search_paths is None else [p for p in search_paths if p]
    gin.clear_config()
    for p in paths:
        if p not in gin_config._LOCATION_PREFIXES:
            gin.add_config_file_search_path(p)
    sources = ConfigSources(paths)
    _last_sources = sources
    parser = _Parser(sources)
    for name in gin_files:
        parser.parse_file(name)
    for binding in bindings:
        _check_flag_binding(binding)
        sources.bindings.append(binding)
        parser.parse_text(binding, display=None)
    if finalize:
        _check_macros_defined(sources)
    if check_unused:
        check_unused_macros(sources)
    if finalize:
        _finalize()
    return sources


# --------------------------------------------------------------------------------------
# Calling: REQUIRED values and other call-time gin errors
# --------------------------------------------------------------------------------------

def _bindings(selector: str, scopes: Sequence[str]) -> dict[str, Any]:
    """The bindings gin supplies to ``selector`` called in ``scopes`` (outer scopes first)."""
    merged: dict[str, Any] = {}
    for i in range(len(scopes) + 1):
        merged.update(gin_config._CONFIG.get(("/".join(scopes[:i]), selector), {}))
    return merged


@dataclasses.dataclass
class _Missing:
    name: str                  # macro name, or the binding key bound to %gin.REQUIRED
    is_macro: bool
    needed_by: str | None      # the parameter that (transitively) needs it
    flag: str                  # the --gin.X to pass


def _find_missing(selector: str, scopes: Sequence[str], skip: set[str]) -> tuple[list, list]:
    """REQUIRED values and undefined macros reachable from calling ``selector`` in
    ``scopes`` (following @references and %macros the way gin evaluates them)."""
    missing: list[_Missing] = []
    undefined: list[tuple[str, str]] = []
    seen: set = set()

    def visit(sel: str, scs: tuple, owner: str | None, top: bool = False) -> None:
        if (sel, scs) in seen:
            return
        seen.add((sel, scs))
        for param, value in _bindings(sel, scs).items():
            if top and param in skip:
                continue
            here = _key_str("/".join(scs), sel, param)
            needed_by = owner if sel == _MACRO_SELECTOR else here
            for ref in _iter_refs(value):
                if _is_required(ref):
                    if sel == _MACRO_SELECTOR:
                        name = "/".join(scs)
                        missing.append(_Missing(name, True, needed_by, name))
                    else:
                        missing.append(_Missing(here, False, None, here))
                elif _is_constant(ref):
                    continue
                elif _is_macro(ref):
                    if ref.config_key not in gin_config._CONFIG:
                        undefined.append(("/".join(ref.scopes), here))
                    else:
                        visit(_MACRO_SELECTOR, tuple(ref.scopes), needed_by)
                else:  # @ref: a scoped reference replaces the scope, an unscoped one inherits
                    visit(ref.configurable.selector, tuple(ref.scopes) or scs, None)

    visit(selector, tuple(scopes), None, top=True)
    uniq: dict[str, _Missing] = {}
    for m in missing:
        uniq.setdefault(m.name, m)
    return list(uniq.values()), undefined


def _missing_error(missing: Sequence[_Missing]) -> GinConfigError:
    sources = _last_sources
    parts = []
    for m in missing:
        info = []
        if m.needed_by:
            info.append(f"needed by {m.needed_by}")
        if m.is_macro and sources is not None:
            src = sources.source(m.name)
            if src:
                info.append(f"declared REQUIRED at {src}")
        parts.append(m.name + (f" ({'; '.join(info)})" if info else ""))
    plural = len(missing) > 1
    flags = " ".join(f"--gin.{m.flag}=..." for m in missing)
    return GinConfigError(
        f"missing required gin value{'s' if plural else ''} {', '.join(parts)}; fix: pass "
        f"{flags} or include a file that sets {'them' if plural else 'it'}")


def _referrers(macro_name: str) -> list[str]:
    """Bindings whose value uses ``%macro_name`` (non-macro bindings first)."""
    direct, via_macro = [], []
    for (scope, selector), values in gin_config._CONFIG.items():
        for param, value in values.items():
            for ref in _iter_refs(value):
                if _is_macro(ref) and "/".join(ref.scopes) == macro_name:
                    key = _key_str(scope, selector, param)
                    (via_macro if selector == _MACRO_SELECTOR else direct).append(key)
    return direct + via_macro


def _required_in_operative() -> set[Key]:
    """Bindings that gin has already handed out as %gin.REQUIRED (operative config)."""
    found = set()
    with gin_config._OPERATIVE_CONFIG_LOCK:
        items = [(k, dict(v)) for k, v in gin_config._OPERATIVE_CONFIG.items()]
    for (scope, selector), values in items:
        for param, value in values.items():
            if any(_is_required(r) for r in _iter_refs(value)):
                found.add((scope, selector, param))
    return found


def _missing_from_keys(keys: Sequence[Key]) -> list[_Missing]:
    out = []
    for scope, selector, param in sorted(keys):
        if selector == _MACRO_SELECTOR:
            refs = _referrers(scope)
            out.append(_Missing(scope, True, refs[0] if refs else None, scope))
        else:
            k = _key_str(scope, selector, param)
            out.append(_Missing(k, False, None, k))
    return out


_GIN_PROXY_MARK = "augment_exception_message_and_reraise."


def _is_gin_proxy(e: BaseException) -> bool:
    getattr_ = type(e).__dict__.get("__getattr__")
    return getattr(getattr_, "__qualname__", "").startswith(_GIN_PROXY_MARK)


def unwrap_gin_exception(e: BaseException) -> tuple[BaseException, list[str]]:
    """The original exception behind gin's message-augmenting proxies, and gin's notes.

    gin re-raises an exception from a configured call as a proxy subclass whose ``str``
    has "In call to configurable ..." appended and whose ``args`` are empty. Returns the
    genuine exception object and the appended notes (innermost first).
    """
    notes: list[str] = []
    seen = set()
    while _is_gin_proxy(e) and id(e) not in seen:
        seen.add(id(e))
        inner = None
        for cell in type(e).__getattr__.__closure__ or ():
            if isinstance(cell.cell_contents, BaseException):
                inner = cell.cell_contents
        if inner is None:
            break
        outer_text, inner_text = str(e), str(inner)
        if outer_text.startswith(inner_text):
            notes.insert(0, outer_text[len(inner_text):].strip())
        e = inner
    return e, notes


def _gin_wrapper_frame(e: BaseException):
    """The gin_wrapper frame where ``e`` was raised, if gin's wrapper raised it itself
    (not something inside the configured function)."""
    tb = e.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if (code.co_name == "gin_wrapper"
            and os.path.realpath(code.co_filename) == os.path.realpath(gin_config.__file__)):
        return tb.tb_frame
    return None


_MISSING_ARGS_RE = re.compile(
    r"missing \d+ required (?:keyword-only |positional )?arguments?: (.*)")


def _call_error(e: BaseException) -> GinConfigError | None:
    """A GinConfigError for gin's own call-time errors, else None."""
    frame = _gin_wrapper_frame(e)
    if frame is None:
        return None
    local = frame.f_locals
    selector = local.get("current_selector") or local.get("name") or "?"
    scope = local.get("scope_str") or ""
    if isinstance(e, RuntimeError) and str(e).startswith("Required bindings for"):
        params = list(local.get("missing_required_params") or []) or re.findall(
            r"'([^']+)'", str(e).split(":", 1)[-1])
    elif isinstance(e, TypeError) and _MISSING_ARGS_RE.search(str(e)):
        params = re.findall(r"'([^']+)'", _MISSING_ARGS_RE.search(str(e)).group(1))
        if selector == _MACRO_SELECTOR:
            return GinConfigError(f"gin macro %{scope} is used but never set; fix: set "
                                  f"`{scope} = ...` in a gin file or pass --gin.{scope}=...")
        keys = [_key_str(scope, selector, p) for p in params]
        return GinConfigError(
            f"missing gin value{'s' if len(keys) > 1 else ''} {', '.join(keys)} (no binding, no "
            f"default, not passed by the caller); fix: pass "
            + " ".join(f"--gin.{k}=..." for k in keys) + " or set it in a gin file")
    else:
        return None
    return _missing_error([_Missing(_key_str(scope, selector, p), False, None,
                                    _key_str(scope, selector, p)) for p in params])


def call_with_gin_errors(fn: Callable, *args, **kwargs):
    """Calls ``fn(*args, **kwargs)``, turning gin's call-time errors into GinConfigError.

    Before the call, if ``fn`` is a gin configurable, every binding it will receive is
    followed through @references and %macros: a ``%gin.REQUIRED`` value that nothing
    overrode (gin itself passes the REQUIRED sentinel through silently) or an unset
    ``%MACRO`` raises a one-line GinConfigError naming the macro, the parameter that
    needs it and the flag to pass. During the call, gin's "Required bindings ... not
    provided" RuntimeError and a missing-argument TypeError raised by gin's wrapper
    itself are converted too, as is any failure after gin handed out a REQUIRED value.

    Any other exception propagates as the original exception object (gin's
    "In call to configurable ..." proxy is unwrapped; gin's text is kept as a note
    shown in tracebacks), so a genuine bug is never dressed up as a user error.
    """
    configurable_ = gin_config._inverse_lookup(fn, allow_decorators=True)
    if configurable_ is not None:
        skip = set(kwargs)
        try:  # positional arguments the caller passes win over gin, like keywords do
            skip.update(list(inspect.signature(configurable_.wrapped).parameters)[:len(args)])
        except (TypeError, ValueError):
            pass
        missing, undefined = _find_missing(configurable_.selector, gin.current_scope(), skip)
        if undefined:
            name, user = undefined[0]
            raise GinConfigError(f"gin macro %{name} is used by {user} but never set; fix: set "
                                 f"`{name} = ...` in a gin file or pass --gin.{name}=...")
        if missing:
            raise _missing_error(missing)
    before = _required_in_operative()
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised below, converted only if gin's
        caught = e
    original, notes = unwrap_gin_exception(caught)
    handed_out = _required_in_operative() - before
    if handed_out:
        raise _missing_error(_missing_from_keys(sorted(handed_out))) from original
    converted = _call_error(original)
    if converted is not None:
        raise converted from original
    if original is not caught:
        for note in notes:
            if note and note not in getattr(original, "__notes__", ()):
                original.add_note(note)
        raise original.with_traceback(caught.__traceback__)
    raise caught


# --------------------------------------------------------------------------------------
# Operative config
# --------------------------------------------------------------------------------------

def _has_bindings(config_text: str) -> bool:
    for line in config_text.splitlines():
        s = line.strip()
        if s and not s.startswith(("#", "import ", "from ")):
            return True
    return False


def write_operative_config(model_dir: str, sources: ConfigSources | None = None) -> str:
    """Writes gin's operative config to ``MODEL_DIR/config.gin`` atomically; returns the path.

    The operative config (every parameter actually used, with defaults) is filled in as
    configured functions are called, so call this after the run function started; before
    that it falls back to the whole parsed config (``gin.config_str()``). With ``sources``
    a comment header names the gin files and flags the run was started with. The file
    parses back with gin (the header is comments).
    """
    text = gin.operative_config_str()
    kind = "operative"
    if not _has_bindings(text):
        text, kind = gin.config_str(), "parsed"
    header = [f"# {kind} gin config written by plug_jax"]
    if sources is not None:
        for name, path in sources.files:
            header.append(f"# gin file: {name}" + (f" ({path})" if path != name else ""))
        for b in sources.bindings:
            header.append("# flag: --gin." + " ".join(b.split()))
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, CONFIG_FILE_NAME)
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=f".{CONFIG_FILE_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(header) + "\n\n" + text.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
