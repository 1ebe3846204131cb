"""Logging to the console and to the run's ``log.txt`` (docs/run-directory.md#logtxt)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["setup_logging"]


def setup_logging(level: str = "INFO", log_file: Path | None = None) -> None:
    """Console logging plus an optional file (appended, so a resumed run keeps its history)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_fedamole", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._fedamole = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "filelock", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
