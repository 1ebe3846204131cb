"""Generated configuration files and overrides, each knowing whether it was made invalid on purpose.

The fields come from :class:`fedamole.config.Config` itself (names, types, ranges), so a new field
is fuzzed without touching this file. A value is drawn either valid for its field or invalid on
purpose (wrong type, out of range, non-finite, a boolean where a number goes, beyond 64 bits,
nested garbage); unknown keys and sections, sections given as scalars, ``extends`` chains (to other
generated files, missing files, folders, cycles, non-strings) and whole files that are not UTF-8
TOML come on top. ``must_fail`` is true when something invalid on purpose reaches the merged config,
and then loading must refuse it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import tomli_w
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import strategies as st
from pydantic import BaseModel

from fedamole.config import AlgorithmName, Config

from ._fuzzing import toml_value

INT64 = 2**63 - 1
# Names that generated unknown keys avoid: `extends` is the one top-level key that is not a section.
RESERVED = {"extends"}


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One leaf field of the config tree."""

    path: tuple[str, ...]
    kind: str  # bool int float str literal str_tuple float_pair int_pairs
    choices: tuple[Any, ...] = ()  # literal: the allowed values
    lower: float | None = None
    lower_inclusive: bool = True
    upper: float | None = None
    upper_inclusive: bool = True

    @property
    def key(self) -> str:
        return ".".join(self.path)


def _kind(annotation: Any) -> tuple[str, tuple[Any, ...]]:
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return "literal", get_args(annotation)
    if get_origin(annotation) is tuple:
        args = get_args(annotation)
        if args == (str, ...):
            return "str_tuple", ()
        if len(args) == 2 and args[1] is ...:
            return "int_pairs", ()
        return "float_pair", ()
    return {bool: "bool", int: "int", float: "float", str: "str"}[annotation], ()


def _specs(model: type[BaseModel], prefix: tuple[str, ...]) -> Iterator[FieldSpec]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _specs(annotation, (*prefix, name))
            continue
        kind, choices = _kind(annotation)
        bounds: dict[str, Any] = {}
        for meta in info.metadata:
            if isinstance(meta, Ge | Gt):
                bounds["lower"] = meta.ge if isinstance(meta, Ge) else meta.gt
                bounds["lower_inclusive"] = isinstance(meta, Ge)
            if isinstance(meta, Le | Lt):
                bounds["upper"] = meta.le if isinstance(meta, Le) else meta.lt
                bounds["upper_inclusive"] = isinstance(meta, Le)
        yield FieldSpec((*prefix, name), kind, choices, **bounds)


def _tables(model: type[BaseModel], prefix: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield (*prefix, name)
            yield from _tables(annotation, (*prefix, name))


FIELDS: tuple[FieldSpec, ...] = tuple(_specs(Config, ()))
TABLES: tuple[tuple[str, ...], ...] = tuple(_tables(Config, ()))
TABLE_FIELDS = {t: {s.path[-1] for s in FIELDS if s.path[:-1] == t} for t in TABLES}
for _t in TABLES:
    if len(_t) > 1:
        TABLE_FIELDS[_t[:-1]].add(_t[-1])
SECTIONS = {t[0] for t in TABLES}

# --------------------------------------------------------------------------------------------------
# Values

# Fields whose valid strings are narrower than "any text" (validators, feasibility checks).
_VALID_STRINGS: dict[str, st.SearchStrategy[str]] = {
    "model.name": st.sampled_from(
        ["embedded:smollm2-135m-instruct", "tiny:llama", "tiny:qwen2", "org/model", "/", "."]
    ),
    "model.device": st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:7", "mps", "xpu:1"]),
    "run.name": st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,15}", fullmatch=True).filter(
        lambda s: s not in (".", "..")
    ),
    "federation.algorithm": st.sampled_from(get_args(AlgorithmName)),
}
_INVALID_STRINGS: dict[str, st.SearchStrategy[str]] = {
    "model.name": st.sampled_from(["./no/such/model", "../nope-xyz", "/no/such/folder"]),
    "model.device": st.sampled_from(["gpu", "cuda:", "CPU", "cuda:-1", "", "tpu", "cuda:0 "]),
    "run.name": st.sampled_from(["", " ", ".", "..", "a/b", "a\\b", "/"]),
    "federation.algorithm": st.sampled_from(["fedavg", "", "FedAMoLE", "fed amole"]),
}
# Strings that pydantic never reads as a number or a boolean.
_WORDS = st.from_regex(r"[xz][a-z]{1,6}", fullmatch=True)
_TEXT = st.text(max_size=12)
_DATES = st.one_of(st.dates(), st.times(), st.datetimes()).map(
    lambda d: d if not isinstance(d, datetime.time) else d.replace(microsecond=0)
)


