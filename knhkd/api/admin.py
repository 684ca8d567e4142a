"""The admin Unix socket: local operator commands for ``knhkctl``.

Protocol: newline-delimited JSON. Each line is an ``AdminRequest``
(``{"cmd": "...", "args": {...}}``); each answer one ``AdminResponse`` line
(``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``). A
connection may carry many requests.

Guarantees:
- The socket file is created mode 0600 inside the 0700 data directory and
  removed at exit (Hypercorn-style leftovers are not left behind).
- Peer credentials are checked (``SO_PEERCRED``): the daemon's own uid and
  root are administrators; a uid, or a group the peer belongs to (its primary
  gid or its account's groups), mapped by ``[[admin.roles]]`` holds those
  roles' permissions (knhkd/auth/roles.py); every other peer is answered with
  an error, disconnected and audited. The mapping is read per request, so a
  reload applies to the next command. The socket is 0600 unless
  ``[[admin.roles]]`` is configured at start (then 0666: the credentials
  decide, not the mode).
- Each command needs the permission of the HTTP route for the same use case
  (``COMMAND_PERMISSIONS``, one table; a command missing from it is refused
  to everyone but administrators). A refused command, and every allowed
  command that changes something, is appended to the audit trail
  (``Daemon.audit``, event ``admin``, principal ``knhkctl#uid:N``).
- The receipts of decisions taken through the socket name
  ``knhkctl#admin-socket`` (the daemon's uid and root; relaxation steps the
  name they give, ``knhkctl#<name>``) or the mapped peer itself
  (``knhkctl#uid:N``), which may not act in another's name (403).
- Socket activation: a socket systemd passes as ``admin`` (api/activation.py;
  ``knhkd-admin.socket`` sets its path, owner and mode) is served instead of
  binding ``admin.socket``, and its file is left in place at exit: systemd
  keeps it listening across restarts. A path other than ``admin.socket`` is
  logged as a warning (``knhkctl`` finds the socket through the configuration).
- A malformed line gets an error answer, never a dropped connection without a
  word, and never a crash of the daemon.

Must never: accept a command from an unmapped uid, or one its roles do not permit.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from knhkd.api import activation
from knhkd.auth.roles import local, permissions_of
from knhkd.config import AdminConfig
from knhkd.errors import Forbidden, KnhkdError, Malformed, NotFound
from knhkd.loop.daemon import Daemon
from knhkd.model import (
    LOCAL_ISSUER,
    AdminRequest,
    AdminResponse,
    AuditRecord,
    Permission,
    Principal,
    ProposalIn,
    Role,
)

log = logging.getLogger("knhkd.admin")

MAX_LINE = 1 << 20
# Who promotes, rolls back, runs a cycle or submits through the socket when
# the peer is the daemon's uid or root, as receipts record it; a peer mapped
# by [[admin.roles]] is recorded as itself (knhkctl#uid:N).
_ADMIN = local("admin-socket")
# The peer of the request being served (set per request by _dispatch; each
# connection is its own task, so its own context).
_PEER: contextvars.ContextVar[Principal] = contextvars.ContextVar("admin_peer")


def _is_admin(p: Principal) -> bool:
    return "administrator" in p.roles


def _actor() -> Principal:
    """Who the decision is recorded as: the socket, or the mapped peer."""
    peer = _PEER.get()
    return _ADMIN if _is_admin(peer) else peer


_request_decoder = msgspec.json.Decoder(AdminRequest)
_encoder = msgspec.json.Encoder()


# Admin command → the permission of the HTTP route for the same use case
# (api/authn.py ROUTE_PERMISSIONS); README "Command line" shows it. None:
# any admitted peer. ``guards.relaxation`` is judged per step (below).
COMMAND_PERMISSIONS: dict[str, Permission | None] = {
    "status": "READ_METRICS",
    "health": None,
    "receipts.list": "READ_RECEIPTS",
    "receipts.verify": "READ_RECEIPTS",
    "receipts.prove": "READ_RECEIPTS",
    "receipts.export": "READ_RECEIPTS",
    "receipts.consistency": "READ_RECEIPTS",
    "checkpoint.latest": "READ_RECEIPTS",
    "keys.export_public": "READ_RECEIPTS",
    "audit.list": "READ_RECEIPTS",
    "snapshots.list": "READ_SNAPSHOTS",
    "snapshots.diff": "READ_SNAPSHOTS",
    "guards.list": "READ_SNAPSHOTS",
    "doctrines.list": "READ_SNAPSHOTS",
    "proposals.show": "READ_SNAPSHOTS",
    "snapshots.rollback": "PROMOTE_SNAPSHOTS",
    "proposals.promote": "PROMOTE_SNAPSHOTS",
    "cycle.run": "EXECUTE_MAPE_K",
    "proposals.submit": "GENERATE_PROPOSALS",
    "proposals.validate": "VALIDATE_PROPOSALS",
    "guards.relaxation": "GOVERN",
    # Administrator-only, as over HTTP (there is no HTTP route for it).
    "keys.rotate": "ALL",
    # Administrator-only, as POST /api/v1/erasures.
    "erase": "ALL",
    # Administrator-only: it writes wherever the daemon may.
    "backup.take": "ALL",
    "backup.consistency": "READ_RECEIPTS",
}
# Commands that change nothing: allowed ones are not audited (too many).
READ_ONLY_COMMANDS = frozenset(
    {
        "status",
        "health",
        "receipts.list",
        "receipts.verify",
        "receipts.prove",
        "receipts.export",
        "receipts.consistency",
        "keys.export_public",
        "audit.list",
        "snapshots.list",
        "snapshots.diff",
        "guards.list",
        "doctrines.list",
        "proposals.show",
        "proposals.validate",
        "backup.consistency",
    }
)


def needed(cmd: str, args: dict[str, Any]) -> Permission | None:
    """The permission ``cmd`` needs; raises KeyError for an unknown command."""
    if cmd == "guards.relaxation" and args.get("step") == "show":
        return "READ_SNAPSHOTS"
    return COMMAND_PERMISSIONS[cmd]


def mutating(cmd: str, args: dict[str, Any]) -> bool:
    if cmd == "guards.relaxation":
        return args.get("step") != "show"
    if cmd == "checkpoint.latest":
        return bool(args.get("issue"))
    return cmd not in READ_ONLY_COMMANDS


def _groups_of(uid: int, gid: int) -> set[int]:
    """The peer's primary gid and the groups its account belongs to."""
    groups = {gid}
    with contextlib.suppress(KeyError, OSError):
        name = pwd.getpwuid(uid).pw_name
        groups.update(os.getgrouplist(name, gid))
    return groups


