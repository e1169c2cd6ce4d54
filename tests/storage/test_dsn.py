"""RTXRELAY_DB=postgresql://…: validated up front, and its password never shown."""

from __future__ import annotations

import pytest

from rtxrelay.core.errors import ConfigError
from rtxrelay.storage.dsn import PostgresDsn, is_url

SECRET = "s3cr%40t-pw"  # "s3cr@t-pw", written as a URL must


@pytest.mark.parametrize(("url", "where", "user", "redacted"), [
    (f"postgresql://relay:{SECRET}@db.lan:5433/rtxrelay?sslmode=require",
     "db.lan:5433/rtxrelay", "relay", "postgresql://relay:***@db.lan:5433/rtxrelay?sslmode=require"),
    (f"postgres://relay:{SECRET}@127.0.0.1/rtxrelay", "127.0.0.1:5432/rtxrelay", "relay",
     "postgres://relay:***@127.0.0.1/rtxrelay"),
    ("postgresql://relay@[::1]:6000/my%20db", "[::1]:6000/my db", "relay",
     "postgresql://relay@[::1]:6000/my%20db"),
    (f"postgresql:///rtxrelay?host=/run/postgresql&user=relay&password={SECRET}",
     "/run/postgresql:5432/rtxrelay", "relay",
     "postgresql:///rtxrelay?host=/run/postgresql&user=relay&password=***"),
    ("  POSTGRESQL://relay@localhost/rtxrelay  ", "localhost:5432/rtxrelay", "relay",
     "POSTGRESQL://relay@localhost/rtxrelay"),
])
def test_accepted_urls_say_where_and_hide_the_password(url: str, where: str, user: str,
                                                      redacted: str) -> None:
    dsn = PostgresDsn.parse(url)
    assert is_url(url)
    assert (dsn.where, dsn.user, dsn.redacted, str(dsn)) == (where, user, redacted, redacted)
    assert repr(dsn) == f"PostgresDsn({redacted!r})"
    for shown in (dsn.redacted, str(dsn), repr(dsn), f"{dsn}", dsn.where):
        assert "s3cr" not in shown
    if "password" in url or ":s3cr" in url:
        assert dsn.password == "s3cr@t-pw"
        assert set(dsn.secrets) == {"s3cr@t-pw", SECRET}


@pytest.mark.parametrize(("url", "expected"), [
    (f"mysql://relay:{SECRET}@host/rtxrelay", "is neither a SQLite file's path nor a PostgreSQL"),
    (f"sqlite://relay:{SECRET}@host/rtxrelay", "is neither a SQLite file's path nor a PostgreSQL"),
    (f"postgresql://relay:{SECRET}@host:99999/rtxrelay", "has no valid port"),
    (f"postgresql://relay:{SECRET}@host:port/rtxrelay", "has no valid port"),
    (f"postgresql://relay:{SECRET}@host:5432", "names no database"),
    (f"postgresql://relay:{SECRET}@host:5432/", "names no database"),
    (f"postgresql://relay:{SECRET}@host:5432/a/b", "names no database"),
    (f"postgresql://relay:{SECRET}@one,two/rtxrelay", "names several hosts"),
    ("postgresql://relay:pass/with/slashes@host/rtxrelay", "has no valid port"),
])
def test_malformed_urls_are_a_config_error_without_the_password(url: str,
                                                                expected: str) -> None:
    with pytest.raises(ConfigError) as bad:
        PostgresDsn.parse(url)
    assert bad.value.setting == "RTXRELAY_DB" and expected in bad.value.message
    assert "postgresql://user:password@host:5432/rtxrelay" in bad.value.hint
    assert "s3cr" not in str(bad.value) and "slashes" not in str(bad.value)


def test_paths_are_not_urls() -> None:
    for path in ("rtxrelay.db", "C:\\Users\\ada\\rtxrelay.db", "/var/lib/rtxrelay/r.db",
                 ":memory:"):
        assert not is_url(path)
