"""Strict, typed loading of recipes into dataclasses.

A recipe is a YAML mapping; every section of it is a dataclass whose fields are declared with
`param(...)` (a default, a one-line help text, optional bounds). `build` turns plain data into
those dataclasses and refuses anything it does not understand, naming the dotted key path and
what was expected:

    train.lr: expected a number > 0, got -0.001
    model.chanels: unknown key 'chanels'; did you mean 'channels'? (allowed: channels, latent)
    model.channels[2]: expected an integer (int), got 'x' (str)

Command-line overrides (`--set train.lr=3e-4`) are applied to the raw data first
(`apply_overrides`) and then go through the same `build`, so a typo there gets the same error.
`load` does the whole path (file -> overrides -> build) and says whether an error came from
the file or from `--set`.

Supported field types: int, float, bool, str, pathlib.Path, Literal[...], Optional[X] / X | None
and other unions, list[X], tuple[X, ...], tuple[X, Y], dict[str, X], nested dataclasses
(also inside lists and optionals), and typing.Any (passed through unchecked).

Numbers written like `3e-4` or `1e5` (an exponent and no dot) are *strings* to PyYAML, which
follows YAML 1.1. A float field therefore accepts a string that is a plain decimal number
('3e-4', '0.5'); an int field accepts one whose value is a whole number ('1e5' -> 100000). Words
such as 'nan', 'inf' or 'abc' are still refused.

No torch here: this module is pure Python and PyYAML.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any, Literal, Union

import yaml

from genlab.core.errors import RecipeError

__all__ = [
    "MISSING",
    "apply_overrides",
    "blame",
    "build",
    "describe",
    "load",
    "load_yaml",
    "override_keys",
    "param",
    "parse_override",
    "to_dict",
    "type_name",
]

MISSING = dataclasses.MISSING
OVERRIDE_SOURCE = "--set"
#: A recipe is a page of settings: anything larger is a mistake (a data file named as the recipe)
#: or an attack, and parsing it could take minutes and gigabytes before any check runs.
MAX_RECIPE_BYTES = 1 << 20
#: Recipes nest a few levels (model.augment.*); deeper nesting is refused before anything
#: recursive (YAML composition, validation, deep copies) can exhaust Python's stack.
MAX_NESTING = 32

# A decimal number as text: 3e-4, -1.5, .5, 1e+05 (not nan, inf, 0x10 or 1_000).
_NUMBER_TEXT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


# --------------------------------------------------------------------------- declaring fields
def param(
    default: Any = MISSING,
    *,
    help: str,  # the word users know from argparse
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    must_exist: bool = False,
    default_factory: Any = None,
) -> Any:
    """A dataclass field of a recipe: its default, its help text and its checks.

    `help` is mandatory: it documents the key (`genlab list`, `describe`). `ge`/`gt`/`le`/`lt`
    bound a number (or every number of a list/tuple/dict field); `must_exist` requires that a
    path field (or every path of a list) names an existing file or folder. Leave `default` out
    for a required key. A mutable default (a list, a dict, a dataclass instance) is copied for
    each instance, so `param([16, 32], help=...)` is fine.
    """
    if not isinstance(help, str) or not help.strip():
        raise TypeError("param() needs a non-empty help text: it documents the recipe key")
    if default is not MISSING and default_factory is not None:
        raise TypeError("param() takes a default or a default_factory, not both")
    if default is not MISSING and type(default).__hash__ is None:  # list, dict, set, dataclass
        default_factory, default = functools.partial(copy.deepcopy, default), MISSING
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help.strip(), "bounds": bounds, "must_exist": bool(must_exist)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------- errors
class _Mismatch(RecipeError):
    """A value of the wrong kind at `key`; unions combine these into one message."""

    def __init__(self, key: str, expected: str, value: Any, hint: str = ""):
        self.expected, self.value, self.hint = expected, value, hint
        super().__init__(key, f"expected {expected}, got {_show(value)}{hint}")


def _show(value: Any) -> str:
    """A value as a user reads it in a message: 'abc' (str), 3 (int), null, a list."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, bool):
        return f"{str(value).lower()} (bool)"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --------------------------------------------------------------------------- type helpers
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_path_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, PurePath)