def _floats(lo: float | None, lo_in: bool, hi: float | None, hi_in: bool) -> st.SearchStrategy:
    return st.floats(
        min_value=-1e6 if lo is None else lo,
        max_value=1e6 if hi is None else hi,
        exclude_min=lo is not None and not lo_in,
        exclude_max=hi is not None and not hi_in,
        allow_nan=False,
        allow_infinity=False,
    )


def _garbage() -> st.SearchStrategy:
    """Nested tables and arrays that no field accepts: a table, or an array holding one."""
    inner = st.recursive(
        st.one_of(st.integers(-5, 5), _WORDS, st.booleans()),
        lambda inner: (
            st.lists(inner, min_size=1, max_size=3)
            | st.dictionaries(_WORDS, inner, min_size=1, max_size=3)
        ),
        max_leaves=6,
    )
    table = st.dictionaries(_WORDS, inner, min_size=1, max_size=3)
    return table | st.tuples(st.lists(inner, max_size=2), table).map(lambda t: [*t[0], t[1]])


def _deep(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def valid_value(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """A value that passes the field's own type and range checks."""
    bounds = (spec.lower, spec.lower_inclusive, spec.upper, spec.upper_inclusive)
    if spec.kind == "bool":
        return st.booleans()
    if spec.kind == "int":
        lo = -INT64 - 1 if spec.lower is None else int(spec.lower) + (not spec.lower_inclusive)
        hi = INT64 if spec.upper is None else int(spec.upper) - (not spec.upper_inclusive)
        small = max(lo, -100)
        return st.integers(small, min(hi, small + 200)) | st.integers(lo, hi)
    if spec.kind == "float":
        return _floats(*bounds)
    if spec.kind == "literal":
        return st.sampled_from(spec.choices)
    if spec.kind == "str":
        return _VALID_STRINGS.get(spec.key, _TEXT.filter(lambda s: s.strip()))
    if spec.kind == "str_tuple":
        return st.lists(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), max_size=3)
    if spec.kind == "float_pair":  # train.adam_betas: torch needs 0 <= beta < 1
        return st.lists(_floats(0.0, True, 1.0, False), min_size=2, max_size=2)
    assert spec.kind == "int_pairs", spec
    return st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2), max_size=2)


def _out_of_range(spec: FieldSpec) -> st.SearchStrategy[tuple[Any, str]]:
    options = []
    if spec.lower is not None:
        if spec.kind == "int":
            edge = int(spec.lower) - spec.lower_inclusive
            options.append(st.integers(edge - 10**6, edge))
        else:
            options.append(_floats(None, True, spec.lower, not spec.lower_inclusive))
    if spec.upper is not None:
        if spec.kind == "int":
            edge = int(spec.upper) + spec.upper_inclusive
            options.append(st.integers(edge, edge + 10**6))
        else:
            options.append(_floats(spec.upper, not spec.upper_inclusive, None, True))
    if spec.kind == "int":
        options.append(st.integers(INT64 + 1, 2**200) | st.integers(-(2**200), -INT64 - 2))
    return st.one_of(options).map(lambda v: (v, f"out of range: {v!r}"))


