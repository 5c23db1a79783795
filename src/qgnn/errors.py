"""Errors that reach the user.

Every error a user can cause (an unknown name, a missing file, a corrupt
checkpoint, a bad bit-width) is a :class:`QgnnError`. The CLI prints its message
and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class QgnnError(Exception):
    """Base class of user-facing errors; the message must say what to do."""


class UnknownNameError(QgnnError, KeyError):
    """A dataset, model, method or quantizer name that qgnn does not know."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class DataNotFoundError(QgnnError, FileNotFoundError):
    """Raw dataset files are missing and could not be downloaded."""


class CheckpointError(QgnnError):
    """A checkpoint or results file is missing, truncated or corrupt."""


class ConfigError(QgnnError, ValueError):
    """A configuration value is out of range or inconsistent."""


def lookup(kind: str, name: str, table: dict):
    """Case-insensitive lookup in a name -> object table, with a helpful error."""
    key = name.lower().replace("_", "-") if isinstance(name, str) else name
    for k, v in table.items():
        if k.lower().replace("_", "-") == key:
            return v
    raise UnknownNameError(kind, name, table.keys())
