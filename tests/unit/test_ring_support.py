"""Pieces the ring path relies on outside knhkd/hotpath: batch observation ids
(store/ids.py) and the ``[ring]`` configuration section."""

from __future__ import annotations

import struct
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ulid import ULID

from knhkd.config import ConfigError, build, load
from knhkd.store import ids


@settings(max_examples=300, deadline=None)
@given(
    now_ns=st.integers(min_value=0, max_value=(2**48 - 1) * 1_000_000),
    first=st.integers(min_value=0, max_value=2**64 - 64),
    count=st.integers(min_value=0, max_value=40),
    rnd=st.binary(min_size=80, max_size=80),
)
def test_batch_ids_are_exactly_the_ulids_of_one_at_a_time(
    now_ns: int, first: int, count: int, rnd: bytes
) -> None:
    with mock.patch.object(ids.secrets, "token_bytes", lambda n: rnd[:n]):
        got = ids.observation_ids(now_ns, first, count)
    ms = (now_ns // 1_000_000).to_bytes(6, "big")
    # observation_ids reads each 16 random bits in host order.
    words = [struct.unpack("=H", rnd[2 * i : 2 * i + 2])[0] for i in range(count)]
    want = [
        str(ULID.from_bytes(ms + (first + i).to_bytes(8, "big") + words[i].to_bytes(2, "big")))
        for i in range(count)
    ]
    assert got == want
    assert [ids.seq_of(x) for x in got] == list(range(first, first + count))


def test_batch_ids_draw_fresh_random_bits() -> None:
    a = ids.observation_ids(1_700_000_000_000_000_000, 0, 64)
    b = ids.observation_ids(1_700_000_000_000_000_000, 0, 64)
    assert a != b and [ids.seq_of(x) for x in a] == [ids.seq_of(x) for x in b]


def test_ring_defaults_and_path(tmp_path: Path) -> None:
    cfg = load(None, env={})
    assert cfg.ring.enabled and cfg.ring.lanes == 8 and cfg.ring.capacity == 8192
    assert cfg.ring_path == Path("./var/knhkd/observations.ring")
    f = tmp_path / "k.toml"
    f.write_text('[ring]\npath = "rings/obs.ring"\nevent_codes = { "7" = "plc.error" }\n')
    cfg = load(f, env={})
    assert cfg.ring_path == tmp_path / "rings" / "obs.ring"
    assert cfg.ring.event_codes == {"7": "plc.error"}


@pytest.mark.parametrize(
    ("ring", "key"),
    [
        ({"capacity": 1000}, "ring.capacity"),
        ({"capacity": 32}, "ring.capacity"),
        ({"lanes": 65}, "ring.lanes"),
        ({"mode": 0o10000}, "ring.mode"),
        ({"event_codes": {"x1": "a"}}, "ring.event_codes.x1"),
        ({"event_codes": {"70000": "a"}}, "ring.event_codes.70000"),
        ({"nonsense": 1}, "ring.nonsense"),
    ],
)
def test_invalid_ring_settings_are_named(ring: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build({"ring": ring})
    assert info.value.key == key


def test_an_event_code_must_name_a_valid_event_type() -> None:
    with pytest.raises(ConfigError) as info:
        build({"ring": {"event_codes": {"1": "has space"}}})
    assert info.value.key.startswith("ring.event_codes")