def invalid_value(spec: FieldSpec) -> st.SearchStrategy[tuple[Any, str]]:
    """``(value, why)``: a value the field must refuse."""
    tagged = lambda strategy, why: strategy.map(lambda v: (v, why))  # noqa: E731
    options = [tagged(_garbage(), "nested garbage"), tagged(st.just(_deep(30)), "deep nesting")]
    if spec.kind in ("int", "float"):
        options += [
            tagged(st.booleans(), "a boolean for a number"),
            tagged(st.sampled_from([math.nan, math.inf, -math.inf]), "non-finite"),
            tagged(_WORDS, "a word for a number"),
            tagged(_DATES, "a date for a number"),
        ]
        if spec.kind == "int":
            options.append(
                tagged(st.floats(-1e6, 1e6).filter(lambda x: not x.is_integer()), "a fraction")
            )
        if spec.lower is not None or spec.upper is not None or spec.kind == "int":
            options.append(_out_of_range(spec))
    elif spec.kind == "bool":
        options += [
            tagged(st.floats(0.1, 0.9), "a fraction for a boolean"),
            tagged(st.integers(2, 100), "a number for a boolean"),
            tagged(_WORDS, "a word for a boolean"),
        ]
    elif spec.kind in ("str", "literal"):
        options += [
            tagged(st.integers(-5, 5) | st.floats(allow_nan=False), "a number for a string"),
            tagged(st.booleans(), "a boolean for a string"),
            tagged(_DATES, "a date for a string"),
        ]
        if spec.kind == "literal":
            options.append(
                tagged(_TEXT.filter(lambda s: s not in spec.choices), "not one of the choices")
            )
        if spec.key in _INVALID_STRINGS:
            options.append(tagged(_INVALID_STRINGS[spec.key], "refused by its validator"))
    elif spec.kind == "str_tuple":
        options += [
            tagged(_WORDS, "a string for a list"),
            tagged(st.lists(st.integers(), min_size=1, max_size=3), "numbers for strings"),
        ]
    elif spec.kind == "float_pair":
        options += [
            tagged(
                st.lists(st.floats(0, 0.9), max_size=4).filter(lambda v: len(v) != 2),
                "not a pair",
            ),
            tagged(
                st.tuples(st.floats(1.0, 10.0), st.floats(0.0, 0.9)).map(list)
                | st.tuples(st.floats(0.0, 0.9), st.floats(-10.0, -0.01)).map(list),
                "a beta outside [0, 1)",
            ),
            tagged(st.lists(_WORDS, min_size=2, max_size=2), "words for numbers"),
        ]
    else:  # int_pairs
        options += [
            tagged(st.just([[0, 1, 2]]), "a triple for a pair"),
            tagged(st.lists(_WORDS, min_size=1, max_size=2).map(lambda w: [w]), "words"),
            tagged(st.just([[-1, 0]]), "a negative round"),
            tagged(st.just([[0, -1]]), "a negative client"),
        ]
    return st.one_of(options)


# --------------------------------------------------------------------------------------------------
# Documents


@dataclasses.dataclass
class Doc:
    """A config document and the dotted keys made invalid on purpose (key -> why)."""

    data: dict[str, Any]
    invalid: dict[str, str]


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _unknown(names: set[str]) -> st.SearchStrategy[str]:
    return st.one_of(_WORDS, st.text(min_size=1, max_size=8)).filter(
        lambda k: k not in names and k not in RESERVED
    )


# How many things a document or an override list gets wrong on purpose: mostly none or one (so
# that each kind of mistake is seen alone, where a silent acceptance shows), sometimes several.
MISTAKES = st.sampled_from([0, 0, 0, 1, 1, 1, 1, 2, 3])


@st.composite
def _spoil_doc(draw: st.DrawFn, doc: Doc) -> None:
    """Put one mistake into ``doc``: a bad value, an unknown key or section, a scalar section."""
    scalars = {key for key, why in doc.invalid.items() if why == "a section given as a scalar"}
    how = draw(st.sampled_from(["value"] * 6 + ["unknown_key", "unknown_section", "scalar"]))
    free = sorted(SECTIONS - set(doc.data))
    if how == "scalar" and free:
        section = draw(st.sampled_from(free))
        doc.data[section] = draw(st.integers(-3, 3) | _WORDS | st.lists(st.integers(), max_size=2))
        doc.invalid[section] = "a section given as a scalar"
    elif how == "unknown_section":
        section = draw(_unknown(SECTIONS | set(doc.data)))
        doc.data[section] = draw(st.dictionaries(_WORDS, st.integers(), max_size=2))
        doc.invalid[section] = "unknown section"
    elif how == "unknown_key":
        table = draw(st.sampled_from([t for t in TABLES if t[0] not in scalars]))
        key = draw(_unknown(TABLE_FIELDS[table]))
        _put(doc.data, (*table, key), draw(st.integers(0, 3) | _WORDS))
        doc.invalid[".".join((*table, key))] = "unknown key"
    else:
        spec = draw(st.sampled_from([f for f in FIELDS if f.path[0] not in scalars]))
        value, why = draw(invalid_value(spec))
        _put(doc.data, spec.path, value)
        doc.invalid[spec.key] = why


@st.composite
def docs(draw: st.DrawFn, valid_only: bool = False) -> Doc:
    """A config document: some fields with valid values, then (unless ``valid_only``) a few
    mistakes made on purpose (:data:`MISTAKES`)."""
    doc = Doc({}, {})
    for spec in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique_by=lambda s: s.path)):
        _put(doc.data, spec.path, draw(valid_value(spec)))
    for _ in range(0 if valid_only else draw(MISTAKES)):
        draw(_spoil_doc(doc))
    return doc


# --------------------------------------------------------------------------------------------------
# Files and `extends` chains

