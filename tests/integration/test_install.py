"""Installed outside the checkout, knhkd starts from any directory: ``pip
install .`` (a wheel, not editable) into a fresh venv, then ``knhkd run``
with ``cwd=/``, its conf tree from the package, its configuration found by
``$KNHKD_CONFIG``, and ``knhkctl`` finding the daemon from the same file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REPO, free_port

pytestmark = pytest.mark.integration

SOURCES = ("conf", "knhkd", "native", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in")


def _install(tmp_path: Path) -> Path:
    """A venv under ``tmp_path`` with knhkd installed from a copy of the
    sources; its dependencies are the test venv's (a .pth line), so the
    install is offline and builds only knhkd itself."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.o", "build", "_conf", "*.egg-info")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    Path(purelib, "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
            "--no-deps", "--no-build-isolation", "--no-index", str(src),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert Path(purelib, "knhkd", "_conf", "shapes", "observations", "finance.ttl").is_file()
    return venv


def test_pip_install_then_run_from_root(tmp_path: Path) -> None:
    venv = _install(tmp_path)
    etc = tmp_path / "etc"
    etc.mkdir()
    conf = etc / "knhkd.toml"
    port = free_port()
    # Relative to the file: ../lib/knhkd is tmp_path/lib/knhkd whatever the cwd.
    conf.write_text(
        f'[storage]\ndata_dir = "../lib/knhkd"\n[http]\nbind = "127.0.0.1:{port}"\n'
        "[loop]\ninterval_s = 3600\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNHKD_")}
    env["KNHKD_CONFIG"] = str(conf)
    check = subprocess.run(
        [str(venv / "bin" / "knhkd"), "check-config"],
        cwd="/", env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert check.returncode == 0 and "(from $KNHKD_CONFIG): ok" in check.stdout, check
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "knhkd"), "run"],
            cwd="/", env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        text = log_path.read_text()
        # The conf tree is the installed package's, not a checkout's.
        assert f"from {venv}/lib/" in text and "/knhkd/_conf/shapes/observations/" in text, text
        assert (tmp_path / "lib" / "knhkd" / "admin.sock").exists()
        # knhkctl finds the data directory and the admin socket from the same file.
        status = subprocess.run(
            [str(venv / "bin" / "knhkctl"), "status", "--format", "json"],
            cwd="/", env=env, capture_output=True, text=True, timeout=60, check=False,
        )
        assert status.returncode == 0, status.stderr
        assert str(tmp_path / "lib" / "knhkd") in status.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
