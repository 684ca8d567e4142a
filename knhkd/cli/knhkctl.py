"""``knhkctl``: operator commands over the admin socket.

Exit status: 0 fine; 1 verification failed; 2 usage or connection error, with
one line on stderr.

``audit verify`` reads the data directory (read-only, the daemon may run) or
an export file with only the public keyring.
``receipts verify-chain`` and ``keys export-public`` also work on the data
directory of a stopped daemon: when the admin socket does not answer they read
the store read-only and the public keyring ``keys/public.json``.

Every command takes GLOBAL_OPTIONS (``--data-dir``, ``--socket``,
``--timeout``, ``--format json|table``) before or after its name; _with_globals
adds them to every parser, so commands added later get them too. ``--format``
defaults to what the command always printed. Progress goes to stderr only when
it is a terminal (cli/progress.py); stdout carries only the answer.

Must never: print a token or key material; write progress off a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from knhkd import __version__
from knhkd.cli import backup as backup_cli
from knhkd.cli import progress
from knhkd.model import SECTORS, AdminRequest, AdminResponse, RingLaneStatus, RingStatus

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_USAGE = 0, 1, 2


class CtlError(Exception):
    """A usage or connection problem: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


# Options every command takes, before or after its name (``knhkctl fsck
# --data-dir D`` and ``knhkctl --data-dir D fsck`` are the same): (flags,
# add_argument keywords, the default). _with_globals() adds them to every
# parser of the tree, so a command added later gets them without a line of its
# own. ``--format`` defaults per command (``_default_format``, else json).
GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any], Any]] = [
    (
        ("--config",),
        {
            "type": Path,
            "help": "the daemon's configuration file, read for the data directory and admin "
            "socket (default: as knhkd run: $KNHKD_CONFIG, else /etc/knhkd/knhkd.toml, "
            "else defaults)",
        },
        None,
    ),
    (
        ("--data-dir",),
        {
            "help": "the daemon's data directory (default: the configuration's, with "
            "$KNHKD_DATA_DIR applied as knhkd run does)"
        },
        None,
    ),
    (("--socket",), {"help": "admin socket (default: the configuration's)"}, None),
    (("--timeout",), {"type": float, "help": "seconds to wait for an answer"}, 60.0),
    (
        ("--format",),
        {"choices": ("json", "table"), "help": "output: json, or table (for people)"},
        None,
    ),
]