# `extends` values that must be refused, whatever file they are in.
_BAD_EXTENDS = {
    "missing": "no/such/base.toml",
    "empty": "",
    "folder": ".",
    "long": "x" * 300 + ".toml",  # longer than a file name may be
    "nul": "a\x00b.toml",
    "symlink loop": "loop-a.toml",  # loop-a.toml -> loop-b.toml -> loop-a.toml
}
# File contents that cannot be a config: `broken` files must be refused when read.
BROKEN_KINDS = ("syntax", "binary", "latin1", "utf16", "folder", "missing")


@dataclasses.dataclass
class ConfigFile:
    kind: str  # toml, empty, truncated or one of BROKEN_KINDS
    doc: Doc
    extends: tuple[str, Any] | None  # ("file", index) | ("bad", name) | ("nonstring", value)
    cut: float = 0.0  # truncated: the kept fraction of the bytes
    noise: bytes = b""  # binary: the bytes


@dataclasses.dataclass
class ConfigFiles:
    """Files c0.toml..cN.toml; c0 is the one loaded."""

    files: list[ConfigFile]

    def write(self, folder: Path) -> Path:
        (folder / "loop-a.toml").symlink_to("loop-b.toml")
        (folder / "loop-b.toml").symlink_to("loop-a.toml")
        for i, f in enumerate(self.files):
            path = folder / f"c{i}.toml"
            if f.kind == "missing":
                continue
            if f.kind == "folder":
                path.mkdir()
                continue
            data = dict(f.doc.data)
            if f.extends is not None:
                how, what = f.extends
                target = f"c{what}.toml" if how == "file" else what
                data = {"extends": target, **data}
            text = tomli_w.dumps(data)
            path.write_bytes(_encode(f, text))
        return folder / "c0.toml"

    def chain(self) -> tuple[bool, bool]:
        """``(broken, known)`` of the chain of files that loading c0 reads: ``broken``, a file of
        it cannot be read as a config or has a bad `extends` (a missing file, a folder, a cycle, a
        non-string...), so loading must fail; ``known`` is false when a truncated file makes the
        rest of the chain unknown."""
        seen: set[int] = set()
        index = 0
        while True:
            f = self.files[index]
            seen.add(index)
            if f.kind in BROKEN_KINDS:
                return True, True
            if f.kind == "truncated":
                return False, False
            if f.kind == "empty" or f.extends is None:
                return False, True
            how, what = f.extends
            if how != "file" or what in seen:
                return True, True
            index = what

    def entry_invalid(self) -> dict[str, str]:
        """The keys of c0 made invalid on purpose (key -> why); loading must refuse them."""
        return self.files[0].doc.invalid if self.files[0].kind == "toml" else {}


def _encode(f: ConfigFile, text: str) -> bytes:
    if f.kind == "empty":
        return b""
    if f.kind == "truncated":
        raw = text.encode()
        return raw[: int(len(raw) * f.cut)]
    if f.kind == "syntax":
        return (text + "\n= broken\n").encode()
    if f.kind == "binary":
        return f.noise
    if f.kind == "latin1":
        return (text + "\n# café ÿ\n").encode("latin-1", errors="replace")
    if f.kind == "utf16":
        return text.encode("utf-16")
    return text.encode()


@st.composite
def config_files(draw: st.DrawFn) -> ConfigFiles:
    """One to four config files, c0 loaded, linked by `extends` (cycles included); now and then a
    file that is not a config or an `extends` that cannot be followed."""
    n = draw(st.integers(1, 4))
    files = []
    for _ in range(n):
        roll = draw(st.integers(0, 99))
        kind = (
            "toml"
            if roll < 82
            else "empty"
            if roll < 86
            else "truncated"
            if roll < 90
            else draw(st.sampled_from(BROKEN_KINDS))
        )
        roll = draw(st.integers(0, 99))
        extends = (
            None
            if roll < 55
            else ("file", draw(st.integers(0, n - 1)))
            if roll < 85
            else ("bad", draw(st.sampled_from(sorted(_BAD_EXTENDS.values()))))
            if roll < 93
            else ("nonstring", draw(st.integers() | st.booleans() | st.lists(_WORDS, max_size=2)))
        )
        noise = draw(st.binary(max_size=40))
        at = draw(st.integers(0, len(noise)))
        files.append(
            ConfigFile(
                kind=kind,
                doc=draw(docs()),
                extends=extends,
                cut=draw(st.floats(0, 1, exclude_max=True)),
                noise=noise[:at] + b"\xff" + noise[at:],  # 0xFF never occurs in UTF-8
            )
        )
    return ConfigFiles(files)


