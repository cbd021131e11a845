"""Strict loader from YAML plus dotted command-line overrides into typed frozen dataclasses.

The schemas (``trainers/config.py``, ``rewards/config.py``, ...) are plain frozen, keyword-only
dataclass trees that this module never names. ``load_config`` reads a YAML file, deep-merges
``a.b.c=value`` overrides on top and calls ``from_dict``, which walks the schema's type hints and
collects *every* problem (unknown keys with ``difflib`` suggestions, missing required fields,
type and ``Literal`` errors, each section's ``validate()``) into one ``ConfigError``.

Supported annotations: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, dataclasses, and unions of dataclasses tagged by
a ``name: Literal[...]`` field (no schema of the project has one today: plans are one dataclass with a
``name`` and per-plan knobs that ``validate()`` checks). Nothing is coerced except that an
int fits a float field and, because YAML 1.1 ``safe_load`` reads ``1e-4`` as a string, a float
field also accepts a string that is a number with an exponent; a float must be finite. Paths into the shipped
files (``pipeline/assets/...``) that the working folder lacks are read from the installed project.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import math
import os
import re
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the folder holding pipeline/, trainers/, rewards/
_SHIPPED = ("pipeline/assets/", "pipeline/configs/")
_FAIL = object()  # sentinel: this subtree did not build; its problems are already recorded
_EXP_FLOAT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")  # 1e-4, 3E5, 2.5e3
_FIELD_PREFIX = re.compile(r"[A-Za-z_][\w.]*: ")  # validate() message that names a field
_SCALARS = {  # type -> (accepted Python types, description for messages)
    bool: ((bool,), "a boolean (true/false)"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number (e.g. 0.5 or 1e-4)"),
    str: ((str,), "a string"),
}


class ConfigError(ValueError):
    """Every problem found in one config, each as ``"dotted.path: message"``.

    Args:
        problems: The problems, in the order found.
        source: Where the config came from (file path, ``<dict>``), shown in the first line.
    """

    def __init__(self, problems: Sequence[str], source: str = "<dict>") -> None:
        self.problems = list(problems)
        self.source = source
        n = len(self.problems)
        head = f"invalid config ({n} problem{'' if n == 1 else 's'}) in {source}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))

    def __reduce__(self):  # survives pickling (Ray) despite the custom __init__
        return type(self), (self.problems, self.source)


def from_dict(schema: type[T], data: Mapping, source: str = "<dict>") -> T:
    """Build a ``schema`` instance from plain data, checking everything before raising.

    Args:
        schema: Root dataclass type.
        data: Nested plain data, as from ``yaml.safe_load``.
        source: Name shown in the error's first line.

    Returns:
        The frozen dataclass tree.

    Raises:
        ConfigError: Listing every problem by dotted path.
        TypeError: If the schema itself uses an unsupported annotation.
    """
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    problems: list[str] = []
    cfg = _build(schema, data, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return _with_shipped_paths(cfg)


def shipped_path(value: str) -> str:
    """A path into the shipped files (``pipeline/assets/...``, ``pipeline/configs/...``) as given when it exists
    from the working folder, else under the installed project: shipped configs and commands find the toy
    world wherever they are started. Any other string is returned as it is."""
    if value.startswith(_SHIPPED) and not os.path.exists(value) and (PROJECT_ROOT / value).exists():
        return str(PROJECT_ROOT / value)
    return value


def _with_shipped_paths(value: Any) -> Any:
    """``value`` with :func:`shipped_path` applied to every string in it (dataclass fields, defaults included)."""
    if isinstance(value, str):
        return shipped_path(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f.name for f in dataclasses.fields(value) if f.init]
        changed = {n: v for n in fields if (v := _with_shipped_paths(getattr(value, n))) is not getattr(value, n)}
        return dataclasses.replace(value, **changed) if changed else value
    if isinstance(value, list | tuple):
        items = [_with_shipped_paths(v) for v in value]
        return type(value)(items) if any(a is not b for a, b in zip(items, value)) else value
    if isinstance(value, dict):
        items = {k: _with_shipped_paths(v) for k, v in value.items()}
        return items if any(items[k] is not value[k] for k in value) else value
    return value


def parse_overrides(overrides: Sequence[str]) -> dict:
    """Parse ``key.sub=value`` strings (values read as YAML) into one nested dict.

    A numeric segment such as ``rewards.0.weight=2`` addresses a list item once merged by
    ``load_config``. Later overrides win.

    Args:
        overrides: Strings such as ``trainer.lr=1e-4`` or ``rewards=[]``.

    Returns:
        Nested dict, e.g. ``{"trainer": {"lr": "1e-4"}}``.

    Raises:
        ConfigError: Listing every malformed override.
    """
    tree: dict = {}
    problems = []
    for text in overrides:
        key, eq, raw = text.partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not eq or not all(parts):
            problems.append(f"override {text!r}: expected the form key.sub=value (e.g. a.b=1)")
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problems.append(f"override {text!r}: value is not valid YAML ({_yaml_reason(exc)})")
            continue
        node = tree
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # `a.b=1` after `a=2` refines rather than fails
            node = node[part]
        node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, "<command line>")
    return tree


def load_config(schema: type[T], path: str | None, overrides: Sequence[str] = (), data: dict | None = None) -> T:
    """Read YAML at ``path``, deep-merge ``overrides`` on top, and build ``schema``.

    Args:
        schema: Root dataclass type.
        path: YAML file; ``None`` or an empty file means defaults only.
        overrides: ``key.sub=value`` strings; they win over the file.
        data: The file's content (or a section of it) when already read; ``path`` then only names it.

    Returns:
        The frozen dataclass tree.

    Raises:
        ConfigError: For an unreadable file, bad YAML, bad overrides, or any schema problem.
    """
    path = shipped_path(path) if path else path
    source = (path or "<no file>") + (" + command-line overrides" if overrides else "")
    if data is None:
        data = read_yaml(path) if path else {}
    problems: list[str] = []
    data = _merge(data, parse_overrides(overrides), "", problems)
    try:
        cfg = from_dict(schema, data, source)
    except ConfigError as err:
        problems += err.problems
    if problems:
        raise ConfigError(_mark_overridden(problems, overrides), source)
    return cfg


def to_dict(cfg: Any) -> dict:
    """Return plain YAML-safe data (tuples as lists) such that ``from_dict`` rebuilds ``cfg``."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {cfg!r}")
    return _plain(cfg)


