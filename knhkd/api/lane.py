"""The worker lane's framing: msgpack messages (model.py ``Lane*``), each
behind a 4-byte big-endian length, over a Unix stream socket.

Guarantees: a frame is read whole or not at all (EOF mid-frame is
``trio.BrokenResourceError``); a frame over ``MAX_FRAME`` bytes is refused
(``trio.BrokenResourceError``) before it is buffered.

Must never: decode a message into anything but the type the caller names.
"""

from __future__ import annotations

import struct
from typing import TypeVar

import msgspec
import trio

T = TypeVar("T")

# A batch holds at most a worker's in-flight bodies (http.max_inflight_body_bytes,
# 64 MiB by default) re-encoded: leave room for more.
MAX_FRAME = 1 << 30
_LEN = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()


def frame(message: object) -> bytes:
    body = _encoder.encode(message)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Reads whole frames from ``stream``, keeping what follows one."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            data = await self._stream.receive_some(max(65536, n - len(self._buf)))
            if not data:
                raise trio.BrokenResourceError("lane closed")
            self._buf += data

    async def read(self, decoder: msgspec.msgpack.Decoder[T]) -> T:
        await self._fill(_LEN.size)
        (n,) = _LEN.unpack_from(self._buf)
        if n > MAX_FRAME:
            raise trio.BrokenResourceError(f"lane frame of {n} bytes")
        await self._fill(_LEN.size + n)
        body = bytes(self._buf[_LEN.size : _LEN.size + n])
        del self._buf[: _LEN.size + n]
        return decoder.decode(body)
