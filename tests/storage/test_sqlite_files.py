"""The SQLite file holds every conversation: it is created private to its owner."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rtxrelay.storage.sqlite_store import SqliteStore

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX modes; Windows uses ACLs")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.fault('13', 'the database is created 0600 in 0700 folders')
async def test_new_database_and_folders_are_private(fault, tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "relay.db"
    old = os.umask(0o022)  # the usual default: files 0644, folders 0755
    try:
        async with SqliteStore(path) as store:
            conversation = await store.current("k")
            await store.add_question(conversation.id, "q")
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    for extra in path.parent.glob("relay.db-*"):  # WAL and shared-memory files
        assert mode(extra) & 0o077 == 0, extra
    fault()


async def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    async with SqliteStore(path):
        pass
    path.chmod(0o644)
    async with SqliteStore(path):
        pass
    assert mode(path) == 0o600