def peer_principal(cfg: AdminConfig, uid: int, gid: int) -> Principal | None:
    """The principal of a peer: administrator for the daemon's uid and root,
    the mapped roles for a configured uid or group, None for anyone else."""
    name = f"uid:{uid}"
    if uid in (os.getuid(), 0):
        return Principal(
            issuer=LOCAL_ISSUER,
            subject=name,
            roles=("administrator",),
            permissions=frozenset({"ALL"}),
        )
    roles: list[Role] = []
    groups: set[int] | None = None
    for entry in cfg.roles:
        if entry.uid is not None and entry.uid == uid:
            roles.extend(entry.roles)
        elif entry.gid is not None:
            if groups is None:
                groups = _groups_of(uid, gid)
            if entry.gid in groups:
                roles.extend(entry.roles)
    if not roles:
        return None
    unique = tuple(dict.fromkeys(roles))
    return Principal(
        issuer=LOCAL_ISSUER, subject=name, roles=unique, permissions=permissions_of(unique)
    )


class CommandError(Malformed):
    """A command's arguments were refused; the message goes back to the client."""


def _arg_int(args: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = args.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise CommandError(f"{name} must be an integer between {lo} and {hi}")
    return value


def _commands(daemon: Daemon) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
    async def status(args: dict[str, Any]) -> Any:
        return daemon.status()

    async def receipts_list(args: dict[str, Any]) -> Any:
        return daemon.list_receipts(
            after=_arg_int(args, "after", -1, -1, 2**63 - 1),
            limit=_arg_int(args, "limit", 20, 1, 100_000),
        )

    async def receipts_verify(args: dict[str, Any]) -> Any:
        return await daemon.verify()

    async def snapshots_list(args: dict[str, Any]) -> Any:
        return {
            "current": daemon.knowledge.current.snapshot_id,
            "snapshots": daemon.list_snapshots(),
        }

    async def snapshots_rollback(args: dict[str, Any]) -> Any:
        return await daemon.rollback(_actor())

    async def cycle_run(args: dict[str, Any]) -> Any:
        return await daemon.run_cycle(_actor())

    async def keys_export_public(args: dict[str, Any]) -> Any:
        return daemon.public_keyring()

    async def health(args: dict[str, Any]) -> Any:
        return daemon.health()

    async def keys_rotate(args: dict[str, Any]) -> Any:
        return await daemon.rotate_key()

    async def erase(args: dict[str, Any]) -> Any:
        subject = args.get("subject")
        if not isinstance(subject, str) or not 1 <= len(subject) <= 4096:
            raise CommandError("subject must be a string of 1 to 4096 characters")
        return await daemon.erase_subject(subject, _actor())

    async def receipts_prove(args: dict[str, Any]) -> Any:
        return await daemon.prove(_arg_int(args, "index", -1, 0, 2**63 - 1))

    async def receipts_export(args: dict[str, Any]) -> Any:
        start = _arg_int(args, "start", 0, 0, 2**63 - 1)
        end = args.get("end")
        if end is not None:
            end = _arg_int(args, "end", 0, start, 2**63 - 1)
        return await daemon.export(start, end)

    async def receipts_consistency(args: dict[str, Any]) -> Any:
        old = _arg_int(args, "old_size", 0, 1, 2**63 - 1)
        new = args.get("new_size")
        if new is not None:
            new = _arg_int(args, "new_size", 0, old, 2**63 - 1)
        return await daemon.consistency_file(old, new)

    def _proposal(args: dict[str, Any]) -> ProposalIn:
        try:
            return msgspec.convert(args.get("proposal"), ProposalIn)
        except msgspec.ValidationError as exc:
            raise CommandError(f"invalid proposal: {exc}") from None

    async def proposals_submit(args: dict[str, Any]) -> Any:
        proposal, created = await daemon.submit_proposal(_proposal(args), _actor())
        return {"created": created, "proposal": proposal}

    async def proposals_validate(args: dict[str, Any]) -> Any:
        return await daemon.validate_dry(_proposal(args), _actor())

    async def proposals_show(args: dict[str, Any]) -> Any:
        proposal, report = daemon.get_proposal(str(args.get("id", "")))
        return {"proposal": proposal, "validation": report}

    async def proposals_promote(args: dict[str, Any]) -> Any:
        report, promoted = await daemon.promote_proposal(str(args.get("id", "")), _actor())
        return {"promoted": promoted, "validation": report, "snapshot": daemon.knowledge.current}

    def _s(args: dict[str, Any], name: str) -> str:
        value = args.get(name, "")
        if not isinstance(value, str):
            raise CommandError(f"{name} must be a string")
        return value

    def _who(args: dict[str, Any], role: str) -> Principal:
        # The daemon's uid and root name who acts; recorded as knhkctl#<name>.
        # A peer mapped by [[admin.roles]] acts as itself only: naming anyone
        # else would let one uid count as several approvers.
        name = _s(args, "who")
        peer = _PEER.get()
        if not _is_admin(peer):
            if name.strip() and name not in (peer.subject, peer.name):
                raise Forbidden(f"{peer.name} may act only as itself, not as {name!r}")
            return peer
        if not name.strip():
            raise CommandError(f"the {role} must be named")
        return local(name)

    async def guards_list(args: dict[str, Any]) -> Any:
        return daemon.guards_overview()

    async def doctrines_list(args: dict[str, Any]) -> Any:
        return daemon.doctrines_overview()

    async def snapshots_diff(args: dict[str, Any]) -> Any:
        return daemon.snapshot_diff(_s(args, "a"), _s(args, "b"))

    async def relaxation(args: dict[str, Any]) -> Any:
        rid, step = _s(args, "id"), _s(args, "step")
        if step == "request":
            return await daemon.request_relaxation(
                _s(args, "guard"), _who(args, "requester"), _s(args, "reason")
            )
        if step == "approve":
            return await daemon.approve_relaxation(rid, _who(args, "approver"))
        if step == "activate":
            return await daemon.activate_relaxation(rid, _who(args, "actor"))
        if step == "revoke":
            return await daemon.revoke_relaxation(rid, _who(args, "actor"), _s(args, "reason"))
        if step == "show":
            return daemon.relaxation(rid)
        raise CommandError(f"unknown relaxation step {step!r}")

    async def audit_list(args: dict[str, Any]) -> Any:
        principal = args.get("principal")
        if principal is not None and not isinstance(principal, str):
            raise CommandError("principal must be a string")
        return daemon.audit_entries(
            since_ns=_arg_int(args, "since_ns", 0, 0, 2**63 - 1),
            principal=principal,
            limit=_arg_int(args, "limit", 1000, 1, 1_000_000),
        )

    async def checkpoint_latest(args: dict[str, Any]) -> Any:
        cp = daemon.latest_checkpoint()
        if args.get("issue") or cp is None:
            cp = await daemon.issue_checkpoint() or daemon.latest_checkpoint()
        if cp is None:
            raise NotFound("the log is empty: no checkpoint to sign")
        return cp.text

    async def backup_take(args: dict[str, Any]) -> Any:
        kind = args.get("kind")
        if kind is not None and not isinstance(kind, str):
            raise CommandError("kind must be a string")
        return await daemon.backup(_s(args, "out"), kind)

    async def backup_consistency(args: dict[str, Any]) -> Any:
        return await daemon.backup_consistency(_arg_int(args, "size", 0, 1, 2**63 - 1))

    return {
        "backup.take": backup_take,
        "backup.consistency": backup_consistency,
        "status": status,
        "health": health,
        "receipts.list": receipts_list,
        "receipts.verify": receipts_verify,
        "snapshots.list": snapshots_list,
        "snapshots.rollback": snapshots_rollback,
        "cycle.run": cycle_run,
        "keys.export_public": keys_export_public,
        "keys.rotate": keys_rotate,
        "erase": erase,
        "receipts.prove": receipts_prove,
        "receipts.export": receipts_export,
        "receipts.consistency": receipts_consistency,
        "checkpoint.latest": checkpoint_latest,
        "guards.list": guards_list,
        "guards.relaxation": relaxation,
        "doctrines.list": doctrines_list,
        "snapshots.diff": snapshots_diff,
        "proposals.submit": proposals_submit,
        "proposals.validate": proposals_validate,
        "proposals.show": proposals_show,
        "proposals.promote": proposals_promote,
        "audit.list": audit_list,
    }


def peer_cred(sock: trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from the kernel (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return int(pid), int(uid), int(gid)


def peer_uid(sock: trio.socket.SocketType) -> int:
    return peer_cred(sock)[1]


async def _handle(
    stream: trio.SocketStream,
    daemon: Daemon,
    commands: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]],
) -> None:
    async def answer(resp: AdminResponse) -> None:
        await stream.send_all(_encoder.encode(resp) + b"\n")

    pid, uid, gid = peer_cred(stream.socket)
    peer = f"pid:{pid} uid:{uid} gid:{gid}"
    if peer_principal(daemon.cfg.admin, uid, gid) is None:
        log.warning("admin connection from uid %d (gid %d, pid %d) refused", uid, gid, pid)
        await daemon.audit(
            AuditRecord(
                event="admin",
                principal=f"{LOCAL_ISSUER}#uid:{uid}",
                route="admin connect",
                decision="deny",
                reason="no role for this uid or its groups ([[admin.roles]])",
                peer=peer,
            )
        )
        await answer(AdminResponse(ok=False, error=f"uid {uid} may not use this socket"))
        await stream.aclose()
        return
    buf = b""
    async with stream:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
            if len(buf) > MAX_LINE and b"\n" not in buf:
                await answer(AdminResponse(ok=False, error="request line too long"))
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                await answer(await _dispatch(line, daemon, commands, uid, gid, peer))


async def _dispatch(
    line: bytes,
    daemon: Daemon,
    commands: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]],
    uid: int,
    gid: int,
    peer: str,
) -> AdminResponse:
    try:
        req = _request_decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return AdminResponse(ok=False, error=f"malformed request: {exc}")
    except RecursionError:
        # ``args`` is Any: JSON nested past msgspec's recursion limit.
        return AdminResponse(ok=False, error="malformed request: nested too deeply")
    fn = commands.get(req.cmd)
    if fn is None:
        return AdminResponse(ok=False, error=f"unknown command {req.cmd!r}")
    # Per request: a reload may have changed the mapping since the connection opened.
    principal = peer_principal(daemon.cfg.admin, uid, gid)
    need = needed(req.cmd, req.args) if req.cmd in COMMAND_PERMISSIONS else "ALL"
    route = f"admin {req.cmd}"
    if req.cmd == "guards.relaxation":
        route += f" {req.args.get('step', '')}"
    who = principal.name if principal is not None else f"{LOCAL_ISSUER}#uid:{uid}"
    if principal is None or (need is not None and not principal.may(need)):
        why = f"needs {need}" if principal is not None else "no role for this uid or its groups"
        log.warning("admin %s by %s refused: %s", route, who, why)
        await daemon.audit(
            AuditRecord(
                event="admin", principal=who, route=route, decision="deny", reason=why, peer=peer
            )
        )
        return AdminResponse(ok=False, error=f"{who} may not {route}: {why}")
    _PEER.set(principal)
    if mutating(req.cmd, req.args):
        await daemon.audit(
            AuditRecord(
                event="admin",
                principal=who,
                route=route,
                decision="allow",
                reason=need or "admitted",
                peer=peer,
            )
        )
    try:
        return AdminResponse(ok=True, result=await fn(req.args))
    except KnhkdError as exc:
        # Every refusal, by kind (knhkd/errors.py); anything else is a bug and
        # is not hidden behind an answer.
        return AdminResponse(ok=False, error=exc.line())


async def _bind(path: Path, mode: int) -> trio.socket.SocketType:
    if path.exists() or path.is_symlink():
        # A leftover from a killed daemon: the data-dir lock proves it is stale.
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(64)
    return sock


async def serve_admin(
    daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    path = daemon.cfg.admin_socket
    inherited = activation.take("admin")
    if inherited:
        socks = [trio.socket.from_stdlib_socket(s) for s in inherited]
        for sock in socks:
            given = sock.getsockname()
            if not isinstance(given, str) or Path(given).resolve() != path.resolve():
                log.warning(
                    "admin socket: serving %r as systemd passed it, not admin.socket %s",
                    given,
                    path,
                )
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Other users mapped by [[admin.roles]] must be able to connect; their
        # credentials, not the file's mode, decide what they may do.
        socks = [await _bind(path, 0o666 if daemon.cfg.admin.roles else 0o600)]
    commands = _commands(daemon)
    try:
        listeners = [trio.SocketListener(sock) for sock in socks]

        async def handler(stream: trio.SocketStream) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await _handle(stream, daemon, commands)

        task_status.started()
        await trio.serve_listeners(handler, listeners)
    finally:
        for sock in socks:
            sock.close()
        if not inherited:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