def _with_globals(p: argparse.ArgumentParser, *, top: bool = True) -> None:
    """GLOBAL_OPTIONS on ``p`` and, recursively, every subcommand's parser.
    Below the top their default is SUPPRESS, so a value given before the
    subcommand is not overwritten by the subcommand's default."""
    for flags, kw, default in GLOBAL_OPTIONS:
        p.add_argument(*flags, **kw, default=default if top else argparse.SUPPRESS)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _with_globals(child, top=False)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="knhkctl", description="Operate a knhkd daemon.")
    p.add_argument("--version", action="version", version=f"knhkctl {__version__}")
    sub = p.add_subparsers(dest="group", required=True, parser_class=_Parser)

    def fmt(sp: argparse.ArgumentParser, default: str = "table") -> None:
        # What --format is when not given; every command takes --format.
        sp.set_defaults(_default_format=default)

    fmt(sub.add_parser("status", help="daemon status"))
    rc = sub.add_parser("receipts", help="the receipt log").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    lst = rc.add_parser("list", help="list receipts")
    lst.add_argument("--limit", type=int, default=20)
    lst.add_argument("--after", type=int, default=-1, help="list receipts after this sequence")
    fmt(lst)
    fmt(rc.add_parser("verify-chain", help="verify signatures, chain and time order"), "table")
    pr = rc.add_parser("prove", help="write a self-contained inclusion proof of one receipt")
    pr.add_argument("--index", type=int, required=True)
    pr.add_argument("--out", help="file to write (default: stdout)")
    ex = rc.add_parser("export", help="write a run of receipts with a checkpoint and range proof")
    ex.add_argument("--from", dest="start", type=int, default=0)
    ex.add_argument("--to", dest="end", type=int, help="end (exclusive; default: all signed)")
    ex.add_argument("--out", help="file to write (default: stdout)")
    co = rc.add_parser("consistency", help="write a consistency proof between two checkpoints")
    co.add_argument("--old-size", type=int, required=True)
    co.add_argument("--new-size", type=int, help="default: the latest checkpoint")
    co.add_argument("--out", help="file to write (default: stdout)")
    cp = sub.add_parser("checkpoint", help="print the latest signed checkpoint")
    cp.add_argument("--issue", action="store_true", help="sign a fresh one first")
    fmt(cp)  # table: the note's own text
    vf = sub.add_parser(
        "verify", help="verify proof, export and consistency files offline (public keys only)"
    )
    vf.add_argument("--keys", required=True, help="public keyring (knhkctl keys export-public)")
    vf.add_argument("files", nargs="+")
    vf.add_argument(
        "--storage-key",
        help="the storage key (encryption at rest), for archives of sealed observations",
    )
    fmt(vf, "table")
    fs = sub.add_parser("fsck", help="check a data directory: receipts, chain, tree, checkpoints")
    fs.add_argument(
        "--storage-key", help="the storage key (encryption at rest): sealed records are checked"
    )
    fmt(fs, "table")
    sn = sub.add_parser("snapshots", help="knowledge snapshots").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    fmt(sn.add_parser("list", help="list snapshots"))
    fmt(sn.add_parser("rollback", help="make the current snapshot's parent current"), "json")
    sd = sn.add_parser("diff", help="triples removed and added between two snapshots")
    sd.add_argument("a")
    sd.add_argument("b")
    gu = sub.add_parser("guards", help="guards and their relaxation").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    gu.add_parser("list", help="guards, relaxations, and which guards are relaxed now")
    rq = gu.add_parser("request", help="ask to relax a guard")
    rq.add_argument("guard")
    rq.add_argument("--requester", required=True)
    rq.add_argument("--reason", required=True)
    for step, who in (("approve", "--approver"), ("activate", "--actor"), ("revoke", "--actor")):
        sp = gu.add_parser(step, help=f"{step} a relaxation")
        sp.add_argument("id")
        sp.add_argument(who, dest="who", required=True)
        if step == "revoke":
            sp.add_argument("--reason", required=True)
    gu.add_parser("show", help="one relaxation").add_argument("id")
    do = sub.add_parser("doctrines", help="sector doctrines").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    do.add_parser("list", help="the doctrines in force and the set's digest")
    po = sub.add_parser("proposals", help="ΔΣ proposals").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    for name, helptext in (
        ("submit", "store a proposal (JSON file, - for stdin) with its receipt"),
        ("validate", "run the full pipeline on a proposal file; nothing is stored"),
    ):
        pp = po.add_parser(name, help=helptext)
        pp.add_argument("file")
    for name, helptext in (
        ("show", "a stored proposal and its validation report"),
        ("promote", "validate a stored proposal and promote it if it passes"),
    ):
        pp = po.add_parser(name, help=helptext)
        pp.add_argument("id")
    cy = sub.add_parser("cycle", help="the MAPE-K loop").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    fmt(cy.add_parser("run", help="run one cycle now and print its report"), "json")
    rg = sub.add_parser(
        "ring", help="the shared-memory ring, read from its file (works with knhkd stopped)"
    )
    rg.add_argument("--path", help="ring file (default: DATA_DIR/observations.ring)")
    fmt(rg)
    ra = rg.add_subparsers(dest="action", required=False, parser_class=_Parser)
    ra.add_parser("status", help="lanes, cursors and the snapshot descriptor (the default)")
    ap = ra.add_parser(
        "append", help="append one record as a producer does (a smoke test of the ring path)"
    )
    ap.add_argument("--sector", required=True, choices=SECTORS)
    ap.add_argument("--event", type=int, required=True, help="event code, 0..65535")
    ap.add_argument(
        "--value",
        default="null",
        help="JSON: a number, a string, a list of up to five numbers, or null (the default)",
    )
    ap.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait until knhkd makes it durable"
    )
    fmt(ap)
    au = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    al = au.add_parser("list", help="audit records (authentication, authorization, admin, PHI)")
    al.add_argument(
        "--since", help="only records at or after this time (ISO 8601, or seconds ago: 3600s)"
    )
    al.add_argument("--principal", help="only this principal (issuer#subject, anonymous, uid:N)")
    al.add_argument("--limit", type=int, default=1000, help="the newest N (default 1000)")
    fmt(al)
    av = au.add_parser(
        "verify",
        help="verify the trail: an export FILE offline, or the whole log of DATA_DIR",
    )
    av.add_argument("--keys", help="public keyring (default: DATA_DIR/keys/public.json)")
    av.add_argument("file", nargs="?", help="a `receipts export` or `receipts prove` file")
    fmt(av)
    ks = sub.add_parser("keys", help="signing keys").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    ks.add_parser("export-public", help="print the public keyring (JSON)")
    ks.add_parser("rotate", help="make a new signing key (receipted by the outgoing key)")
    er = sub.add_parser(
        "erase",
        help="erase the observations whose [privacy] subject_fields name a data subject "
        "(crypto-shredding; receipted)",
    )
    er.add_argument("--subject", required=True, help="the subject's identifier")
    rt = sub.add_parser("retention", help="archive and delete old observations").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    fmt(
        rt.add_parser(
            "run",
            help="archive observations past retention.observations_days, delete them, "
            "soft-delete old snapshots (receipted)",
        )
    )
    cm = sub.add_parser("completion", help="print a shell completion script (shtab)")
    cm.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    fmt(cm)
    from knhkd.cli.smoke import add_parser as add_smoke

    fmt(add_smoke(sub))
    backup_cli.add_parsers(sub)
    _with_globals(p)
    return p


