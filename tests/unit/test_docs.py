"""The published CPU benchmark quotes what `make bench-quality` wrote: the main table of
docs/results/cpu-benchmark.md and of the README equals docs/results/cpu-benchmark/table.md's, and
every figure the page shows exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "docs" / "results" / "cpu-benchmark" / "table.md"
PAGE = ROOT / "docs" / "results" / "cpu-benchmark.md"


def _main_table(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method "))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


def test_page_and_readme_quote_the_generated_table():
    table = _main_table(GENERATED.read_text())
    assert table[-1].startswith("| gain (%)")
    assert _main_table(PAGE.read_text()) == table
    assert (
        _main_table((ROOT / "README.md").read_text().split("### CPU quality benchmark")[1]) == table
    )


def test_page_figures_exist():
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", PAGE.read_text())
    assert figures
    for figure in figures:
        assert (PAGE.parent / figure).is_file(), figure


def test_page_quotes_the_generated_verdict():
    verdict = [line for line in GENERATED.read_text().splitlines() if line.startswith("- **")]
    assert verdict and all(line in PAGE.read_text() for line in verdict)
