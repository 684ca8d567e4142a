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
    return p


def _overrides(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    if args.data_dir:
        out[("storage", "data_dir")] = args.data_dir
    if args.http_bind:
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
    from knhkd.api import activation

    try:
        # Sockets systemd passes are what is served: the configuration is
        # checked against their address, whatever the file or flags say.
        inherited_bind = activation.bind_of(activation.inherit().get("http", []))
    except activation.ActivationError as exc:
        return _fail(f"cannot start: socket activation: {exc}")
    try:
        overrides = _overrides(args)
        if inherited_bind is not None:
            overrides[("http", "bind")] = inherited_bind
        cfg = load(args.config, env=os.environ, overrides=overrides)
        _check_keys(cfg)
    except ConfigError as exc:
        return _fail(f"invalid configuration: {exc}")
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


if __name__ == "__main__":
    sys.exit(main())
