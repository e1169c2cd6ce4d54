"""RTXRELAY_DB chooses the store: a SQLite file, or a PostgreSQL database (a real server here)
for ``ask``, ``doctor`` and everything ``open_relay`` wires; asyncpg only when it is one."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from rtxrelay.app.doctor import run_doctor
from rtxrelay.app.settings import load_settings
from rtxrelay.app.stores import open_store
from rtxrelay.core.errors import ConfigError
from rtxrelay.core.store import TurnStatus
from rtxrelay.storage.dsn import PostgresDsn
from rtxrelay.storage.postgres_store import PostgresStore
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.app.test_cli import run_cli
from tests.replica import fake_model
from tests.replica.launcher import Replica
from tests.support.postgres import PASSWORD, PostgresServer


async def test_the_store_follows_rtxrelay_db(tmp_path: Path, postgres_dsn: PostgresDsn) -> None:
    async with open_store(tmp_path / "r.db", owner="me") as store:
        assert isinstance(store, SqliteStore) and store.owner == "me"
    async with open_store(postgres_dsn, owner="me") as store:
        assert isinstance(store, PostgresStore) and store.owner == "me"
        await store.check_writable()


def test_without_asyncpg_a_postgresql_url_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "rtxrelay.storage.postgres_store", raising=False)
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg now fails
    with pytest.raises(ConfigError) as missing:
        open_store(PostgresDsn.parse("postgresql://relay:pw-1234@db.lan/rtxrelay"))
    assert missing.value.setting == "RTXRELAY_DB" and "asyncpg" in missing.value.message
    assert 'pip install "rtxrelay[postgresql]"' in missing.value.hint


async def test_doctor_checks_postgresql_and_never_shows_the_password(
        rtx_426: Replica, postgres: PostgresServer, postgres_dsn: PostgresDsn) -> None:
    out = io.StringIO()
    settings = load_settings({"RTX_URL": rtx_426.url, "RTXRELAY_DB": postgres_dsn.url}, None)
    assert await run_doctor(settings, out) == 0, out.getvalue()
    assert (f"OK    database postgresql://rtxrelay:***@127.0.0.1:{postgres.port}/"
            f"{postgres_dsn.database} is writable") in out.getvalue()
    wrong = postgres.dsn(postgres_dsn.database, password="wrong-pw-0a9b")
    out = io.StringIO()
    settings = load_settings({"RTX_URL": rtx_426.url, "RTXRELAY_DB": wrong.url}, None)
    assert await run_doctor(settings, out) == 1
    assert (f"FIX   database: PostgreSQL at {postgres_dsn.where} refused the password of user "
            "rtxrelay.") in out.getvalue()
    assert PASSWORD not in out.getvalue() and "wrong-pw-0a9b" not in out.getvalue()


async def test_ask_keeps_its_conversation_in_postgresql(
        rtx_426: Replica, postgres: PostgresServer, postgres_dsn: PostgresDsn,
        tmp_path: Path) -> None:
    env = {"RTX_URL": rtx_426.url, "RTXRELAY_DB": postgres_dsn.url, "LOG_LEVEL": "INFO"}
    code, out, err = await run_cli("ask", "what is RTX?", env=env, cwd=tmp_path)
    assert code == 0, err
    assert out.strip() == fake_model.answer_text("what is RTX?", []).strip()
    assert f"database {postgres_dsn.redacted}" in err and PASSWORD not in err
    assert not (tmp_path / "rtxrelay.db").exists()
    connection = await postgres.connect(postgres_dsn.database)
    try:
        rows = await connection.fetch("SELECT c.key, t.question, t.status FROM turns t "
                                      "JOIN conversations c ON c.id = t.conversation_id")
    finally:
        await connection.close()
    assert [(r[0][:7], r[1], r[2]) for r in rows] == [
        ("cli:ask", "what is RTX?", TurnStatus.COMPLETE.value)]
