"""A clock for tests: every sleep jumps time forward at once; all parties read the same time.

Shared by the bot (its throttles and 429 waits) and the fakes' flood models, so rate-limit
penalties of whole seconds cost no real time.
"""

from __future__ import annotations

import asyncio


class VirtualClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)
