"""Generated dataset files (docs/data.md#datasets), each knowing whether it was made invalid on
purpose and how many examples it holds otherwise.

``local`` and ``dolly`` records (Dolly's fields, optional ``choices``), ``snli`` records (both
schemas) as JSON lines or JSON lists, one file or a folder of them; and Natural Instructions
checkouts (task files and the split list). Corruptions: missing fields, wrong types, nulls, bad
labels and choices, records that are not objects, lone surrogates, numbers too long to read,
nesting too deep to read, truncated lines, files that are not UTF-8 (Latin-1, UTF-16, a BOM).
Valid variations that must load: extra fields, blank lines, CRLF line ends, and text holding the
characters that ``str.splitlines`` (but not JSON Lines) breaks lines at.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

# Inside a JSON string these are ordinary characters; str.splitlines() breaks lines at them.
LINE_BREAKERS = "\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e"
_PLAIN = st.text(st.characters(codec="utf-8"), max_size=8)
TEXT = _PLAIN | st.tuples(_PLAIN, st.sampled_from(LINE_BREAKERS), _PLAIN).map("".join)
NAME = st.from_regex(r"[a-z][a-z_]{0,7}", fullmatch=True)
# Extra fields no loader reads: names no loader looks for, any JSON value (raw JSON text).
EXTRA_KEY = st.from_regex(r"x_[a-z]{1,5}", fullmatch=True)
EXTRA_RAW = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "null", "true", "[]", "{}"]),
    st.just("9" * 200),  # a long number that Python still reads
    st.integers(1, 40).map(lambda d: "[" * d + "]" * d),  # nesting Python still reads
    TEXT.map(json.dumps),
)
SNLI_NAMES = {"entailment": 0, "neutral": 1, "contradiction": 2, "-": -1}


@dataclasses.dataclass
class Record:
    """One record as JSON text; ``invalid`` says why it must be refused (None: it is fine)."""

    text: str
    invalid: str | None
    counts: bool  # yields an example (an SNLI record without a gold label does not)


def _dumps(fields: Any, ascii_only: bool) -> str:
    return json.dumps(fields, ensure_ascii=ascii_only)


def _with_raw(text: str, key: str, raw: str) -> str:
    """A JSON object's text with one more field whose value is the raw JSON ``raw``."""
    assert text.endswith("}")
    sep = ", " if text != "{}" else ""
    return f"{text[:-1]}{sep}{json.dumps(key)}: {raw}}}"


_BAD_TEXT = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(NAME, st.integers(), max_size=2),
)
_NOT_OBJECT = st.one_of(
    st.lists(st.integers(), max_size=3), st.integers(), st.just("a string"), st.none()
)


@st.composite
def _alpaca_record(draw: st.DrawFn, dataset: str, corrupt: bool) -> Record:
    """A Dolly (``dolly``) or local (``local``) record, valid or (``corrupt``) invalid."""
    fields: dict[str, Any] = {"instruction": draw(TEXT), "response": draw(TEXT)}
    if dataset == "dolly" or draw(st.booleans()):
        fields["context"] = draw(TEXT)
    fields["category"] = draw(
        NAME | TEXT.filter(lambda s: s.strip()) | st.integers(-(2**40), 2**40)
    )
    if draw(st.booleans()):  # two or more distinct options, the response one of them
        others = draw(st.lists(TEXT, min_size=1, max_size=3, unique=True))
        choices = [c for c in others if c != fields["response"]] or [fields["response"] + "!"]
        choices.insert(draw(st.integers(0, len(choices))), fields["response"])
        fields["choices"] = choices
    for key in draw(st.lists(EXTRA_KEY, max_size=2, unique=True)):
        fields[key] = draw(TEXT)
    invalid = None
    # hypothesis favours small integers and first choices: odds are written as sampled lists
    unreadable = corrupt and draw(st.sampled_from([False] * 5 + [True]))
    if corrupt and not unreadable:
        fields, invalid = draw(_corrupt_alpaca(fields, dataset))
    ascii_only = draw(st.booleans())
    if invalid == "a lone surrogate":
        ascii_only = True  # json.dumps writes it as the escape \ud800 (raw, it is not UTF-8)
    text = _dumps(fields, ascii_only)
    if isinstance(fields, dict):
        raw = draw(EXTRA_RAW) if draw(st.booleans()) else None
        if unreadable:
            raw, invalid = draw(_UNREADABLE)
        if raw is not None:
            text = _with_raw(text, "x_raw", raw)
    return Record(text, invalid, True)


