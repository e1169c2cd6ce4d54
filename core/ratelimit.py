"""Sliding-window rate limits that say how long to wait."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Rate:
    """``count`` events per ``window`` seconds; a count of 0 means no limit."""

    count: int
    window: float

    OFF: ClassVar[Rate]


Rate.OFF = Rate(0, 1.0)


class SlidingWindowLimiter:
    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self._count = rate.count
        self._window = rate.window
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
