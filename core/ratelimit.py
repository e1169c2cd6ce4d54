"""Per-user request limit: a sliding window that says how long to wait."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .errors import ConfigError


class SlidingWindowLimiter:
    def __init__(self, count: int, window: float, clock: Callable[[], float] = time.monotonic):
        self._count = count
        self._window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def check(self, key: str) -> float:
        """Record a request; return 0 if allowed, else the seconds until one is."""
        if self._count <= 0:
            return 0.0
        now = self._clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        if len(hits) >= self._count:
            return hits[0] + self._window - now
        hits.append(now)
        return 0.0


def parse_rate(name: str, raw: str | None, default: tuple[int, float]) -> tuple[int, float]:
    """``"10/60"`` → 10 requests per 60 s; ``"0"`` turns the limit off."""
    if raw is None or not raw.strip():
        return default
    text = raw.strip()
    if text == "0":
        return (0, 1.0)
    count, _, window = text.partition("/")
    try:
        result = (int(count), float(window or 60))
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a rate.",
                          hint="Use COUNT/SECONDS, e.g. 10/60, or 0 for no limit.") from None
    if result[0] < 0 or result[1] <= 0:
        raise ConfigError(f"{name}={raw!r} is out of range.", hint="Use e.g. 10/60.")
    return result