_UNREADABLE = st.sampled_from(
    [("9" * 5000, "a 5000-digit number"), ("[" * 100_000 + "]" * 100_000, "nested 100000 deep")]
)


@st.composite
def _corrupt_alpaca(draw: st.DrawFn, fields: dict[str, Any], dataset: str) -> tuple[Any, str]:
    fields = dict(fields)
    required = ["instruction", "response", "category"] + (["context"] if dataset == "dolly" else [])
    how = draw(
        st.sampled_from(
            ["missing", "type", "category", "choices", "surrogate", "not_object", "duplicates"]
        )
    )
    if how == "missing":
        name = draw(st.sampled_from(required))
        del fields[name]
        return fields, f"no `{name}`"
    if how == "type":
        name = draw(st.sampled_from(["instruction", "response", "context"]))
        fields[name] = draw(_BAD_TEXT)
        return fields, f"`{name}` is not a string"
    if how == "category":
        fields["category"] = draw(
            st.sampled_from([None, True, False, 1.5, "", "  ", "\t", [], ["a"], {"a": 1}])
        )
        return fields, "`category` is not a name"
    if how == "surrogate":
        name = draw(st.sampled_from(["instruction", "response", "category"]))
        fields[name] = "a\ud800b"
        fields.pop("choices", None)
        return fields, "a lone surrogate"
    if how == "not_object":
        return draw(_NOT_OBJECT), "not an object"
    response = fields["response"] if isinstance(fields["response"], str) else "r"
    fields["response"] = response
    if how == "duplicates":
        fields["choices"] = [response, response]
        return fields, "`choices` repeats an option"
    fields["choices"] = draw(
        st.sampled_from(
            [
                [response],
                response,
                [response, 1],
                [response, None],
                {"a": response},
                [response + "?", response + "!"],
            ]
        )
    )
    return fields, "bad `choices`"


@st.composite
def _snli_record(draw: st.DrawFn, corrupt: bool) -> Record:
    original = draw(st.booleans())
    if original:
        gold = draw(st.sampled_from(sorted(SNLI_NAMES)))
        fields: dict[str, Any] = {
            "sentence1": draw(TEXT),
            "sentence2": draw(TEXT),
            "gold_label": gold,
        }
        label = SNLI_NAMES[gold]
    else:
        label = draw(st.sampled_from([0, 1, 2, -1]))
        fields = {"premise": draw(TEXT), "hypothesis": draw(TEXT), "label": label}
    for key in draw(st.lists(EXTRA_KEY, max_size=2, unique=True)):
        fields[key] = draw(TEXT)
    invalid = None
    if corrupt:
        texts = ("sentence1", "sentence2") if original else ("premise", "hypothesis")
        hows = ["label", "no_label", "not_object"] + (["text", "missing"] if label != -1 else [])
        how = draw(st.sampled_from(hows))
        if how == "label" and original:
            fields["gold_label"] = draw(
                st.sampled_from(["maybe", "Entailment", 1, None, True, [0], {"a": 1}, ""])
            )
            invalid = "bad `gold_label`"
        elif how == "label":
            fields["label"] = draw(
                st.sampled_from([3, -2, 1.5, "1", "entailment", None, True, [1], {"a": 1}])
            )
            invalid = "bad `label`"
        elif how == "no_label":
            fields.pop("gold_label" if original else "label")
            invalid = "no label"
        elif how == "not_object":
            fields, invalid = draw(_NOT_OBJECT), "not an object"
        elif how == "text":
            fields[draw(st.sampled_from(texts))] = draw(_BAD_TEXT)
            invalid = "a text that is not a string"
        else:
            fields.pop(draw(st.sampled_from(texts)))
            invalid = "a missing text"
    return Record(_dumps(fields, draw(st.booleans())), invalid, label != -1 or invalid is not None)


def records(dataset: str, corrupt: bool = False) -> st.SearchStrategy[Record]:
    """A record of ``dataset``: valid, or (``corrupt``) invalid on purpose."""
    return _snli_record(corrupt) if dataset == "snli" else _alpaca_record(dataset, corrupt)


# --------------------------------------------------------------------------------------------------
# Files


