"""Parse the launch URL Chat with RTX prints at start-up.

Chat with RTX 0.2/0.3 prints ``Open http(s)://127.0.0.1:PORT?cookie=UUID&__theme=dark in browser
to start Chat with RTX``. The port is random and the cookie is a fresh UUID at every launch; both
are needed. Users paste that URL (or the whole line) into ``RTX_URL``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from rtxrelay.core.errors import BackendError, BackendErrorKind
from rtxrelay.core.hosts import is_loopback_host

_URL_IN_LINE = re.compile(r"https?://\S+", re.IGNORECASE)
COOKIE_NAME = "_s_chat_"
_COOKIE_VALUE = re.compile(r"(cookie=)[^&\s'\"]+", re.IGNORECASE)


@dataclass(frozen=True)
class LaunchUrl:
    scheme: str
    host: str
    port: int
    path: str
    cookie: str | None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path.rstrip('/')}"

    @property
    def redacted(self) -> str:
        """The URL without the cookie: safe for logs and error messages."""
        return self.base_url + ("?cookie=…" if self.cookie else "")

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def cookie_header(self) -> dict[str, str]:
        return {"Cookie": f"{COOKIE_NAME}={self.cookie}"} if self.cookie else {}


def _without_cookie(text: str) -> str:
    """``text`` with any cookie value masked: it is a credential, even in a bad URL."""
    return _COOKIE_VALUE.sub(r"\1…", text)


def parse_launch_url(raw: str) -> LaunchUrl:
    """Parse ``RTX_URL``; raise a ``BackendError(BAD_URL)`` that says how to fix it."""
    text = raw.strip().strip("'\"")
    if not text:
        raise BackendError(
            BackendErrorKind.BAD_URL,
            "RTX_URL is empty.",
            hint="Set it to the URL Chat with RTX prints at start-up, e.g. "
            "http://127.0.0.1:12345?cookie=…  (run `rtxrelay discover` to find the port).",
        )
    found = _URL_IN_LINE.search(text)
    if found is None:
        raise BackendError(
            BackendErrorKind.BAD_URL,
            f"RTX_URL {_without_cookie(text)[:60]!r} is not an http(s) URL.",
            hint="Copy the whole 'Open http://127.0.0.1:PORT?cookie=… in browser' URL from the "
            "Chat with RTX window.",
        )
    parts = urlsplit(found.group(0).rstrip(".,;)"))
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise BackendError(
            BackendErrorKind.BAD_URL,
            "RTX_URL has no host or port.",
            hint="Chat with RTX picks a new port at every launch: copy the URL it printed, "
            "including ':PORT'.",
        )
    cookies = parse_qs(parts.query).get("cookie")
    cookie = cookies[0].strip() if cookies else None
    return LaunchUrl(
        scheme=parts.scheme.lower(),
        host=parts.hostname,
        port=port,
        path=parts.path or "/",
        cookie=cookie or None,
    )