def type_name(tp: Any) -> str:
    """A short, readable name of a field type: 'float', 'list[int]', "'mse' | 'bce'", 'path'."""
    if tp is Any:
        return "any"
    if tp is type(None) or tp is None:
        return "null"
    if tp is bool or tp is int or tp is float or tp is str:
        return tp.__name__
    if _is_path_type(tp):
        return "path"
    if _is_dataclass_type(tp):
        return tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if _is_union(tp):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple, dict):
        if not args:
            return origin.__name__
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_name(args[0])}, ...]"
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if tp in (list, tuple, dict):
        return tp.__name__
    return getattr(tp, "__name__", repr(tp))


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------- building
def build(cls: type, data: Mapping | None, path: str = "") -> Any:
    """Strictly convert `data` (a mapping, or None for "all defaults") into dataclass `cls`.

    Nested dataclass fields are built recursively; `path` is the dotted key prefix used in
    error messages (e.g. "model"). Every problem raises `RecipeError` naming the full key:
    an unknown key (with the closest allowed key suggested), a missing required key, a value
    of the wrong type, a number out of its bounds, a path that must exist but does not. A
    `ValueError` raised by the dataclass's own `__post_init__` (a cross-check of fields)
    becomes a `RecipeError` at `path`.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"build() needs a dataclass type, got {cls!r}")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _Mismatch(path, "a mapping of keys", data)
    hints = _hints(cls)
    fields = _init_fields(cls)
    names = [f.name for f in fields]
    for key in data:
        if not isinstance(key, str):
            raise RecipeError(_join(path, str(key)), f"keys must be text, got {_show(key)}")
        if key not in names:
            hint = _suggest(key, names)
            allowed = ", ".join(names) or "(none)"
            raise RecipeError(_join(path, key), f"unknown key {key!r}{hint} (allowed: {allowed})")
    kwargs = {}
    for f in fields:
        key = _join(path, f.name)
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                what = type_name(hints[f.name])
                doc = f.metadata.get("help")
                raise RecipeError(key, f"missing required key ({what}{': ' + doc if doc else ''})")
            continue
        value = _convert(hints[f.name], data[f.name], key)
        _check(value, f.metadata, key)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise RecipeError(path, str(e)) from e


def _convert(tp: Any, value: Any, key: str) -> Any:
    """`value` as type `tp`, or a RecipeError at `key`."""
    if tp is Any or tp is object:
        return value
    if tp is type(None) or tp is None:
        if value is not None:
            raise _Mismatch(key, "null", value)
        return None
    if _is_union(tp):
        return _convert_union(typing.get_args(tp), value, key)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return allowed
        hint = ""
        if isinstance(value, str):
            hint = _suggest(value, [a for a in args if isinstance(a, str)])
        raise _Mismatch(key, "one of " + ", ".join(repr(a) for a in args), value, hint)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(key, "true or false (bool)", value)
    if tp is int:
        return _to_int(value, key)
    if tp is float:
        return _to_float(value, key)
    if tp is str:
        if isinstance(value, str):
            return value
        hint = "; put it in quotes to keep it as text" if value is not None else ""
        if isinstance(value, (Mapping, list, tuple)):
            hint = ""
        raise _Mismatch(key, "a string (str)", value, hint)
    if _is_path_type(tp):
        if isinstance(value, PurePath) or (isinstance(value, str) and value):
            return tp(value).expanduser() if issubclass(tp, Path) else tp(value)
        raise _Mismatch(key, "a path (non-empty string)", value)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        return _convert_sequence(origin or tp, args, value, key)
    if origin is dict or tp is dict:
        return _convert_dict(args, value, key)
    raise TypeError(f"genlab.core.schema: unsupported field type {tp!r} for key {key!r}")


def _convert_union(args: tuple, value: Any, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    mismatches: list[_Mismatch] = []
    deeper: RecipeError | None = None  # an alternative that fit, but failed inside
    for alt in args:
        if alt is type(None):
            continue
        try:
            return _convert(alt, value, key)
        except _Mismatch as e:
            if e.key == key:
                mismatches.append(e)
            elif deeper is None:
                deeper = e
        except RecipeError as e:
            if deeper is None:
                deeper = e
    if deeper is not None:
        raise deeper
    expected = " or ".join(m.expected for m in mismatches)
    if type(None) in args:
        expected += " or null"
    raise _Mismatch(key, expected, value, "".join(m.hint for m in mismatches))


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        number = Decimal(value)
        if number == number.to_integral_value():
            return int(number)
    raise _Mismatch(key, "an integer (int)", value)


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):  # '3e-4': see module doc
        return float(value)
    raise _Mismatch(key, "a number (float)", value)


def _convert_sequence(kind: type, args: tuple, value: Any, key: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _Mismatch(key, "a list", value)
    if kind is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if args == ((),):  # tuple[()]
            args = ()
        if len(value) != len(args):
            raise RecipeError(key, f"expected a list of {len(args)} items, got {len(value)}")
        return tuple(_convert(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(args, value)))
    item = args[0] if args else Any
    items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if kind is tuple else items


def _convert_dict(args: tuple, value: Any, key: str) -> dict:
    if not isinstance(value, Mapping):
        raise _Mismatch(key, "a mapping of keys", value)
    key_type, item = args if args else (Any, Any)
    out = {}
    for k, v in value.items():
        k = _convert(key_type, k, _join(key, str(k)))
        out[k] = _convert(item, v, _join(key, str(k)))
    return out


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _check(value: Any, meta: Mapping, key: str) -> None:
    """Bounds and existence checks of a converted value (and of the items of a collection)."""
    bounds, must_exist = meta.get("bounds") or {}, meta.get("must_exist", False)
    if not bounds and not must_exist:
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, meta, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check(v, meta, _join(key, str(k)))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and bounds:
        ok = {
            "ge": lambda b: value >= b,
            "gt": lambda b: value > b,
            "le": lambda b: value <= b,
            "lt": lambda b: value < b,
        }
        if not all(ok[name](b) for name, b in bounds.items()):
            want = " and ".join(f"{_BOUND_TEXT[name]} {b}" for name, b in bounds.items())
            raise RecipeError(key, f"expected a number {want}, got {value!r}")
    elif isinstance(value, Path) and must_exist and not value.exists():
        raise RecipeError(key, f"file or folder not found: '{value}'")


# --------------------------------------------------------------------------- back to plain data
def to_dict(instance: Any) -> Any:
    """Plain Python data of a built recipe, ready for `yaml.safe_dump`.

    Dataclasses become dicts (init fields only, in declaration order), paths strings, tuples
    lists. `build(cls, to_dict(x)) == x` for anything `build` made.
    """
    if _is_dataclass_type(type(instance)):
        return {f.name: to_dict(getattr(instance, f.name)) for f in _init_fields(type(instance))}
    if isinstance(instance, PurePath):
        return str(instance)
    if isinstance(instance, (list, tuple)):
        return [to_dict(v) for v in instance]
    if isinstance(instance, Mapping):
        return {k: to_dict(v) for k, v in instance.items()}
    return instance


# --------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], '3e-4').

    The value is read with `yaml.safe_load`, so `[32, 64]`, `true`, `null` and `hard` mean what
    they mean in a recipe (and '3e-4' stays a string that a float field accepts). An empty
    value is null. Raises RecipeError(where='--set') for a missing '=', an empty key or key
    part ('a..b'), or a value that is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not key.strip() or not all(parts):
        raise RecipeError(text, "expected key.path=value", where=OVERRIDE_SOURCE)
    _check_nesting(raw, ".".join(parts), OVERRIDE_SOURCE)
    try:
        value = yaml.safe_load(raw)
    except RecursionError:
        raise RecipeError(".".join(parts), f"value nests lists or mappings too deeply (at most "
                          f"{MAX_NESTING} levels)", where=OVERRIDE_SOURCE) from None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(
            ".".join(parts), f"malformed value {raw!r}: {problem}", where=OVERRIDE_SOURCE
        ) from None
    return parts, value


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The dotted key paths that `overrides` set (for attributing errors to '--set')."""
    return {".".join(parse_override(o)[0]) for o in overrides}


