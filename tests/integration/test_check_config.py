"""``knhkd check-config`` is ``run``'s checks without the side effects, and
``run`` makes them all before it touches the data directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import CONF, free_port, write_config
from tests.integration.conftest import run_knhkd as _knhkd

pytestmark = pytest.mark.integration


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_check_config_applies_the_environment_as_run_does(tmp_path: Path) -> None:
    conf = write_config(tmp_path / "k.toml")
    assert _knhkd("check-config", str(conf)).returncode == 0
    line = _one_line(_knhkd("check-config", str(conf), env={"KNHKD_LOG_LEVEL": "loud"}))
    assert "telemetry.log_level" in line and str(conf) in line
    # $KNHKD_CONFIG names the file when no argument does, for both commands.
    res = _knhkd("check-config", env={"KNHKD_CONFIG": str(conf)})
    assert res.returncode == 0 and f"{conf} (from $KNHKD_CONFIG): ok" in res.stdout, res


@pytest.mark.parametrize(
    ("name", "replace", "says"),
    [
        # A custom check the configuration does not enable.
        ("generic.toml", ('"no_blank_nodes"', '"no_such_check"'), "doctrine[1].constraint.rule"),
        ("generic.toml", ("effective_date = 2024-01-01", 'effective_date = "soon"'), "doctrine[0]"),
        ("nonsense.toml", None, "named after its sector"),
    ],
)
def test_a_bad_doctrine_file_fails_both_and_run_creates_nothing(
    tmp_path: Path, name: str, replace: tuple[str, str] | None, says: str
) -> None:
    docs = tmp_path / "doctrines"
    shutil.copytree(CONF / "doctrines", docs)
    text = (docs / name).read_text() if replace else ""
    (docs / name).write_text(text.replace(*replace) if replace else text)
    conf = write_config(tmp_path / "k.toml")
    conf.write_text(conf.read_text().replace(f'"{CONF / "doctrines"}"', f'"{docs}"'))
    line = _one_line(_knhkd("check-config", "--config", str(conf)))
    assert "governance.doctrines_dir" in line and str(docs / name) in line, line
    assert says in line, line
    data = tmp_path / "data"
    res = _knhkd(
        "run", "--config", str(conf), "--data-dir", str(data),
        "--http-bind", f"127.0.0.1:{free_port()}",
    )
    assert _one_line(res) == line
    assert not data.exists()


def test_broken_shapes_and_a_missing_tls_key_are_named(tmp_path: Path) -> None:
    shapes = tmp_path / "shapes"
    shutil.copytree(CONF / "shapes", shapes)
    (shapes / "observations" / "finance.ttl").write_text("@prefix : <urn:x#> .\n:a :b")
    conf = write_config(
        tmp_path / "k.toml", f'[ingest]\nobservation_shapes_dir = "{shapes}/observations"\n'
    )
    line = _one_line(_knhkd("check-config", str(conf)))
    assert "ingest.observation_shapes_dir" in line and "finance.ttl" in line, line
    conf = write_config(
        tmp_path / "k.toml",
        f'[http.tls]\ncertfile = "{tmp_path}/cert.pem"\nkeyfile = "{tmp_path}/key.pem"\n',
    )
    line = _one_line(_knhkd("check-config", str(conf)))
    assert "http.tls" in line and "key.pem" in line, line


def test_a_storage_key_others_may_read_is_named(tmp_path: Path) -> None:
    key = tmp_path / "storage.key"
    key.write_bytes(bytes(range(32)))
    key.chmod(0o644)
    conf = write_config(tmp_path / "k.toml", f'[storage]\nencryption_key = "{key}"\n')
    line = _one_line(_knhkd("check-config", str(conf)))
    assert "storage.encryption_key" in line and "too open" in line, line
    key.chmod(0o600)
    assert _knhkd("check-config", str(conf)).returncode == 0
