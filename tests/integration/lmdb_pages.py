"""Reading and damaging an LMDB ``data.mdb`` at the page level, as a failing
disk would: the two meta pages and the live B-tree pages of every database.

Layout (LMDB 0.9, 64-bit, 4 KiB pages; PLATFORM_NOTES "Fault and security
tests"): pages 0 and 1 are the meta pages, the newer (larger ``mm_txnid``) is
live. A page starts with a 16-byte header (pgno u64, pad u16, flags u16,
lower u16, upper u16); node offsets follow it; a node is (lo u16, hi u16,
flags u16, ksize u16, key, data). A branch node's child is lo | hi << 16 |
flags << 32; a leaf node with F_SUBDATA holds a named database's MDB_db.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

PAGE = 4096
HDR = 16
P_BRANCH, P_LEAF, P_OVERFLOW = 0x01, 0x02, 0x04
F_BIGDATA, F_SUBDATA = 0x01, 0x02
# MDB_meta after the page header: magic u32, version u32, address u64,
# mapsize u64, then two MDB_db (free, main) of 48 bytes, last_pg u64, txnid u64.
_DBS = 8 + 8 + 8
_DB_SIZE = 48
_DB_ROOT = 40  # pad u32, flags u16, depth u16, 4 x u64 counts, then root


@dataclass(frozen=True)
class Meta:
    index: int  # page 0 or 1
    txnid: int
    main_root: int

    @property
    def txnid_offset(self) -> int:
        return self.index * PAGE + HDR + _DBS + 2 * _DB_SIZE + 8

    @property
    def main_root_offset(self) -> int:
        return self.index * PAGE + HDR + _DBS + _DB_SIZE + _DB_ROOT


def metas(path: Path) -> tuple[Meta, Meta]:
    """(live, older)."""
    data = path.read_bytes()[: 2 * PAGE]
    found = []
    for i in (0, 1):
        base = i * PAGE + HDR
        root = struct.unpack_from("<Q", data, base + _DBS + _DB_SIZE + _DB_ROOT)[0]
        txnid = struct.unpack_from("<Q", data, base + _DBS + 2 * _DB_SIZE + 8)[0]
        found.append(Meta(i, txnid, root))
    live, older = sorted(found, key=lambda m: m.txnid, reverse=True)
    return live, older


def flip_bit(path: Path, offset: int, bit: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << bit)]))


@dataclass(frozen=True)
class LivePage:
    pgno: int
    flags: int
    db: str  # the named database (or "main") the page belongs to
    depth: int  # 0 = that database's root


def live_pages(path: Path) -> list[LivePage]:
    """Every B-tree and overflow page reachable from the live meta page."""
    data = path.read_bytes()
    live, _ = metas(path)
    out: list[LivePage] = []

    def page(pgno: int) -> bytes:
        return data[pgno * PAGE : (pgno + 1) * PAGE]

    def walk(pgno: int, db: str, depth: int, subdbs: list[tuple[str, int]] | None) -> None:
        p = page(pgno)
        flags, lower = struct.unpack_from("<HH", p, 10)
        out.append(LivePage(pgno, flags, db, depth))
        if flags & P_OVERFLOW:
            return
        for i in range((lower - HDR) // 2):
            off = struct.unpack_from("<H", p, HDR + 2 * i)[0]
            lo, hi, nflags, ksize = struct.unpack_from("<HHHH", p, off)
            if flags & P_BRANCH:
                walk(lo | hi << 16 | nflags << 32, db, depth + 1, subdbs)
                continue
            value = off + 8 + ksize
            if nflags & F_BIGDATA:
                over = struct.unpack_from("<Q", p, value)[0]
                out.append(LivePage(over, P_OVERFLOW, db, depth + 1))
            elif nflags & F_SUBDATA and subdbs is not None:
                name = p[off + 8 : off + 8 + ksize].decode()
                subdbs.append((name, struct.unpack_from("<Q", p, value + _DB_ROOT)[0]))

    named: list[tuple[str, int]] = []
    walk(live.main_root, "main", 0, named)
    for name, root in named:
        if root != 2**64 - 1:  # P_INVALID: an empty database
            walk(root, name, 0, None)
    return out
