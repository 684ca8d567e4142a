"""The anchor: the latest signed checkpoint, kept beside the store but outside
LMDB (``DATA_DIR/checkpoint.anchor``), so that a store that silently opens an
older or an empty state (a damaged LMDB meta page, a restored old copy of
``data.mdb``) can be told apart from the history it has already published.

The text is opaque here (a C2SP tlog-checkpoint signed note: receipts/
tlog_checkpoint.py parses and verifies it).

Guarantees:
- ``write`` is atomic and durable: a temporary file in the same directory is
  written and fsynced, renamed over the anchor, and the directory fsynced; a
  reader sees the old anchor or the new one, never a torn one. The temporary
  file is removed when any step fails, and the error is raised.
- ``read`` returns None only when there is no anchor file; an unreadable one
  (not UTF-8, an I/O error) raises ``AnchorError``, never passes for absent.

Must never: be written before the checkpoint it holds is durably committed
(the caller's duty: loop/checkpointer.py writes it after the commit returns);
parse or trust what it holds.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FILENAME = "checkpoint.anchor"
# Bigger than any checkpoint note knhkd writes (origin, size, root, signatures):
# a larger file is not ours, and is not read whole into memory.
MAX_BYTES = 64 * 1024


class AnchorError(Exception):
    """The anchor file exists but cannot be read as text."""


def path_in(data_dir: Path) -> Path:
    return data_dir / FILENAME


def read(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AnchorError(f"{path}: cannot read the anchor: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise AnchorError(f"{path}: the anchor is over {MAX_BYTES} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise AnchorError(f"{path}: the anchor is not UTF-8 text") from None


def write(path: Path, text: str) -> None:
    """Replace the anchor with ``text``, atomically and durably."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
