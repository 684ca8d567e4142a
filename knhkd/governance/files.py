"""Decoding governance files (TOML) into model records, with errors that name
the file and the key at fault.

Guarantees:
- Unknown keys, wrong types and out-of-range values are errors; nothing is
  coerced (a string is never read as a number) and nothing is ignored.
- Every error is a ``GovernanceFileError`` whose text starts with the file,
  then the dotted key (``doctrine[0].constraint.required_signers``).

Must never: read any file but the one it is asked to decode.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from knhkd.config import error_key
from knhkd.knowledge.rdf import KnowledgeError

T = TypeVar("T")


class GovernanceError(KnowledgeError):
    """Doctrines or guards that cannot be used."""


class GovernanceFileError(GovernanceError):
    """A governance file that cannot be used; ``path`` and ``key`` say where."""

    def __init__(self, path: Path, key: str, message: str) -> None:
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")
        self.path = path
        self.key = key
        self.message = message


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise GovernanceFileError(path, "", f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise GovernanceFileError(path, "", exc.strerror or str(exc)) from None


def convert(raw: Any, typ: type[T], path: Path, prefix: str) -> T:
    """``raw`` as a ``typ``; on error the key is ``prefix`` + msgspec's path."""
    try:
        return msgspec.convert(raw, typ, strict=True)
    except msgspec.ValidationError as exc:
        key, msg = error_key(exc)
        if key.startswith("[") or not key:
            full = prefix + key
        else:
            full = f"{prefix}.{key}" if prefix else key
        raise GovernanceFileError(path, full, msg) from None


def entries(raw: dict[str, Any], table: str, path: Path) -> list[Any]:
    """The array of tables ``[[table]]``, refusing any other top-level key."""
    for key in raw:
        if key != table:
            raise GovernanceFileError(path, key, f"unknown key (expected only [[{table}]])")
    items = raw.get(table, [])
    if not isinstance(items, list):
        raise GovernanceFileError(path, table, f"expected an array of tables [[{table}]]")
    return items