# --------------------------------------------------------------------------------------------------
# Overrides


@dataclasses.dataclass
class Override:
    text: str
    key: str | None  # the dotted key it assigns (None: malformed, refused whatever follows)
    invalid: str | None  # why it must be refused, or None


def _invalid_override(spec: FieldSpec, draw: st.DrawFn) -> Override:
    pad = draw(st.sampled_from(["", " "]))
    how = draw(
        st.sampled_from(["value", "value", "words", "trailing", "deep", "digits", "not_utf8"])
    )
    if how == "words" and spec.kind not in ("int", "float", "bool"):
        how = "value"
    if how == "value":
        value, why = draw(invalid_value(spec))
        text = toml_value(value)
    elif how == "words":  # unquoted text: read as a string, never a number or a boolean
        text, why = draw(_WORDS), "a word for a number"
    elif how == "trailing":  # a second TOML statement after the value
        text, why = toml_value(draw(valid_value(spec))) + "\nextra = 1", "trailing TOML"
    elif how == "deep":
        text, why = "[" * 3000 + "]" * 3000, "nested 3000 deep"
    elif how == "digits":
        text, why = "9" * 5000, "a 5000-digit number"
    else:  # a byte that is not UTF-8 in the shell's argument reaches Python as a lone surrogate
        byte = draw(st.integers(0x80, 0xFF))
        text, why = draw(_WORDS) + chr(0xDC00 + byte), "a byte that is not UTF-8"
    return Override(f"{spec.key}{pad}={pad}{text}", spec.key, why)


@st.composite
def _valid_override(draw: st.DrawFn) -> Override:
    spec = draw(st.sampled_from(FIELDS))
    pad = draw(st.sampled_from(["", " "]))
    return Override(f"{spec.key}{pad}={pad}{toml_value(draw(valid_value(spec)))}", spec.key, None)


@st.composite
def _bad_override(draw: st.DrawFn) -> Override:
    """An override refused on purpose: a bad value for a field, an unknown key, a malformed
    item."""
    how = draw(
        st.sampled_from(
            ["field"] * 5 + ["unknown_key", "unknown_section", "no_equals", "no_dot", "blank"]
        )
    )
    if how == "field":
        return _invalid_override(draw(st.sampled_from(FIELDS)), draw)
    value = toml_value(draw(st.integers(0, 9) | _WORDS))
    if how == "unknown_key":
        table = draw(st.sampled_from(TABLES))
        key = ".".join((*table, draw(_unknown(TABLE_FIELDS[table]).filter(_plain_key))))
        return Override(f"{key}={value}", key, "unknown key")
    if how == "unknown_section":
        key = draw(_unknown(SECTIONS).filter(_plain_key)) + ".x"
        return Override(f"{key}={value}", key, "unknown section")
    if how == "no_equals":
        return Override(draw(st.sampled_from(FIELDS)).key, None, "no `=`")
    if how == "no_dot":
        return Override(f"{draw(_WORDS)}={value}", None, "no section")
    return Override(f"{draw(st.sampled_from(['', ' ', '.']))}={value}", None, "empty key")


@st.composite
def override_lists(draw: st.DrawFn, max_valid: int = 4) -> list[Override]:
    """Valid ``key=value`` overrides with a few mistakes (:data:`MISTAKES`) among them."""
    items = draw(st.lists(_valid_override(), max_size=max_valid))
    for _ in range(draw(MISTAKES)):
        items.insert(draw(st.integers(0, len(items))), draw(_bad_override()))
    return items


def _plain_key(key: str) -> bool:
    """A key part that survives ``key=value`` splitting as itself (no `=`, `.`, outer spaces)."""
    return bool(key) and key == key.strip() and "=" not in key and "." not in key


def overrides_must_fail(items: list[Override]) -> bool:
    """Whether the overrides, applied in order, leave something invalid on purpose: a malformed
    item, or an invalid assignment that no later assignment to the same key (or a parent) replaced.
    """
    if any(item.key is None for item in items):
        return True
    final: dict[str, str | None] = {}
    for item in items:
        assert item.key is not None
        for key in [k for k in final if k.startswith(item.key + ".")]:
            del final[key]
        final[item.key] = item.invalid
    return any(why is not None for why in final.values())


def replaced(key: str, items: list[Override]) -> bool:
    """Whether an override assigns ``key`` or a table above it."""
    return any(
        item.key is not None and (key == item.key or key.startswith(item.key + "."))
        for item in items
    )
