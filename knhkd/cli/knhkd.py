"""``knhkd``: run the daemon, or check a configuration file.

Exit status: 0 clean stop; 1 the daemon failed while running (an actor past its
restart budget), so systemd restarts it; 2 usage, configuration or start-up
error, with one line on stderr saying which step failed.

``run`` and ``check-config`` find the configuration file the same way
(``config.locate``: ``--config``, ``$KNHKD_CONFIG``, ``/etc/knhkd/knhkd.toml``,
embedded defaults), apply the same environment and flags, and run the same
checks of every file it names (loop/preflight.py) before ``run`` touches the
data directory: ``check-config`` passes exactly when ``run`` would get past
its configuration, and creates nothing.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from knhkd import __version__
from knhkd.api.pool import Prefork, started
from knhkd.config import DEFAULT_CONF, Config, ConfigError, load, locate, parse_bind
from knhkd.telemetry import logs


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(_leaves(sub))
        return out
    return [exc]


def _config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        help="TOML configuration file (default: $KNHKD_CONFIG, else /etc/knhkd/knhkd.toml "
        "when it exists, else the embedded defaults)",
    )
    p.add_argument("--data-dir", help="data directory (overrides the file and KNHKD_DATA_DIR)")
    p.add_argument("--http-bind", help="HOST:PORT for the HTTP API")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knhkd", description="The knhkd knowledge daemon.")
    p.add_argument("--version", action="version", version=f"knhkd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    _config_options(run)
    check = sub.add_parser(
        "check-config",
        help="check the configuration run would use, and every file it names, then exit",
    )
    check.add_argument("file", type=Path, nargs="?", help="the same as --config FILE")
    _config_options(check)
    keygen = sub.add_parser(
        "keygen",
        help="write a new signing key file (mode 0600) for keys.signing_key or a credential",
    )
    keygen.add_argument("file", type=Path, help="must not exist")
    mig = sub.add_parser(
        "migrate",
        help="migrate a stopped daemon's store to this release's schema "
        "(backup first, then verify and receipt)",
    )
    _config_options(mig)
    mig.add_argument("--dry-run", action="store_true", help="say what would be done; write nothing")
    return p


def _overrides(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    if args.data_dir:
        out[("storage", "data_dir")] = args.data_dir
    if getattr(args, "http_bind", None):
        parse_bind(args.http_bind)
        out[("http", "bind")] = args.http_bind
    return out


def _configuration(
    args: argparse.Namespace, inherited_bind: str | None = None
) -> tuple[Config, Path | None, str, dict[tuple[str, str], Any], list[str]]:
    """What run uses and check-config checks: the file ``locate`` finds, the
    environment, the flags; then every file it names (loop/preflight.py).
    Raises ``ConfigError``; creates nothing."""
    from knhkd.loop.preflight import check

    path, source = locate(args.config or getattr(args, "file", None), os.environ)
    overrides = _overrides(args)
    if inherited_bind is not None:
        overrides[("http", "bind")] = inherited_bind
    cfg = load(path, env=os.environ, overrides=overrides)
    unchecked = check(cfg, outside_unit=args.command == "check-config")
    return cfg, path, source, overrides, unchecked


def _fail(msg: str) -> int:
    print(f"knhkd: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        import time

        from knhkd.crypto.keys import generate_file

        try:
            signer = generate_file(args.file, time.time_ns())
        except OSError as exc:
            return _fail(f"{args.file}: {exc.strerror}")
        # The key id only: the key itself is never printed.
        print(f"{args.file}: signing key {signer.key_id}")
        return 0
    inherited_bind = None
    if args.command == "run":
        from knhkd.api import activation

        try:
            # Sockets systemd passes are what is served: the configuration is
            # checked against their address, whatever the file or flags say.
            inherited_bind = activation.bind_of(activation.inherit().get("http", []))
        except activation.ActivationError as exc:
            return _fail(f"cannot start: socket activation: {exc}")
    try:
        cfg, path, source, overrides, unchecked = _configuration(args, inherited_bind)
    except ConfigError as exc:
        found = locate(args.config or getattr(args, "file", None), os.environ)[0]
        return _fail(f"{found or 'embedded defaults'}: invalid configuration: {exc}")
    where = f"{path} (from {source})" if path else source
    if args.command == "migrate":
        return _migrate(cfg, dry_run=args.dry_run)
    if args.command == "check-config":
        print(f"{where}: ok (digest {cfg.digest()[:16]})")
        if unchecked:
            # Only the unit's processes see $CREDENTIALS_DIRECTORY.
            print(
                "not checked (systemd credentials, readable inside the unit only): "
                + ", ".join(unchecked)
            )
        return 0
    logs.configure(cfg.telemetry)
    logging.getLogger("knhkd").debug(
        "configuration %s, digest %s, conf tree %s", where, cfg.digest()[:16], DEFAULT_CONF
    )
    from knhkd.api.pool import prefork
    from knhkd.api.worker import run_forked  # the edge: the workers share it

    try:
        # The HTTP workers (http.workers > 1), forked now: they share the
        # imports so far, and start while the daemon starts (api/pool.py).
        made = prefork(cfg, run_forked)
        return trio.run(_run, cfg, path, overrides, made)
    except BaseException as exc:  # classify, then re-raise what we do not know
        from knhkd.loop.startup import StartupError
        from knhkd.loop.supervisor import ActorFailed

        leaves = _leaves(exc)
        for leaf in leaves:
            if isinstance(leaf, StartupError):
                return _fail(f"cannot start: {leaf}")
            if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
                return _fail(f"cannot start: http: {cfg.http.bind} is already in use")
            if isinstance(leaf, ActorFailed):
                print(f"knhkd: stopped: {leaf}", file=sys.stderr)
                return 1
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            return 130
        raise


async def _run(
    cfg: Config, path: Path | None, overrides: dict[tuple[str, str], Any], made: Prefork | None
) -> int:
    """The HTTP worker processes first (with ``http.workers`` > 1: those
    ``prefork`` made, else started now), then the daemon's imports and
    start-up, which the workers' own start overlaps (api/pool.py)."""
    async with started(cfg, made) as pool:
        from knhkd.api.admin import serve_admin
        from knhkd.api.http import serve_http
        from knhkd.loop.state import Settings
        from knhkd.loop.tree import run_daemon

        settings = Settings(cfg, path=path, env=os.environ, overrides=overrides)
        return await run_daemon(settings, [serve_admin, partial(serve_http, pool=pool)])


