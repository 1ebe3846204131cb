"""The record every dataset is converted to, the per-client bundle of splits, and the errors of
the data modules."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ClientData", "DataError", "DataFileNotFoundError", "Example", "FederatedData"]


@dataclass(frozen=True)
class Example:
    """One instruction example, already rendered to its prompt (docs/algorithm.md#data-format).

    Attributes:
        prompt: the full source text fed to the model (template applied).
        response: the target text, without EOS (collation appends it).
        category: the class used for heterogeneity (NLI label, Dolly category, NI task id, family).
        choices: for answer-choice tasks, the candidate answers (``response`` is one of them);
            empty for free-text tasks, which are scored by generation and ROUGE-L.
        instruction / context: the raw fields, kept for reports and export.
    """

    prompt: str
    response: str
    category: str
    choices: tuple[str, ...] = ()
    instruction: str = ""
    context: str = ""

    @property
    def is_choice(self) -> bool:
        return len(self.choices) > 0


@dataclass(frozen=True)
class ClientData:
    """One client's splits (docs/data.md#client-splits): train, embedding ("aux"), eval and test."""

    train: tuple[Example, ...]
    embedding: tuple[Example, ...]
    eval: tuple[Example, ...]
    test: tuple[Example, ...]


@dataclass(frozen=True)
class FederatedData:
    """Every client's data plus what describes it."""

    clients: tuple[ClientData, ...]
    categories: tuple[str, ...]
    dataset: str
    meta: dict = field(default_factory=dict)

    def client_categories(self) -> list[frozenset[str]]:
        """Each client's categories in the partition (before the split caps)."""
        counts = self.meta["partition_counts"]  # N lists of C ints
        return [
            frozenset(name for name, n in zip(self.categories, row, strict=True) if n)
            for row in counts
        ]


class DataError(ValueError):
    """A dataset or partition problem, naming the file or field, the value and the fix."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file or folder that does not exist."""
