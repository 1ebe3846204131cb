"""fedamole."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("fedamole")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
