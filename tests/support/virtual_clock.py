"""A clock for tests: every sleep jumps time forward at once; all parties read the same time.

Shared by the bot (its throttles and 429 waits) and the fakes' flood models, so rate-limit
penalties of whole seconds cost no real time.
"""

from __future__ import annotations

import asyncio


class VirtualClock:
    def __init__(self, start: float = 0.0, *, real_share: float = 0.0) -> None:
        """``real_share``: the fraction of each sleep also waited in real time. A bot's
        loops that only pace themselves (the typing indicator every few seconds) would
        otherwise spin as fast as requests go: 98 % of a Telegram test's requests were
        typing actions when every sleep was instant."""
        self.now = start
        self._real_share = real_share

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.now += seconds
        await asyncio.sleep(seconds * self._real_share)
