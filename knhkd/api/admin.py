"""The admin Unix socket: local operator commands for ``knhkctl``.

Protocol: newline-delimited JSON. Each line is an ``AdminRequest``
(``{"cmd": "...", "args": {...}}``); each answer one ``AdminResponse`` line
(``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``). A
connection may carry many requests.

Guarantees:
- The socket file is created mode 0600 inside the 0700 data directory and
  removed at exit (Hypercorn-style leftovers are not left behind).
- Peer credentials are checked (``SO_PEERCRED``): only the daemon's own uid and
  root may issue commands; others are answered with an error and disconnected.
- A malformed line gets an error answer, never a dropped connection without a
  word, and never a crash of the daemon.

Must never: accept a command from another uid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from knhkd.auth.roles import local
from knhkd.errors import KnhkdError, Malformed, NotFound
from knhkd.loop.daemon import Daemon
from knhkd.model import AdminRequest, AdminResponse, Principal, ProposalIn

log = logging.getLogger("knhkd.admin")

MAX_LINE = 1 << 20
# Who promotes, rolls back, runs a cycle or submits through the socket (its
# peers are the daemon's uid and root), as receipts record it.
_ADMIN = local("admin-socket")
_request_decoder = msgspec.json.Decoder(AdminRequest)
_encoder = msgspec.json.Encoder()


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
        return await daemon.rollback(_ADMIN)

    async def cycle_run(args: dict[str, Any]) -> Any:
        return await daemon.run_cycle(_ADMIN)

    async def keys_export_public(args: dict[str, Any]) -> Any:
        return daemon.public_keyring()

    async def health(args: dict[str, Any]) -> Any:
        return daemon.health()

    async def keys_rotate(args: dict[str, Any]) -> Any:
        return await daemon.rotate_key()

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
        proposal, created = await daemon.submit_proposal(_proposal(args), _ADMIN)
        return {"created": created, "proposal": proposal}

    async def proposals_validate(args: dict[str, Any]) -> Any:
        return await daemon.validate_dry(_proposal(args), _ADMIN)

    async def proposals_show(args: dict[str, Any]) -> Any:
        proposal, report = daemon.get_proposal(str(args.get("id", "")))
        return {"proposal": proposal, "validation": report}

    async def proposals_promote(args: dict[str, Any]) -> Any:
        report, promoted = await daemon.promote_proposal(str(args.get("id", "")), _ADMIN)
        return {"promoted": promoted, "validation": report, "snapshot": daemon.knowledge.current}

    def _s(args: dict[str, Any], name: str) -> str:
        value = args.get(name, "")
        if not isinstance(value, str):
            raise CommandError(f"{name} must be a string")
        return value

    def _who(args: dict[str, Any], role: str) -> Principal:
        # The socket's peers name who acts; recorded as knhkctl#<name>.
        name = _s(args, "who")
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

    async def checkpoint_latest(args: dict[str, Any]) -> Any:
        cp = daemon.latest_checkpoint()
        if args.get("issue") or cp is None:
            cp = await daemon.issue_checkpoint() or daemon.latest_checkpoint()
        if cp is None:
            raise NotFound("the log is empty: no checkpoint to sign")
        return cp.text

    return {
        "status": status,
        "health": health,
        "receipts.list": receipts_list,
        "receipts.verify": receipts_verify,
        "snapshots.list": snapshots_list,
        "snapshots.rollback": snapshots_rollback,
        "cycle.run": cycle_run,
        "keys.export_public": keys_export_public,
        "keys.rotate": keys_rotate,
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
    }


def peer_uid(sock: trio.socket.SocketType) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


async def _handle(
    stream: trio.SocketStream,
    commands: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]],
) -> None:
    async def answer(resp: AdminResponse) -> None:
        await stream.send_all(_encoder.encode(resp) + b"\n")

    uid = peer_uid(stream.socket)
    if uid not in (os.getuid(), 0):
        log.warning("admin connection from uid %d refused", uid)
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
                await answer(await _dispatch(line, commands))


async def _dispatch(
    line: bytes, commands: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]
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
    try:
        return AdminResponse(ok=True, result=await fn(req.args))
    except KnhkdError as exc:
        # Every refusal, by kind (knhkd/errors.py); anything else is a bug and
        # is not hidden behind an answer.
        return AdminResponse(ok=False, error=exc.line())


async def _bind(path: Path) -> trio.socket.SocketType:
    if path.exists() or path.is_symlink():
        # A leftover from a killed daemon: the data-dir lock proves it is stale.
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


async def serve_admin(
    daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    path = daemon.cfg.admin_socket
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = await _bind(path)
    commands = _commands(daemon)
    try:
        listener = trio.SocketListener(sock)

        async def handler(stream: trio.SocketStream) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await _handle(stream, commands)

        task_status.started()
        await trio.serve_listeners(handler, [listener])
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
