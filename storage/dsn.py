"""``RTXRELAY_DB=postgresql://…`` as a value settings can hold without the PostgreSQL driver.

Settings are read by every command, ``rtxrelay ask`` included, which must not pay for asyncpg
when the database is a SQLite file: this module is the standard library only. The URL holds a
password, so the value never shows it: ``str()``, ``repr()`` and ``redacted`` mask it, and the
errors below never echo it either.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

from rtxrelay.core.errors import ConfigError

SCHEMES = ("postgresql", "postgres")  # both are libpq's (and asyncpg's) spellings
DEFAULT_PORT = 5432
MASK = "***"
_SETTING = "RTXRELAY_DB"
_EXAMPLE = "postgresql://user:password@host:5432/rtxrelay"
_ENCODED = "A password with @, / or : in it needs them written %40, %2F and %3A."


def is_url(text: str) -> bool:
    """Whether RTXRELAY_DB is meant as a URL rather than a SQLite file's path (Windows
    paths have no ``://``)."""
    return "://" in text


def mask_password(text: str) -> str:
    """``text`` with anything that may be a password masked: for echoing a URL that did not
    parse. It masks too much rather than too little: from the user's ``:`` to the last ``@``
    (a password with a raw ``/`` or ``@`` in it included)."""
    text = re.sub(r"(://[^/@:]*:).*@", rf"\1{MASK}@", text)
    return _mask_query_password(text)


def _mask_query_password(text: str) -> str:
    return re.sub(r"(?i)([?&]password=)[^&#]*", rf"\1{MASK}", text)


@dataclass(frozen=True)
class PostgresDsn:
    """A validated ``postgresql://user:password@host:port/database?options`` URL.

    ``url`` is what the driver gets; everything else is for people (logs, ``doctor``, error
    texts) and never includes the password."""

    url: str = field(repr=False)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        shown = mask_password(self.url)
        if parts.scheme.lower() not in SCHEMES:
            raise ConfigError(
                f"{_SETTING}={shown} is neither a SQLite file's path nor a PostgreSQL URL.",
                hint=f"Use a file path (rtxrelay.db) or {_EXAMPLE}.", setting=_SETTING)
        if "," in parts.netloc:
            raise ConfigError(
                f"{_SETTING}={shown} names several hosts; rtxrelay connects to one.",
                hint=f"Keep one host: {_EXAMPLE}.", setting=_SETTING)
        try:
            parts.port  # noqa: B018 - urllib validates the port only when it is read
        except ValueError:
            raise ConfigError(f"{_SETTING}={shown} has no valid port.",
                              hint=f"A port is a number from 1 to 65535: {_EXAMPLE}. "
                              f"{_ENCODED}",
                              setting=_SETTING) from None
        database = urllib.parse.unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise ConfigError(
                f"{_SETTING}={shown} names no database.",
                hint=f"Add the database's name after the host: {_EXAMPLE}. {_ENCODED}",
                setting=_SETTING)

    @classmethod
    def parse(cls, text: str) -> PostgresDsn:
        """``text`` as given in RTXRELAY_DB (surrounding spaces ignored); ConfigError if it
        is no usable PostgreSQL URL."""
        return cls(text.strip())

    @property
    def _parts(self) -> urllib.parse.SplitResult:
        return urllib.parse.urlsplit(self.url)

    @property
    def _query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self._parts.query))

    @property
    def host(self) -> str:
        """The host as written, or ``?host=`` (a socket folder), else libpq's default."""
        return self._parts.hostname or self._query.get("host") or "localhost"

    @property
    def port(self) -> int:
        query_port = self._query.get("port", "")
        return self._parts.port or (int(query_port) if query_port.isdigit() else DEFAULT_PORT)

    @property
    def database(self) -> str:
        return urllib.parse.unquote(self._parts.path.lstrip("/"))

    @property
    def user(self) -> str | None:
        user = self._parts.username or self._query.get("user")
        return urllib.parse.unquote(user) if user else None

    @property
    def password(self) -> str | None:
        """For the log redaction's list of secrets only."""
        secret = self._parts.password or self._query.get("password")
        return urllib.parse.unquote(secret) if secret else None

    @property
    def secrets(self) -> tuple[str, ...]:
        """The password as written in the URL and decoded, for the log redaction."""
        written = self._parts.password or next(
            iter(re.findall(r"(?i)[?&]password=([^&#]*)", self.url)), None)
        return tuple(dict.fromkeys(s for s in (written, self.password) if s))

    @property
    def where(self) -> str:
        """``host:port/database``: what error texts name (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}/{self.database}"

    @property
    def redacted(self) -> str:
        """The URL with its password masked, for logs and ``doctor``."""
        parts = self._parts
        url = self.url
        if parts.password is not None:  # the netloc comes first after the scheme
            userinfo, _, hostport = parts.netloc.rpartition("@")
            masked = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostport}"
            url = url.replace(parts.netloc, masked, 1)
        return _mask_query_password(url)

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"PostgresDsn({self.redacted!r})"