def _migrate(cfg: Config, *, dry_run: bool) -> int:
    """0 migrated (or nothing to do) and verified; 1 migrated but the
    verification found inconsistencies (the backup is named); 2 refused."""
    from knhkd.crypto.keys import KeyFileError
    from knhkd.datadir.migrate import MigrationError, migrate
    from knhkd.receipts import keyring
    from knhkd.store.env import StoreError

    try:
        report = migrate(
            cfg.data_dir,
            lambda store: keyring.reconcile(store, cfg.signing_key_path),
            dry_run=dry_run,
            map_size=cfg.storage.map_size_mb * 1024 * 1024,
        )
    except (MigrationError, StoreError, KeyFileError, ConfigError, OSError) as exc:
        return _fail(f"migrate: {exc}")
    what = f"schema v{report.from_version} -> v{report.to_version}"
    if report.from_version == report.to_version:
        print(f"{cfg.data_dir}: already at schema v{report.to_version}; nothing to do")
        return 0
    if report.dry_run:
        print(f"{cfg.data_dir}: would migrate {what}, after a backup in {report.backup}:")
        for step in report.steps:
            print(f"  {step}")
        return 0
    backup = f"{report.backup}" + (f" ({report.manifest.id})" if report.manifest else "")
    print(f"{cfg.data_dir}: migrated {what}; backup {backup}")
    for step in report.steps:
        print(f"  {step}")
    if report.fsck is not None and not report.fsck.ok:
        for error in report.fsck.errors:
            print(f"knhkd: migrate: verification: {error}", file=sys.stderr)
        print(
            f"knhkd: migrate: restore the backup: knhkctl restore --from {report.backup} "
            f"--data-dir {cfg.data_dir} --force",
            file=sys.stderr,
        )
        return 1
    checked = report.fsck.checked if report.fsck else {}
    print(f"  verified: fsck ok, {checked.get('receipts', 0)} receipts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
