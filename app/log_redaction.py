"""Keep secrets out of log output, whatever library wrote the line.

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
    """Wrap every root handler's formatter. Also quiet httpx's per-request INFO lines: one per
    long poll, and each carries the bot token in its URL."""
    secrets = list(secrets)
    for handler in logging.getLogger().handlers:
        inner = handler.formatter or logging.Formatter()
        handler.setFormatter(RedactingFormatter(inner, secrets))
    logging.getLogger("httpx").setLevel(logging.WARNING)
