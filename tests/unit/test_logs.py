from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

from knhkd.config import TelemetryConfig
from knhkd.telemetry import logs


def _emit(cfg: TelemetryConfig, stream: io.TextIOBase | object, environ: dict[str, str]) -> None:
    logs.configure(cfg, stream, environ)  # type: ignore[arg-type]
    log = logging.getLogger("knhkd.test")
    log.error("first\nsecond")
    try:
        raise ValueError("boom")
    except ValueError:
        log.warning("caught", exc_info=True)
    log.debug("hidden at info")


def test_journald_prefixes_every_line_only_for_the_journals_own_stream(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        with path.open("w") as stream:
            st = os.fstat(stream.fileno())
            _emit(TelemetryConfig(), stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        lines = path.read_text().splitlines()
        assert lines[0] == "<3>ERROR knhkd.test: first" and lines[1] == "<3>second"
        assert lines[2] == "<4>WARNING knhkd.test: caught"
        assert all(line.startswith("<4>") for line in lines[2:]) and len(lines) > 4
        # Another stream (stderr redirected to a file) gets no prefix.
        with path.open("w") as stream:
            _emit(TelemetryConfig(), stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not any(line.startswith("<") for line in path.read_text().splitlines())
        with path.open("w") as stream:
            _emit(TelemetryConfig(log_format="json", log_level="debug"), stream, {})
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["level"] for r in records] == ["error", "warning", "debug"]
        assert records[0]["msg"] == "first\nsecond" and "ValueError: boom" in records[1]["exc"]
        # configure replaced its handler each time rather than adding one.
        assert sum(isinstance(h, logging.StreamHandler) for h in root.handlers) <= len(handlers) + 1
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
