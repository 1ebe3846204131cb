"""Helpers of the data tests: the hand-made files under tests/fixtures/data, config builders."""

from __future__ import annotations

from pathlib import Path

from fedamole.config import Config, DataConfig

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "data"


def data_config(**fields) -> DataConfig:
    """A DataConfig with the given fields (paths as strings)."""
    return DataConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in fields.items()})


def config(data: dict | None = None, partition: dict | None = None, **sections) -> Config:
    """A Config validated from section dicts."""
    return Config.model_validate({"data": data or {}, "partition": partition or {}, **sections})
