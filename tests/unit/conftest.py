"""Fixtures the unit tests share (a module's own fixture of the same name,
sized for what it tests, takes precedence)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from knhkd.store.env import MB, Store, open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real LMDB store in the test's directory, 8 MiB at most."""
    store = open_store(tmp_path, map_size=8 * MB, max_map_size=8 * MB)
    try:
        yield store
    finally:
        store.close()
