"""The daemon's log lines on stderr: text or JSON lines, journald-aware.

Guarantees:
- Under journald (``$JOURNAL_STREAM`` names stderr's device and inode, as
  systemd sets it) every line starts with the sd-daemon priority prefix
  ``<N>`` (3 error, 4 warning, 6 info, 7 debug), continuation lines of a
  traceback included, so ``journalctl -p err`` finds errors.
- ``log_format = "json"``: one JSON object per record (``ts``, ``level``,
  ``logger``, ``msg``, ``exc`` for a traceback, and the structured fields a
  record carries in ``extra={"fields": {...}}``, such as the access log's).
- ``configure`` may be called again (a reload): it replaces the handler it
  installed, never adds a second one.

Must never: format a record's arguments twice, or log anything itself (the
callers decide what is logged; key material and tokens never are).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from knhkd.config import TelemetryConfig

# sd-daemon(3) priorities by logging level.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels in between round down)."""
    for level, prio in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return prio
    return 7


def under_journald(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """``stream`` is the journal's stream: ``$JOURNAL_STREAM`` is its
    ``device:inode`` (systemd.exec(5)); a redirected stderr is not."""
    dev, sep, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class JournaldFormatter(logging.Formatter):
    """Prefixes every line of what ``inner`` formats with ``<N>``."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self._inner.format(record).split("\n"))


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs (found again by its type)."""


class _Tagged(logging.Filter):
    """Names the process a record comes from (``knhkd.http[worker 1]``)."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self._suffix = f"[{tag}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self._suffix):
            record.name += self._suffix
        return True


def configure(
    cfg: TelemetryConfig,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    tag: str = "",
) -> None:
    """Log records at ``cfg.log_level`` and above to ``stream`` (stderr) in
    ``cfg.log_format``, with priority prefixes under journald; ``tag`` names
    a process other than the daemon's own (an HTTP worker)."""
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    formatter: logging.Formatter = (
        JsonFormatter() if cfg.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    if under_journald(stream, environ):
        formatter = JournaldFormatter(formatter)
    handler = _Handler(stream)
    handler.setFormatter(formatter)
    if tag:
        handler.addFilter(_Tagged(tag))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(cfg.log_level.upper())