def apply_overrides(data: Mapping | None, overrides: Iterable[str]) -> dict:
    """A deep copy of `data` with each 'key.path=value' override set, in order.

    Missing intermediate mappings are created (an empty `model:` section, i.e. null, too).
    A value replaces what was there, mappings included. Nothing is validated here: `build`
    does that afterwards, so an unknown key from `--set` gets the usual "did you mean" error;
    `override_keys` / `blame` / `load` attribute such errors to '--set'. Setting a key inside
    something that is not a mapping (`train.lr.x=1`) raises RecipeError(where='--set').
    """
    out = copy.deepcopy(dict(data or {}))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise RecipeError(
                    ".".join(parts[: i + 1]),
                    f"cannot set {'.'.join(parts[i + 1 :])!r} inside {_show(child)}: "
                    "it is not a mapping of keys",
                    where=OVERRIDE_SOURCE,
                )
            node = child
        node[parts[-1]] = value
    return out


def blame(error: RecipeError, overridden: Iterable[str], where: str | None) -> RecipeError:
    """`error` attributed to '--set' if its key is (inside, or a parent of) an overridden key,
    otherwise to `where` (e.g. the recipe file). An error that already names its source is
    returned unchanged."""
    if error.where is not None:
        return error
    key = error.key
    for o in overridden:
        if key and (key == o or key.startswith((o + ".", o + "[")) or o.startswith(key + ".")):
            return error.located(OVERRIDE_SOURCE)
    return error.located(where) if where else error