@dataclasses.dataclass
class DataFile:
    name: str  # with its suffix: .jsonl or .json
    records: list[Record]
    encoding: str  # utf-8, utf-8-sig, latin-1, utf-16
    line_end: str
    blank_lines: int
    truncate: float | None  # keep this fraction of the last line (jsonl) or of the text (json)
    top_level: str | None  # .json: a non-list top level ("object", "number")

    def text(self) -> str:
        if self.name.endswith(".jsonl"):
            lines = [r.text for r in self.records] + [""] * self.blank_lines
            if self.truncate is not None and self.records:
                last = self.records[-1].text
                lines[len(self.records) - 1] = last[: max(1, int(len(last) * self.truncate))]
            return self.line_end.join(lines) + (self.line_end if lines else "")
        if self.top_level == "object":
            return '{"records": [' + ", ".join(r.text for r in self.records) + "]}"
        if self.top_level == "number":
            return "42"
        text = "[" + ",\n".join(r.text for r in self.records) + "]"
        if self.truncate is not None:
            text = text[: max(1, int(len(text) * self.truncate))]
        return text

    def content(self) -> bytes:
        text = self.text()
        if self.encoding == "latin-1":
            return (text + "\n").encode("latin-1", errors="replace") + b"\xff"
        return text.encode(self.encoding)

    def invalid(self) -> str | None:
        if self.encoding != "utf-8":
            return f"encoded as {self.encoding}"
        if self.top_level is not None:
            return "not a JSON list"
        if self.truncate is not None and (self.records or self.name.endswith(".json")):
            return "truncated"
        return next((r.invalid for r in self.records if r.invalid), None)

    def examples(self) -> int:
        return sum(r.counts for r in self.records)