# ---------------------------------------------------------------------- #
# Transport
# ---------------------------------------------------------------------- #


def _socket_path(args: argparse.Namespace) -> Path:
    return Path(args.socket) if args.socket else Path(args.data_dir) / "admin.sock"


def call(
    path: Path, cmd: str, args: dict[str, Any], timeout: float, busy: str | None = None
) -> Any:
    """One request over the admin socket. Raises ConnectionError if nobody answers.
    ``busy``: a long command; on a terminal a bar counts the time and the
    bytes of the answer while the daemon works."""
    try:
        request = msgspec.json.encode(AdminRequest(cmd=cmd, args=args)) + b"\n"
    except UnicodeEncodeError:
        # An argument's bytes were not UTF-8 (Python keeps them as lone
        # surrogates): the daemon's protocol is UTF-8 JSON.
        raise CtlError(f"{cmd}: an argument is not valid UTF-8 text") from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        # A refused peer is answered at once and disconnected: the answer may
        # already wait in our buffer even when sending fails; read it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        buf = b""
        show = busy is not None and progress.enabled()
        deadline = time.monotonic() + timeout
        with progress.bar(busy or cmd, unit="B", unit_scale=True, disable=not show) as bar:
            if show:
                # Short waits, so the bar's clock moves while the daemon works.
                sock.settimeout(0.2)
            while b"\n" not in buf:
                try:
                    chunk = sock.recv(1 << 20)
                except ConnectionResetError:
                    chunk = b""
                except TimeoutError:
                    if not show or time.monotonic() > deadline:
                        raise
                    bar.refresh()
                    continue
                if not chunk:
                    raise CtlError(f"{path}: the daemon closed the connection")
                buf += chunk
                bar.update(len(chunk))
    resp = msgspec.json.decode(buf.split(b"\n", 1)[0], type=AdminResponse)
    if not resp.ok:
        raise CtlError(resp.error or "the daemon refused the command")
    return resp.result


def _daemon_or_none(
    args: argparse.Namespace, cmd: str, cargs: dict[str, Any], busy: str | None = None
) -> Any:
    path = _socket_path(args)
    try:
        return call(path, cmd, cargs, args.timeout, busy)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


def _require_daemon(
    args: argparse.Namespace, cmd: str, cargs: dict[str, Any], busy: str | None = None
) -> Any:
    path = _socket_path(args)
    try:
        return call(path, cmd, cargs, args.timeout, busy)
    except (FileNotFoundError, ConnectionRefusedError):
        raise CtlError(f"no daemon answers on {path} (is knhkd running?)") from None
    except PermissionError:
        raise CtlError(f"{path}: permission denied") from None
    except TimeoutError:
        raise CtlError(f"{path}: no answer within {args.timeout:g}s") from None


# ---------------------------------------------------------------------- #
# Offline paths (stopped daemon)
# ---------------------------------------------------------------------- #


def _load_keyring(path: Path) -> Any:
    """A public keyring file's verifier; CtlError when it is absent or bad."""
    from knhkd.crypto.keys import KeyFileError, Verifier

    try:
        return Verifier.from_json(path.read_bytes())
    except FileNotFoundError:
        raise CtlError(f"{path}: no public keyring (never started?)") from None
    except KeyFileError as exc:
        raise CtlError(str(exc)) from None


def _offline_verify(data_dir: Path) -> Any:
    from knhkd.receipts.log import verify_store
    from knhkd.store.env import StoreError, open_store

    verifier = _load_keyring(data_dir / "keys" / "public.json")
    try:
        store = open_store(data_dir, readonly=True, exclusive=False)
    except StoreError as exc:
        raise CtlError(str(exc)) from None

    def watch(records: Any, count: int) -> Any:
        return progress.iterate(records, "verifying the chain", count, "receipt")

    try:
        return msgspec.to_builtins(verify_store(store, verifier, watch))
    finally:
        store.close()


# ---------------------------------------------------------------------- #
# Output
# ---------------------------------------------------------------------- #


def _print_json(obj: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(obj), indent=2).decode() + "\n")