# --------------------------------------------------------------------------- YAML files
def _check_nesting(text: str, key: str, where: str) -> None:
    """Refuse YAML whose flow or block collections nest deeper than MAX_NESTING, by scanning
    tokens (flat, no recursion) before the recursive composer sees the text."""
    depth = deepest = 0
    try:
        for tok in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(tok, (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken,
                                yaml.BlockSequenceStartToken, yaml.BlockMappingStartToken)):
                depth += 1
                deepest = max(deepest, depth)
                if deepest > MAX_NESTING:
                    what = "value" if where == OVERRIDE_SOURCE else "recipe"
                    raise RecipeError(key, f"{what} nests lists or mappings deeper than "
                                      f"{MAX_NESTING} levels", where=where)
            elif isinstance(tok, (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken,
                                  yaml.BlockEndToken)):
                depth -= 1
    except yaml.YAMLError:
        return  # malformed: the parser below reports it with its line and column


def load_yaml(path: str | os.PathLike) -> dict:
    """The mapping in a YAML recipe file.

    RecipeError (where=path) for: a missing file ("recipe file not found"), a folder, malformed
    YAML ("malformed YAML at line L, column C: ..."), a key written twice in one mapping (PyYAML
    would silently keep the last), an empty file ("recipe is empty"), and a top level that is
    not a mapping.
    """
    where = str(path)
    p = Path(path)
    if not p.exists():
        raise RecipeError("", "recipe file not found", where=where)
    if p.is_dir():
        raise RecipeError("", "recipe path is a folder, not a YAML file", where=where)
    if not p.is_file():
        raise RecipeError("", "recipe path is not a regular file (a device, pipe or socket)",
                          where=where)
    with open(p, "rb") as f:  # read at most one byte past the limit: the file may be growing
        raw = f.read(MAX_RECIPE_BYTES + 1)
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError("", f"recipe is larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe "
                          f"is a page of settings (is this the right file?)", where=where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError("", "recipe is not a UTF-8 text file", where=where) from None
    _check_nesting(text, "", where)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_duplicates(node, "", where)
        data = loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise RecipeError("", f"recipe nests lists or mappings too deeply (at most {MAX_NESTING} "
                          f"levels)", where=where) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError("", f"malformed YAML{at}: {problem}", where=where) from None
    except yaml.YAMLError as e:
        raise RecipeError("", f"malformed YAML: {e}", where=where) from None
    finally:
        loader.dispose()
    if data is None:
        raise RecipeError("", "recipe is empty", where=where)
    if not isinstance(data, dict):
        raise RecipeError(
            "", f"expected a mapping of keys at the top level, got {_show(data)}", where=where
        )
    return data


def _check_duplicates(node: yaml.Node, path: str, where: str, _seen: set | None = None) -> None:
    seen_nodes = _seen if _seen is not None else set()
    if id(node) in seen_nodes:  # an alias to a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                line = k.start_mark.line + 1
                if k.value in lines:
                    raise RecipeError(
                        _join(path, k.value),
                        f"duplicate key at line {line} (first at line {lines[k.value]})",
                        where=where,
                    )
                lines[k.value] = line
                _check_duplicates(v, _join(path, k.value), where, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check_duplicates(v, f"{path}[{i}]", where, seen_nodes)


def load(
    cls: type,
    source: str | os.PathLike | Mapping | None,
    overrides: Iterable[str] = (),
    *,
    where: str | None = None,
) -> Any:
    """File (or mapping) -> overrides -> `build`: the whole path from a recipe to `cls`.

    Errors name their source: the file (or `where`) or '--set' for keys an override touched.
    """
    overrides = list(overrides)
    if isinstance(source, (str, os.PathLike)):
        where = where or str(source)
        data = load_yaml(source)
    else:
        data = source
    data = apply_overrides(data, overrides)
    try:
        return build(cls, data)
    except RecipeError as e:
        raise blame(e, override_keys(overrides), where) from None


# --------------------------------------------------------------------------- documentation
def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key path, type, default, help) for every field of `cls`, nested dataclasses included.

    A nested section gets its own row (default shown as '{...}') followed by its keys; a list
    of dataclasses shows its items as 'key[].field'. A required key shows the default
    'required'. Defaults are written as in YAML: null, true, 'text', [1, 2].
    """
    rows: list[tuple[str, str, str, str]] = []
    hints = _hints(cls)
    for f in _init_fields(cls):
        key, tp = _join(prefix, f.name), hints[f.name]
        kind = type_name(tp)
        bounds = f.metadata.get("bounds") or {}
        extra = [f"{_BOUND_TEXT[n]} {b}" for n, b in bounds.items()]
        if f.metadata.get("must_exist"):
            extra.append("must exist")
        if extra:
            kind += f" ({', '.join(extra)})"
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        if default is MISSING:
            shown = "required"
        elif _is_dataclass_type(type(default)):
            shown = "{...}"
        else:
            shown = _yaml_repr(to_dict(default))
        rows.append((key, kind, shown, f.metadata.get("help", "")))
        for sub, suffix in _nested(tp):
            rows.extend(describe(sub, key + suffix))
    return rows


def _nested(tp: Any) -> list[tuple[type, str]]:
    """Dataclasses reachable in `tp` and the key suffix their fields get ('' or '[]')."""
    if _is_dataclass_type(tp):
        return [(tp, "")]
    if _is_union(tp):
        return [n for a in typing.get_args(tp) for n in _nested(a)]
    if typing.get_origin(tp) in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return [(sub, "[]") for a in args[:1] for sub, _ in _nested(a)]
    return []


def _yaml_repr(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_repr(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_repr(v)}" for k, v in value.items()) + "}"
    return repr(value)
