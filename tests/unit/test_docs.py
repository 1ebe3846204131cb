"""The published collaboration benchmark quotes what `make bench-collab` wrote: the results table
and the paired differences of docs/results/collaboration.md equal
docs/results/collaboration/table.md's, and every figure the page shows exists. The repository
cites only its own docs pages, and every cited anchor exists."""

from __future__ import annotations

import re
import subprocess
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "docs" / "results" / "collaboration" / "table.md"
PAGE = ROOT / "docs" / "results" / "collaboration.md"


def _table(text: str, first_cell: str) -> list[str]:
    """The markdown table whose header row starts with ``| <first_cell>``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell}"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def _section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1]


def test_page_quotes_the_generated_tables():
    generated, page = GENERATED.read_text(), PAGE.read_text()
    results = _table(generated, "method ")
    assert results[-1].startswith("| gain (%)")
    assert _table(page, "method ") == results
    paired = _table(_section(generated, "### Paired differences against"), "method ")
    assert _table(_section(page, "### Paired differences against"), "method ") == paired


def test_page_figures_exist():
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", PAGE.read_text())
    assert figures
    for figure in figures:
        assert (PAGE.parent / figure).is_file(), figure


# --------------------------------------------------------------------------------------------------
# The repository stands alone: it cites its own docs/ pages, never notes kept outside it.

# Built by concatenation so that this file does not trip its own check.
_OUTSIDE_NOTES = tuple(stem + ".md" for stem in ("SP" + "EC", "DES" + "IGN", "STY" + "LE"))
_BARE_NOTE = re.compile(r"\b" + "SP" + r"EC\s+(section\s+)?\d")  # "<notes> 5.4" without ".md"
_OUTSIDE_DIR = ".." + "/shared/"
_OFFLINE_DATA = ".." + "/shared/data"
_CHECKED = ("src", "tests", "configs", "docs", "deploy", "README.md", "Makefile", "pyproject.toml")
# The only places that may name the offline dataset copies beside the repository: tests (through
# tests/conftest.py's SHARED_DATA) and the Makefile, which makes them the data root
# (FEDAMOLE_DATA) where they exist. Configs name data relative to the data root
# (docs/data.md#where-datapath-resolves).
_OFFLINE_DATA_ALLOWED = {
    "tests/*": _OFFLINE_DATA,
    "Makefile": _OFFLINE_DATA,
}
_DOC_LINK = re.compile(r"docs/([\w./-]+?\.md)#([\w-]+)")
_MD_LINK = re.compile(r"\]\(([\w./-]*?\.md)?#([\w-]+)\)")


def _checked_files() -> list[Path]:
    """Text files under ``_CHECKED`` that git tracks or would track (untracked, not ignored); where
    there is no git checkout, every file there except caches and build output."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *_CHECKED],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        paths = [ROOT / p for p in listed.stdout.decode().split("\0") if p]
    else:
        skip = ("__pycache__", ".egg-info", ".pytest_cache", ".ruff_cache")
        paths = [
            p
            for name in _CHECKED
            for p in ([ROOT / name] if (ROOT / name).is_file() else (ROOT / name).rglob("*"))
            if not any(part.endswith(skip) for part in p.parts)
        ]
    return sorted(p for p in paths if p.is_file() and _is_text(p))


def _is_text(path: Path) -> bool:
    data = path.read_bytes()
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _allowed_data_mention(rel: str) -> str | None:
    return next((s for pattern, s in _OFFLINE_DATA_ALLOWED.items() if fnmatch(rel, pattern)), None)


def test_no_citation_of_files_outside_the_repository():
    forbidden = [re.escape(name) for name in (*_OUTSIDE_NOTES, _OUTSIDE_DIR)]
    pattern = re.compile("|".join([*forbidden, _BARE_NOTE.pattern]))
    problems = []
    for path in _checked_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        allowed = _allowed_data_mention(rel)
        if allowed:  # blank the allowed mentions out, keeping every offset
            text = text.replace(allowed, " " * len(allowed))
        for match in pattern.finditer(text):
            lineno = text.count("\n", 0, match.start()) + 1
            problems.append(f"{rel}:{lineno}: {' '.join(match.group(0).split())}")
    assert not problems, (
        "cite the docs/ pages (docs/algorithm.md#..., docs/data.md, docs/config.md, "
        "docs/run-directory.md) instead of files outside the repository:\n" + "\n".join(problems)
    )


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than '-' and '_' dropped,
    spaces turned into '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, seen, fenced = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"#{1,6} (.+)", line)
        if match and not fenced:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_cited_docs_anchors_exist():
    """Every ``docs/<page>.md#<anchor>`` in the checked files, and every ``(page.md#anchor)`` or
    ``(#anchor)`` link of a docs page, names a heading of that page."""
    problems = []
    for path in _checked_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        cited = [(ROOT / "docs" / page, anchor) for page, anchor in _DOC_LINK.findall(text)]
        if rel.startswith("docs/") and rel.endswith(".md"):
            cited += [
                (path.parent / page if page else path, anchor)
                for page, anchor in _MD_LINK.findall(text)
            ]
        for page, anchor in cited:
            if not page.is_file():
                problems.append(f"{rel}: {page.relative_to(ROOT)} does not exist")
            elif anchor not in _anchors(page):
                problems.append(f"{rel}: {page.relative_to(ROOT)} has no heading #{anchor}")
    assert not problems, "\n".join(sorted(set(problems)))
