"""Keep secrets and message content out of log output, whatever library wrote the line.

Tokens travel in URLs (Telegram's ``/bot<token>/method``, Chat with RTX's ``?cookie=``) and
libraries put URLs in log lines and exception messages (httpx request logs, PTB's
``InvalidToken``). Rather than trusting every library, the formatter of every root handler
replaces each configured secret in the finished text, tracebacks included. Which settings are
secret is said by their owners: each ``bots.PLATFORMS`` entry, and the backend's cookie.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "***"
# Libraries whose DEBUG lines carry request and response bodies: questions and answers.
LIBRARY_LOGGERS = ("telegram", "httpx", "httpcore", "hpack", "aiosqlite", "asyncpg", "discord",
                   "aiohttp", "websockets", "asyncio")
_MIN_SECRET = 8  # shorter values (e.g. "1") would blank out ordinary words


class RedactingFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self._inner = inner
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len,
                               reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = self._inner.format(record)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


def install(secrets: Iterable[str]) -> None:
    """Wrap every root handler's formatter."""
    secrets = list(secrets)
    for handler in logging.getLogger().handlers:
        inner = handler.formatter or logging.Formatter()
        handler.setFormatter(RedactingFormatter(inner, secrets))


def quiet_libraries(level: int, *, wire: bool = False) -> None:
    """Hold the libraries' loggers at INFO or above, whatever LOG_LEVEL says: their DEBUG
    lines hold message text (PTB logs every update, aiosqlite every statement's parameters),
    and the README promises that questions and answers are never logged. ``wire`` (LOG_WIRE=1)
    lets them through, for debugging a protocol problem on a test bot."""
    floor = level if wire else max(level, logging.INFO)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(floor)
    if not wire:
        logging.getLogger("httpx").setLevel(max(level, logging.WARNING))  # a line per poll