def dump_yaml(cfg: Any) -> str:
    """Return the resolved config as YAML text, fields in schema order."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(cfg: Any) -> dict[str, object]:
    """Return dotted leaves such as ``{"trainer.lr": 1e-4, "rewards.0.name": "hps"}`` for logging.

    Empty lists and dicts stay as leaf values so that no field disappears.
    """
    flat: dict[str, object] = {}
    _flatten_into(to_dict(cfg), "", flat)
    return flat


@contextlib.contextmanager
def exit_on_config_error() -> Iterator[None]:
    """Print a ``ConfigError`` to stderr without a traceback and exit with status 2."""
    try:
        yield
    except ConfigError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None


def finite_float(text: str) -> float:
    """An ``argparse`` type for a float option: a finite number. argparse reports a refusal as
    ``argument --guidance: must be a finite number, got 'nan'`` and exits with status 2."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """An ``argparse`` type for a count option: an integer >= ``minimum``; argparse reports a refusal as
    ``argument --seeds: must be an integer >= 1, got '0'`` and exits with status 2."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return count


def run_cli(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s return code, or with status 2 on a ``ConfigError``."""
    with exit_on_config_error():
        code = main()
    sys.exit(code)


def _build(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Check ``value`` against annotation ``tp``; return the built value or ``_FAIL``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:  # checked by its owner (e.g. search-space values, against the training config)
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path, problems)
    if origin in (Union, types.UnionType):
        return _build_union(args, value, path, problems)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):  # Literal[1] rejects True
            return value
        return _fail(problems, path, tp, value, _suggest(value, args))
    if origin in (list, tuple, dict):
        return _build_container(tp, value, path, problems)
    if tp in _SCALARS:
        return _build_scalar(tp, value, path, problems)
    raise TypeError(f"unsupported annotation {tp!r} at {_at(path)} in the config schema")


def _build_dataclass(cls: type, value: Any, path: str, problems: list[str]) -> Any:
    """Build one section; run its ``validate()`` only when the section itself built cleanly."""
    if not isinstance(value, Mapping):
        return _fail(problems, path, cls, value)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in value if k not in fields]
    for key in unknown:
        problems.append(f"{_join(path, key)}: unknown key; {_did_you_mean(key, list(fields))}")
    kwargs, ok = {}, not unknown
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _build(hints[name], value[name], _join(path, name), problems)
            ok = ok and kwargs[name] is not _FAIL
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{_join(path, name)}: missing required field ({_describe(hints[name])})")
            ok = False
    if not ok:
        return _FAIL
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    problems += [_prefix(path, p) for p in validate()] if validate else []
    return obj


def _build_union(args: tuple, value: Any, path: str, problems: list[str]) -> Any:
    """``X | None``, or a union of dataclasses selected by the value's ``name`` key."""
    options = [a for a in args if a is not type(None)]
    if value is None and len(options) < len(args):
        return None
    if len(options) == 1:
        start = len(problems)
        built = _build(options[0], value, path, problems)
        own = f"{_at(path)}: expected {_describe(options[0])}, got "
        if len(options) < len(args) and problems[start:] and problems[start].startswith(own):
            problems[start] = problems[start].replace(", got ", " or null, got ", 1)  # say so
        return built
    if not all(dataclasses.is_dataclass(a) for a in options):
        raise TypeError(f"unsupported union {args!r} at {_at(path)}; use X | None or dataclasses")
    tags = {tag: cls for cls in options for tag in _tags(cls)}
    allowed = ", ".join(map(repr, tags))
    if not isinstance(value, Mapping) or "name" not in value:
        hint = f" (needs name: one of {allowed})"
        return _fail(problems, path, Union[tuple(options)], value, hint)  # noqa: UP007 - built at run time
    cls = next((c for t, c in tags.items() if t == value["name"]), None)
    if cls is None:
        tag = value["name"]
        problems.append(
            f"{_join(path, 'name')}: expected one of {allowed}, got {_show(tag)}" + _suggest(tag, list(tags))
        )
        return _FAIL
    return _build_dataclass(cls, value, path, problems)


def _build_container(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """``list[X]`` and ``tuple[X, ...]`` from a YAML list, ``dict[str, X]`` from a mapping."""
    origin, args = get_origin(tp), get_args(tp)
    if (origin is tuple and args[-1] is not Ellipsis) or (origin is dict and args[0] is not str):
        raise TypeError(f"unsupported {tp!r} at {_at(path)}; use tuple[X, ...] or dict[str, X]")
    if origin is dict and isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        problems += [f"{_join(path, k)}: keys must be strings, got {_show(k)}" for k in bad]
        built = {k: _build(args[1], v, _join(path, k), problems) for k, v in value.items()}
        return _FAIL if bad or any(v is _FAIL for v in built.values()) else built
    if origin in (list, tuple) and isinstance(value, list | tuple):
        items = [_build(args[0], v, _join(path, i), problems) for i, v in enumerate(value)]
        return _FAIL if any(v is _FAIL for v in items) else origin(items)
    return _fail(problems, path, tp, value)


def _build_scalar(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """``bool``/``int``/``float``/``str``; a bool is never a number."""
    accepted = _SCALARS[tp][0]
    if tp is float and isinstance(value, str) and _EXP_FLOAT.fullmatch(value):
        value = float(value)
    if isinstance(value, accepted) and (tp is bool or not isinstance(value, bool)):
        if tp is float and not math.isfinite(value):
            problems.append(f"{_at(path)}: must be a finite number, got {value}")
            return _FAIL
        return float(value) if tp is float else value
    quote = tp is str and isinstance(value, bool)
    hint = "; YAML reads yes/no/on/off as booleans, so quote the value" if quote else ""
    return _fail(problems, path, tp, value, hint)


def _tags(cls: type) -> tuple:
    """The ``name`` values that select ``cls`` in a tagged union."""
    hint = get_type_hints(cls).get("name")
    if get_origin(hint) is not Literal:
        raise TypeError(f"{cls.__name__} is in a union of dataclasses but lacks name: Literal[...]")
    return get_args(hint)


def _fail(problems: list[str], path: str, tp: Any, value: Any, hint: str = "") -> object:
    """Record ``path: expected <type>, got <value> (<type>)`` and return ``_FAIL``."""
    problems.append(f"{_at(path)}: expected {_describe(tp)}, got {_show(value)}{hint}")
    return _FAIL


def _describe(tp: Any) -> str:
    """Describe an annotation for messages, e.g. ``one of 'a', 'b'`` or ``an integer or null``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp in _SCALARS:
        return _SCALARS[tp][1]
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list (each item {_describe(args[0])})"
    if origin is dict:
        return f"a mapping (each value {_describe(args[1])})"
    return f"a mapping of {getattr(tp, '__name__', tp)} fields"


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return f"{text if len(text) <= limit else text[: limit - 3] + '...'} ({type(value).__name__})"


def _did_you_mean(key: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1)
    return f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(sorted(valid))


def _suggest(value: Any, allowed: Sequence[Any]) -> str:
    names = [a for a in allowed if isinstance(a, str)]
    close = difflib.get_close_matches(value, names, n=1) if isinstance(value, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""


def _prefix(path: str, problem: str) -> str:
    """Put the section's path before a ``validate()`` message (``field: msg`` or ``msg``)."""
    return _join(path, problem) if _FIELD_PREFIX.match(problem) else f"{_at(path)}: {problem}"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _at(path: str) -> str:
    return path or "<top level>"


def read_yaml(path: str) -> dict:
    """Read a YAML mapping; an empty file is ``{}``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.strerror})"], path) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: YAML syntax error {_yaml_reason(exc)}"], path) from None
    if not isinstance(data, dict | None):
        problem = f"{path}: top level must be a mapping of sections, got {_show(data)}"
        raise ConfigError([problem], path)
    return data or {}


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    reason = getattr(exc, "problem", None) or str(exc)
    return f"at line {mark.line + 1}, column {mark.column + 1}: {reason}" if mark else reason


def _merge(base: Any, over: Any, path: str, problems: list[str]) -> Any:
    """Deep-merge ``over`` onto ``base``; numeric keys index into existing lists."""
    if not isinstance(over, dict) or not isinstance(base, Mapping | list):
        return over
    merged = dict(base) if isinstance(base, Mapping) else list(base)
    for key, value in over.items():
        where = _join(path, key)
        if isinstance(base, Mapping):
            merged[key] = _merge(base[key], value, where, problems) if key in base else value
        elif str(key).isdigit() and int(key) < len(base):
            merged[int(key)] = _merge(base[int(key)], value, where, problems)
        else:
            problems.append(f"{where}: no such list item; {_at(path)} has {len(base)} items")
    return merged


def _mark_overridden(problems: list[str], overrides: Sequence[str]) -> list[str]:
    """Tag problems about an overridden key with the command-line override that set it."""
    keys = {".".join(p.strip() for p in t.partition("=")[0].split(".")): t for t in overrides}
    marked = []
    for problem in problems:
        where = problem.partition(": ")[0]
        text = next((t for k, t in keys.items() if where == k or where.startswith(k + ".")), None)
        marked.append(f"{problem} (from command-line override {text!r})" if text else problem)
    return marked


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _flatten_into(node: Any, path: str, flat: dict[str, object]) -> None:
    if isinstance(node, dict | list) and node:
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            _flatten_into(value, _join(path, key), flat)
    else:
        flat[path] = node
