"""``knhkd``: run the daemon, or check a configuration file.

Exit status: 0 clean stop; 1 the daemon failed while running (an actor past its
restart budget), so systemd restarts it; 2 usage, configuration or start-up
error, with one line on stderr saying which step failed. Both commands refuse
a non-loopback ``http.bind`` without ``[[auth.issuers]]`` (config.py) and an
issuer's ``jwks_file`` that holds no usable key, naming the setting.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any

import trio

from knhkd import __version__
from knhkd.config import Config, ConfigError, load, parse_bind


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(_leaves(sub))
        return out
    return [exc]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knhkd", description="The knhkd knowledge daemon.")
    p.add_argument("--version", action="version", version=f"knhkd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    run.add_argument("--data-dir", help="data directory (overrides the file and KNHKD_DATA_DIR)")
    run.add_argument("--http-bind", help="HOST:PORT for the HTTP API")
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path)
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
    mig.add_argument("--config", type=Path, help="TOML configuration file")
    mig.add_argument("--data-dir", help="data directory (overrides the file and KNHKD_DATA_DIR)")
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


def _check_keys(cfg: Config) -> None:
    """Each issuer's JWKS file must hold a usable key (a URI is fetched
    later: an offline start must not wait for it)."""
    from knhkd.auth.jwks import IssuerKeys, KeySetError

    for i, issuer in enumerate(cfg.auth.issuers):
        if issuer.jwks_file:
            try:
                IssuerKeys(issuer).load()
            except KeySetError as exc:
                raise ConfigError(f"auth.issuers[{i}].jwks_file", str(exc)) from None


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
    if args.command == "check-config":
        try:
            cfg = load(args.file, env={})
            _check_keys(cfg)
        except ConfigError as exc:
            return _fail(f"{args.file}: invalid configuration: {exc}")
        print(f"{args.file}: ok (digest {cfg.digest()[:16]})")
        return 0
    try:
        overrides = _overrides(args)
        cfg = load(args.config, env=os.environ, overrides=overrides)
        _check_keys(cfg)
    except ConfigError as exc:
        return _fail(f"invalid configuration: {exc}")
    if args.command == "migrate":
        return _migrate(cfg, dry_run=args.dry_run)
    logging.basicConfig(
        level=cfg.telemetry.log_level.upper(),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from knhkd.api.admin import serve_admin
    from knhkd.api.http import serve_http
    from knhkd.loop.startup import StartupError
    from knhkd.loop.state import Settings
    from knhkd.loop.supervisor import ActorFailed
    from knhkd.loop.tree import run_daemon

    settings = Settings(cfg, path=args.config, env=os.environ, overrides=overrides)
    try:
        return trio.run(run_daemon, settings, [serve_admin, serve_http])
    except BaseException as exc:  # classify, then re-raise what we do not know
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
        print(f"{cfg.data_dir}: would migrate {what}, after a backup beside it:")
        for step in report.steps:
            print(f"  {step}")
        return 0
    print(f"{cfg.data_dir}: migrated {what}; backup {report.backup}")
    for step in report.steps:
        print(f"  {step}")
    if report.fsck is not None and not report.fsck.ok:
        for error in report.fsck.errors:
            print(f"knhkd: migrate: verification: {error}", file=sys.stderr)
        return 1
    checked = report.fsck.checked if report.fsck else {}
    print(f"  verified: fsck ok, {checked.get('receipts', 0)} receipts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