def _ts(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _out(args: argparse.Namespace, obj: Any, table: Any = None) -> None:
    """``obj`` as --format says: JSON, or ``table(obj)``; a command without a
    table of its own gets the generic one (_generic_table)."""
    if getattr(args, "format", "json") == "json":
        _print_json(obj)
    else:
        (table or _generic_table)(msgspec.to_builtins(obj) if table is None else obj)


def _cell(v: Any) -> str:
    if isinstance(v, dict | list):
        return msgspec.json.encode(v).decode()
    return "-" if v is None else str(v)


def _all_objects(items: list[Any]) -> bool:
    return all(isinstance(o, dict) for o in items)


def _generic_table(obj: Any, indent: str = "") -> None:
    """Any JSON-like answer for people: a list of objects as columns, an
    object as ``key: value`` lines (its lists of objects as nested tables)."""
    if isinstance(obj, list) and obj and _all_objects(obj):
        cols = list(dict.fromkeys(k for o in obj for k in o))
        rows = [[_cell(o.get(c)) for c in cols] for o in obj]
        widths = [
            max(len(x) for x in [c.upper(), *(r[i] for r in rows)]) for i, c in enumerate(cols)
        ]
        for row in [[c.upper() for c in cols], *rows]:
            line = "  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True))
            print(indent + line.rstrip())
    elif isinstance(obj, dict):
        for k, v in obj.items():
            nested = isinstance(v, dict) or (isinstance(v, list) and _all_objects(v))
            if nested and v:
                print(f"{indent}{k}:")
                _generic_table(v, indent + "  ")
            else:
                print(f"{indent}{k}: {_cell(v)}")
    elif isinstance(obj, list):
        for v in obj:
            print(indent + _cell(v))
    else:
        print(indent + _cell(obj))


def _receipts_table(items: list[dict[str, Any]]) -> None:
    _table(
        [
            [
                str(r["body"]["seq"]),
                _ts(r["body"]["timestamp_ns"]),
                r["body"]["kind"],
                r["body"]["outcome"]["status"],
                r["body"]["sector"] or "-",
                r["hash"][:16],
            ]
            for r in items
        ],
        ["SEQ", "TIME", "KIND", "OUTCOME", "SECTOR", "HASH"],
    )


def _chain_ok(rep: dict[str, Any]) -> bool:
    return not (
        rep["signature_failures"] or rep["chain_breaks"] or rep["retrocausation_violations"]
    )


def _verify_table(rep: dict[str, Any]) -> None:
    ok = _chain_ok(rep)
    print(f"Total receipts: {rep['total_count']}")
    print(f"Verified: {rep['verified_count']}")
    print(f"Signature failures: {len(rep['signature_failures'])} {rep['signature_failures'] or ''}")
    print(f"Chain breaks: {len(rep['chain_breaks'])} {rep['chain_breaks'] or ''}")
    print(
        "Retrocausation violations: "
        f"{len(rep['retrocausation_violations'])} {rep['retrocausation_violations'] or ''}"
    )
    print("Receipt chain integrity verified" if ok else "Receipt chain integrity COMPROMISED")


def _snapshots_table(res: dict[str, Any]) -> None:
    _table(
        [
            [
                "*" if s["snapshot_id"] == res["current"] else "",
                str(s["version"]),
                s["snapshot_id"][:16],
                (s["parent_id"] or "-")[:16],
                str(s["triple_count"]),
                _ts(s["promoted_at_ns"]),
            ]
            for s in res["snapshots"]
        ],
        ["", "VERSION", "ID", "PARENT", "TRIPLES", "PROMOTED"],
    )


def _status_table(st: dict[str, Any]) -> None:
    snap = st.get("current_snapshot") or {}
    print(f"knhkd {st['version']} pid {st['pid']} up {st['uptime_seconds']}s")
    print(f"data dir:     {st['data_dir']}")
    print(f"http:         {st['http_bind']}")
    print(f"observations: {st['observations']}")
    print(f"receipts:     {st['receipts']} (head {st['head_hash'][:16]})")
    print(f"snapshot:     v{snap.get('version')} {str(snap.get('snapshot_id'))[:16]}")
    print(f"signing key:  {st['key_id']}")
    ring = st.get("ring")
    if ring:
        stale = "  STALE: the path names another file" if ring["stale"] else ""
        print(
            f"ring:         {ring['path']} ({ring['lanes']} x {ring['capacity']}) backlog "
            f"{ring['backlog']}, refused {ring['full_count']}, corrupt {ring['corrupt_count']}"
            f"{stale}"
        )
    for name, a in sorted(st["actors"].items()):
        print(f"actor {name:<15} {a['state']} restarts={a['restarts']}")


# ---------------------------------------------------------------------- #


def run(args: argparse.Namespace) -> int:
    group, action = args.group, getattr(args, "action", None)
    if group == "completion":
        import shtab

        script = shtab.complete(_parser(), shell=args.shell)
        _out(args, {"shell": args.shell, "script": script}, lambda o: print(o["script"]))
    elif group == "smoke":
        from knhkd.cli.smoke import run_smoke

        return run_smoke(args, lambda cmd, cargs: _require_daemon(args, cmd, cargs), _out)
    elif group == "status":
        _out(args, _require_daemon(args, "status", {}), _status_table)
    elif (group, action) == ("receipts", "list"):
        if args.limit < 1:
            raise CtlError("--limit must be at least 1")
        res = _require_daemon(args, "receipts.list", {"limit": args.limit, "after": args.after})
        _out(args, res, _receipts_table)
    elif (group, action) == ("receipts", "verify-chain"):
        rep = _daemon_or_none(args, "receipts.verify", {}, busy="verifying the chain")
        if rep is None:
            rep = _offline_verify(Path(args.data_dir))
        _out(args, rep, _verify_table)
        return EXIT_OK if _chain_ok(rep) else EXIT_VERIFY_FAILED
    elif (group, action) == ("snapshots", "list"):
        _out(args, _require_daemon(args, "snapshots.list", {}), _snapshots_table)
    elif (group, action) == ("snapshots", "rollback"):
        _out(args, _require_daemon(args, "snapshots.rollback", {}))
    elif (group, action) == ("cycle", "run"):
        _out(args, _require_daemon(args, "cycle.run", {}))
    elif (group, action) == ("keys", "export-public"):
        ring = _daemon_or_none(args, "keys.export_public", {})
        if ring is None:
            path = Path(args.data_dir) / "keys" / "public.json"
            try:
                ring = msgspec.json.decode(path.read_bytes())
            except FileNotFoundError:
                raise CtlError(f"no daemon answers and {path} does not exist") from None
            except msgspec.DecodeError as exc:
                raise CtlError(f"{path}: not a knhkd public keyring: {exc}") from None
        _out(args, ring)
    elif group == "proposals" and action in ("submit", "validate"):
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        try:
            doc = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise CtlError(f"{args.file}: not JSON: {exc}") from None
        res = _require_daemon(args, f"proposals.{action}", {"proposal": doc})
        _out(args, res)
        if action == "validate" and not res["passed"]:
            return EXIT_VERIFY_FAILED
    elif group == "proposals":
        res = _require_daemon(args, f"proposals.{action}", {"id": args.id})
        _out(args, res)
        if action == "promote" and not res["promoted"]:
            return EXIT_VERIFY_FAILED
    elif (group, action) == ("snapshots", "diff"):
        _out(args, _require_daemon(args, "snapshots.diff", {"a": args.a, "b": args.b}))
    elif (group, action) == ("guards", "list"):
        _out(args, _require_daemon(args, "guards.list", {}))
    elif group == "guards":
        step: dict[str, Any] = {"step": action, "id": getattr(args, "id", "")}
        if action == "request":
            step |= {"guard": args.guard, "who": args.requester, "reason": args.reason}
        elif action != "show":
            step |= {"who": args.who, "reason": getattr(args, "reason", "")}
        _out(args, _require_daemon(args, "guards.relaxation", step))
    elif group == "doctrines":
        _out(args, _require_daemon(args, "doctrines.list", {}))
    elif (group, action) == ("keys", "rotate"):
        _out(args, _require_daemon(args, "keys.rotate", {}))
    elif group == "erase":
        _out(args, _require_daemon(args, "erase", {"subject": args.subject}))
    elif (group, action) == ("retention", "run"):
        _out(args, _require_daemon(args, "retention.run", {}, busy="archiving"))
    elif (group, action) == ("receipts", "prove"):
        _write(args, _require_daemon(args, "receipts.prove", {"index": args.index}))
    elif (group, action) == ("receipts", "export"):
        cargs: dict[str, Any] = {"start": args.start}
        if args.end is not None:
            cargs["end"] = args.end
        _write(args, _require_daemon(args, "receipts.export", cargs, busy="exporting"))
    elif (group, action) == ("receipts", "consistency"):
        cargs = {"old_size": args.old_size}
        if args.new_size is not None:
            cargs["new_size"] = args.new_size
        _write(args, _require_daemon(args, "receipts.consistency", cargs))
    elif group == "checkpoint":
        note = _require_daemon(args, "checkpoint.latest", {"issue": args.issue})
        _out(args, {"checkpoint": note}, lambda o: sys.stdout.write(o["checkpoint"]))
    elif (group, action) == ("audit", "list"):
        return _audit_list(args)
    elif (group, action) == ("audit", "verify"):
        return _audit_verify(args)
    elif group == "verify":
        return _verify_offline(args)
    elif group == "fsck":
        return _fsck(args)
    elif (group, action) == ("ring", "append"):
        return _ring_append(args)
    elif group in ("backup", "restore"):
        return backup_cli.run(args, lambda c, a, _: _require_daemon(args, c, a), CtlError)
    elif group == "ring":
        _out(args, _ring_status(args), _ring_table)
    return EXIT_OK


def _write(args: argparse.Namespace, obj: Any) -> None:
    """A proof or export file: always JSON in ``--out``; on stdout as --format says."""
    out: str | None = args.out
    if out is None:
        _out(args, obj)
        return
    data = msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n"
    Path(out).write_bytes(data)
    print(f"wrote {out}", file=sys.stderr)


def _verify_offline(args: argparse.Namespace) -> int:
    from knhkd.crypto.keys import KeyFileError, Verifier
    from knhkd.receipts.offline import Unusable, verify_files

    try:
        verifier = Verifier.from_json(Path(args.keys).read_bytes())
        named = [(f, Path(f).read_bytes()) for f in args.files]
        with progress.bar("verifying", len(named), "file") as bar:
            key = _storage_key(args)
            verdicts = verify_files(named, verifier, lambda _: bar.update(1), storage_key=key)
    except (KeyFileError, Unusable) as exc:
        raise CtlError(str(exc)) from None
    if args.format == "json":
        _print_json(verdicts)
    else:
        for v in verdicts:
            status = "verified" if v.verified else "NOT VERIFIED"
            detail = f"{v.origin} size {v.tree_size}" if v.verified else v.reason
            print(f"{v.file}: {v.kind}: {status}: {detail}")
    return EXIT_OK if all(v.verified for v in verdicts) else EXIT_VERIFY_FAILED


def _since_ns(text: str | None) -> int:
    if not text:
        return 0
    if text.endswith("s") and text[:-1].isdigit():
        return time.time_ns() - int(text[:-1]) * 1_000_000_000
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CtlError(f"--since: expected ISO 8601 or Ns, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1e9)


def _audit_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CtlError("--limit must be at least 1")
    cargs: dict[str, Any] = {"since_ns": _since_ns(args.since), "limit": args.limit}
    if args.principal:
        cargs["principal"] = args.principal
    entries = _require_daemon(args, "audit.list", cargs)

    def table(items: list[dict[str, Any]]) -> None:
        _table(
            [
                [
                    str(e["seq"]),
                    _ts(e["timestamp_ns"]),
                    e["event"],
                    e["decision"],
                    e["principal"] or "-",
                    e["route"],
                    str(e["count"]),
                    e["peer"] or "-",
                    e["reason"],
                ]
                for e in items
            ],
            ["SEQ", "TIME", "EVENT", "DECISION", "PRINCIPAL", "ROUTE", "N", "PEER", "REASON"],
        )

    _out(args, entries, table)
    return EXIT_OK


def _audit_verify(args: argparse.Namespace) -> int:
    """An export/proof FILE: the offline verifier, and how many audit records
    it holds. No FILE: every receipt of DATA_DIR's log (read-only, the daemon
    may run) against the keyring, naming each damaged audit record."""
    keys = Path(args.keys) if args.keys else Path(args.data_dir) / "keys" / "public.json"
    verifier = _load_keyring(keys)
    if args.file:
        return _audit_verify_file(args, verifier)
    from knhkd.receipts.audit import audit_seqs, entries
    from knhkd.receipts.log import iter_raw, read_head
    from knhkd.receipts.verify import verify_chain
    from knhkd.store.env import StoreError, open_store

    try:
        store = open_store(Path(args.data_dir), readonly=True, exclusive=False)
    except StoreError as exc:
        raise CtlError(str(exc)) from None
    try:
        with store.reader() as txn:
            head = read_head(store, txn)
            rep = verify_chain(
                iter_raw(store, txn), verifier, expected_head=(head.next_seq, head.hash)
            )
            bad = {
                int(rid.removeprefix("rcpt-"))
                for rid in rep.signature_failures + rep.chain_breaks + rep.retrocausation_violations
                if rid.startswith("rcpt-")
            }
            damaged_audit = sorted(audit_seqs(store, txn, bad))
            count = sum(1 for _ in entries(store, txn))
    finally:
        store.close()
    ok = rep.verified and not (
        rep.signature_failures or rep.chain_breaks or rep.retrocausation_violations
    )
    names = [f"rcpt-{seq:012d}" for seq in damaged_audit]
    if args.format == "json":
        _print_json(
            {
                "verified": ok,
                "receipts": rep.total_count,
                "audit_records": count,
                "damaged_audit_records": names,
                "chain": rep,
            }
        )
    else:
        print(f"receipts: {rep.total_count}, audit records: {count}")
        for rid in names:
            print(f"audit record {rid}: NOT VERIFIED (signature, chain or time order)")
        others = sorted(
            set(rep.signature_failures + rep.chain_breaks + rep.retrocausation_violations)
            - set(names)
        )
        for rid in others:
            print(f"receipt {rid}: NOT VERIFIED")
        print("audit trail verified" if ok else "audit trail COMPROMISED")
    return EXIT_OK if ok else EXIT_VERIFY_FAILED


def _audit_verify_file(args: argparse.Namespace, verifier: Any) -> int:
    from knhkd.model import ExportFile, ProofFile
    from knhkd.receipts import canonical
    from knhkd.receipts.offline import Unusable, load, verify_files

    raw = Path(args.file).read_bytes()
    try:
        [verdict] = verify_files([(args.file, raw)], verifier)
        loaded = load(raw)
    except Unusable as exc:
        raise CtlError(str(exc)) from None
    records: list[bytes] = []
    if isinstance(loaded, ExportFile):
        records = list(loaded.records)
    elif isinstance(loaded, ProofFile):
        records = [loaded.record]
    count = 0
    for rec in records:
        try:
            if canonical.decode_record(rec).body.kind == "audit":
                count += 1
        except (msgspec.MsgspecError, ValueError):
            pass
    if args.format == "json":
        _print_json({"verdict": verdict, "audit_records": count})
    else:
        status = "verified" if verdict.verified else "NOT VERIFIED"
        detail = (
            f"{verdict.origin} size {verdict.tree_size}" if verdict.verified else verdict.reason
        )
        print(f"{args.file}: {verdict.kind}: {status}: {detail}; audit records: {count}")
    return EXIT_OK if verdict.verified else EXIT_VERIFY_FAILED


def _storage_key(args: argparse.Namespace) -> bytes | None:
    """``--storage-key FILE`` (encryption at rest), read; None without it."""
    path = getattr(args, "storage_key", None)
    if not path:
        return None
    from knhkd.crypto.sealing import StorageKeyError, load_key

    try:
        return load_key(Path(path))
    except StorageKeyError as exc:
        raise CtlError(str(exc)) from None


def _fsck(args: argparse.Namespace) -> int:
    from knhkd.datadir.fsck import FSCK_STEPS, fsck_data_dir
    from knhkd.store.env import StoreError

    # fsck runs in a forked child whose fd 2 is /dev/null: its bar draws on a
    # duplicate of the terminal.
    term = progress.terminal_dup()
    try:
        with progress.bar("fsck", FSCK_STEPS, "check", file=term, disable=term is None) as bar:

            def step(name: str) -> None:
                bar.set_postfix_str(name, refresh=False)
                bar.update(1)

            report = fsck_data_dir(
                Path(args.data_dir), step if term else None, storage_key=_storage_key(args)
            )
    except StoreError as exc:
        raise CtlError(str(exc)) from None
    finally:
        if term is not None:
            term.close()
    if args.format == "json":
        _print_json(report)
    else:
        for name, n in report.checked.items():
            print(f"checked {n} {name}")
        for err in report.errors:
            print(f"ERROR {err}")
        print("fsck: clean" if report.ok else f"fsck: first inconsistency: {report.errors[0]}")
    return EXIT_OK if report.ok else EXIT_VERIFY_FAILED


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


def _ring_status(args: argparse.Namespace) -> RingStatus:
    from knhkd.hotpath.ring import RING_VERSION, Reader, RingError, ticks_source

    path = Path(args.path) if args.path else Path(args.data_dir) / "observations.ring"
    try:
        with Reader(path) as r:
            stats, snap, hz = r.lane_stats(), r.snapshot(), r.tsc_hz()
            ring_id, lanes, capacity = r.ring_id, r.lanes, r.capacity
    except RingError as exc:
        raise CtlError(str(exc)) from None
    lane_status = [
        RingLaneStatus(
            lane=s.lane, owner_pid=s.owner_pid, owner_alive=_pid_alive(s.owner_pid),
            head=s.head, consumed=s.consumed, durable=s.durable, backlog=s.backlog,
            full_count=s.full_count, corrupt_count=s.corrupt_count, claims=s.claims,
        )
        for s in stats
    ]  # fmt: skip
    return RingStatus(
        path=str(path),
        ring_id=f"{ring_id:016x}",
        version=RING_VERSION,
        lanes=lanes,
        capacity=capacity,
        ticks_source=ticks_source(),
        tsc_hz=hz,
        snapshot_version=snap.version if snap else None,
        snapshot_id=snap.snapshot_id if snap else None,
        snapshot_promoted_at_ns=snap.promoted_at_ns if snap else None,
        lane_status=lane_status,
        backlog=sum(s.backlog for s in lane_status),
        full_count=sum(s.full_count for s in lane_status),
        corrupt_count=sum(s.corrupt_count for s in lane_status),
    )


def _ring_append(args: argparse.Namespace) -> int:
    from knhkd.hotpath.records import SECTOR_CODES, InvalidRecord
    from knhkd.hotpath.ring import Producer, RingError, RingFull

    if not 0 <= args.event <= 0xFFFF:
        raise CtlError(f"--event {args.event}: an event code is 0..65535")
    try:
        value = msgspec.json.decode(args.value)
    except msgspec.DecodeError as exc:
        raise CtlError(f"--value is not JSON: {exc}") from None
    path = Path(args.path) if args.path else Path(args.data_dir) / "observations.ring"
    try:
        with Producer(path) as p:
            seq = p.append(SECTOR_CODES[args.sector], args.event, value)
            said: dict[str, Any] = {"lane": p.lane, "seq": seq, "durable": False}
            if args.format == "table":
                print(f"appended: lane {p.lane} seq {seq}")
            if args.wait <= 0:
                if args.format == "json":
                    _print_json(said)
                return EXIT_OK
            deadline = time.monotonic() + args.wait
            while p.durable() <= seq:
                if p.stale():
                    raise CtlError(f"{path} was removed or replaced: nobody drains this ring")
                if time.monotonic() > deadline:
                    print(f"knhkctl: not durable after {args.wait:g} s (is knhkd draining "
                          f"{path}?)", file=sys.stderr)  # fmt: skip
                    return EXIT_VERIFY_FAILED
                time.sleep(0.01)
            said["durable"] = True
            _out(
                args,
                said,
                lambda _: print(f"durable: lane {p.lane} durable through seq {p.durable() - 1}"),
            )
    except RingFull:
        raise CtlError("the lane is full: knhkd is behind; nothing was appended") from None
    except InvalidRecord as exc:
        raise CtlError(f"--value: {exc}") from None
    except RingError as exc:
        raise CtlError(str(exc)) from None
    return EXIT_OK


def _ring_table(st: RingStatus) -> None:
    ticks = f"{st.ticks_source} at {st.tsc_hz / 1e6:.3f} MHz" if st.tsc_hz else st.ticks_source
    print(f"ring {st.path}  id {st.ring_id}  version {st.version}")
    print(f"{st.lanes} lanes x {st.capacity} records; ticks {ticks}")
    if st.snapshot_version is None:
        print("snapshot: none published")
    else:
        promoted = _ts(st.snapshot_promoted_at_ns or 0)
        print(f"snapshot: v{st.snapshot_version} {str(st.snapshot_id)[:16]} promoted {promoted}")
    rows = [
        [str(s.lane),
         "-" if not s.owner_pid else f"{s.owner_pid} ({'live' if s.owner_alive else 'gone'})",
         str(s.head), str(s.consumed), str(s.durable), str(s.backlog), str(s.full_count),
         str(s.corrupt_count), str(s.claims)]
        for s in st.lane_status
    ]  # fmt: skip
    _table(
        rows,
        ["LANE", "PRODUCER", "HEAD", "CONSUMED", "DURABLE", "BACKLOG", "FULL", "CORRUPT", "CLAIMS"],
    )
    print(f"backlog {st.backlog}, refused (lane full) {st.full_count}, corrupt {st.corrupt_count}")


def _locate_daemon(args: argparse.Namespace) -> None:
    """Fill in the data directory and the admin socket the options left out
    from the daemon's own configuration (found, and overridden by
    ``KNHKD_*``, exactly as ``knhkd run`` does), so an installed host needs
    neither option."""
    if args.data_dir is not None and args.socket is not None:
        return
    from knhkd.config import ConfigError, load, locate

    path, _ = locate(args.config, os.environ)
    overrides = {("storage", "data_dir"): args.data_dir} if args.data_dir is not None else {}
    try:
        cfg = load(path, env=os.environ, overrides=overrides)
    except ConfigError as exc:
        raise CtlError(f"{path or 'embedded defaults'}: invalid configuration: {exc}") from None
    args.data_dir = str(cfg.data_dir)
    if args.socket is None:
        args.socket = str(cfg.admin_socket)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.format is None:
        args.format = getattr(args, "_default_format", "json")
    try:
        _locate_daemon(args)
        return run(args)
    except CtlError as exc:
        print(f"knhkctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`knhkctl ... | head`): nothing left to say.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (OSError, msgspec.DecodeError) as exc:
        print(f"knhkctl: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