def _plain_record(dataset: str, i: int) -> Record:
    """A simple valid record (three categories in turn), to give a partition enough data."""
    if dataset == "snli":
        fields: dict[str, Any] = {"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3}
    else:
        fields = {
            "instruction": f"q{i}",
            "context": "",
            "response": f"a{i}",
            "category": "xyz"[i % 3],
        }
    return Record(json.dumps(fields), None, True)


@st.composite
def data_files(draw: st.DrawFn, dataset: str, name: str, bulk: int = 0) -> DataFile:
    """A file of valid records in one of the valid layouts, with up to ``bulk`` plain records
    among them."""
    recs = draw(st.lists(records(dataset), max_size=4))
    plain = [_plain_record(dataset, i) for i in range(draw(st.integers(0, bulk)))]
    return DataFile(
        name=name + draw(st.sampled_from([".jsonl", ".json"])),
        records=draw(st.permutations(recs + plain)),
        encoding="utf-8",
        line_end=draw(st.sampled_from(["\n", "\r\n", "\r"])),
        blank_lines=draw(st.integers(0, 2)),
        truncate=None,
        top_level=None,
    )


@st.composite
def _spoil(draw: st.DrawFn, f: DataFile, dataset: str) -> None:
    """Make ``f`` invalid in one way: a bad record, an encoding, a cut, a top level."""
    hows = ["record"] * 4 + ["encoding"] + (["top_level"] if f.name.endswith(".json") else [])
    if f.records or f.name.endswith(".json"):
        hows.append("truncate")
    how = draw(st.sampled_from(hows))
    if how == "record":
        bad = draw(records(dataset, corrupt=True))
        f.records.insert(draw(st.integers(0, len(f.records))), bad)
    elif how == "encoding":
        f.encoding = draw(st.sampled_from(["utf-8-sig", "latin-1", "utf-16"]))
    elif how == "truncate":
        f.truncate = draw(st.floats(0, 1, exclude_max=True))
    else:
        f.top_level = draw(st.sampled_from(["object", "number"]))


@dataclasses.dataclass
class DataCase:
    """A dataset at ``data.path``: one file, or a folder of files (plus one that is ignored)."""

    dataset: str
    files: list[DataFile]
    folder: bool

    def write(self, root: Path) -> Path:
        target = root / "data"
        target.mkdir()
        for f in self.files:
            (target / f.name).write_bytes(f.content())
        if not self.folder:
            return target / self.files[0].name
        (target / "notes.txt").write_bytes(b"\xff not data, not read")
        return target

    def invalid(self) -> str | None:
        """Why loading must fail (a bad file or record, or no example at all), or None."""
        why = next((f.invalid() for f in self.files if f.invalid()), None)
        if why is None and not self.examples():
            return "no examples"
        return why

    def examples(self) -> int:
        return sum(f.examples() for f in self.files)


@st.composite
def data_cases(
    draw: st.DrawFn, datasets: tuple[str, ...] = ("local", "dolly", "snli"), bulk: int = 0
) -> DataCase:
    """A dataset of one file or a folder of files (each with up to ``bulk`` plain records
    besides the generated ones); half the time spoiled in one place."""
    dataset = draw(st.sampled_from(datasets))
    folder = draw(st.booleans())
    count = draw(st.sampled_from([1, 2, 3, 0])) if folder else 1  # 0: an empty folder
    files = [draw(data_files(dataset, f"part{i}", bulk)) for i in range(count)]
    if files and draw(st.booleans()):
        draw(_spoil(draw(st.sampled_from(files)), dataset))
    return DataCase(dataset, files, folder)


# --------------------------------------------------------------------------------------------------
# Natural Instructions


@dataclasses.dataclass
class NICase:
    """An NI checkout: ``tasks/`` (or the drafts' folder), the split list, the task files."""

    task_dir: str | None  # None: no task folder
    split: bytes | None  # the split file's bytes; None: no split file
    tasks: dict[str, bytes]  # file stem -> bytes
    invalid: str | None
    examples: int

    def write(self, root: Path) -> Path:
        ni = root / "ni"
        ni.mkdir()
        if self.split is not None:
            (ni / "splits" / "default").mkdir(parents=True)
            (ni / "splits" / "default" / "train_tasks.txt").write_bytes(self.split)
        if self.task_dir is not None:
            (ni / self.task_dir).mkdir()
            for stem, content in self.tasks.items():
                (ni / self.task_dir / f"{stem}.json").write_bytes(content)
        return ni


@st.composite
def _ni_task(draw: st.DrawFn, corrupt: bool) -> tuple[bytes, str | None, int]:
    """A task file's bytes, why it must be refused (``corrupt``; else None), its instances."""
    definition: Any = draw(st.lists(TEXT, max_size=2) | TEXT)
    instances: Any = [
        {"input": draw(TEXT), "output": draw(st.lists(TEXT, min_size=1, max_size=2) | TEXT)}
        for _ in range(draw(st.integers(0, 3)))
    ]
    how = draw(
        st.sampled_from(
            ["definition", "no_definition", "instances", "instance", "input", "output", "utf16"]
        )
        if corrupt
        else st.none()
    )
    if how == "definition":
        definition = draw(st.sampled_from([None, 5, [5], {"a": "b"}]))
    elif how == "instances":
        instances = draw(st.sampled_from([None, "x", {"input": "a"}]))
    elif how == "instance":
        instances = [*instances, draw(st.sampled_from([None, "x", 5, []]))]
    elif how == "input":
        instances = [*instances, {"input": draw(_BAD_TEXT), "output": ["o"]}]
    elif how == "output":
        bad_output = draw(st.sampled_from([None, [], [5], 5, {"a": "b"}, {}, [None]]))
        instances = [*instances, {"input": "i", "output": bad_output}]
    body = {"Definition": definition, "Instances": instances}
    if how == "no_definition":
        del body["Definition"]
    content = json.dumps(body, ensure_ascii=draw(st.booleans())).encode()
    if how == "utf16":
        content = json.dumps(body).encode("utf-16")
    size = len(instances) if isinstance(instances, list) else 0
    return content, None if how is None else f"a task file: {how}", size


@st.composite
def ni_cases(draw: st.DrawFn) -> NICase:
    """An NI checkout of one to three tasks (``data.num_tasks`` is meant to keep them all); half
    the time spoiled in one place: a task file, the split file, a missing folder."""
    stems = [f"task{i:03d}_{draw(NAME)}" for i in range(draw(st.integers(1, 3)))]
    listed = draw(st.lists(st.sampled_from(stems), min_size=1, unique=True))
    spoils = [None] * 4 + ["task"] * 2 + ["no_split", "no_tasks", "split_utf16"]
    spoil = draw(st.sampled_from(spoils))
    spoiled = draw(st.sampled_from(listed)) if spoil == "task" else None
    tasks, size, invalid = {}, {}, None
    for stem in stems:
        content, why, size[stem] = draw(_ni_task(stem == spoiled))
        # else no file: a listed task without one is skipped
        if stem == spoiled or draw(st.sampled_from([True] * 5 + [False])):
            tasks[stem] = content
            invalid = invalid or why
    present = [stem for stem in listed if stem in tasks]
    split: bytes | None = "\n".join([*listed, *[""] * draw(st.integers(0, 1))]).encode()
    task_dir: str | None = draw(st.sampled_from(["tasks", "tasks_pre_v2_drafts"]))
    if spoil == "no_split":
        split, invalid = None, "no split file"
    elif spoil == "no_tasks":
        task_dir, invalid = None, "no task folder"
    elif spoil == "split_utf16":
        split, invalid = "\n".join(listed).encode("utf-16"), "a split file in UTF-16"
    elif not present:
        invalid = "no listed task has a file"
    examples = sum(size[stem] for stem in present)
    if invalid is None and not examples:
        invalid = "no examples"
    return NICase(task_dir, split, tasks, invalid, examples)
