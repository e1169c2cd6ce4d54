"""``rtxrelay run``: start every configured bot; one failing platform does not stop the other."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable, Sequence

from .config import Settings, env_reader
from .conversation import ConversationService
from .errors import ConfigError, PlatformUnreachable

log = logging.getLogger(__name__)

PlatformRunner = Callable[[ConversationService, Settings, asyncio.Event], Awaitable[None]]
# Waits before each new start of a platform that could not reach its servers, then the last one
# forever: a PC that boots before its network is up gets its bots as soon as the network is.
RETRY_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0)


def configured_platforms(settings: Settings) -> dict[str, PlatformRunner]:
    env = env_reader(settings)
    platforms: dict[str, PlatformRunner] = {}
    if env.str("TELEGRAM_TOKEN"):
        from rtxrelay.bots.telegram_bot import run_telegram

        platforms["Telegram"] = run_telegram
    if env.str("DISCORD_TOKEN"):
        from rtxrelay.bots.discord_bot import run_discord

        platforms["Discord"] = run_discord
    return platforms


def freeze_startup_objects() -> None:
    """Take every object alive now out of the garbage collector's reach: modules, classes and
    the libraries' tables (~75k objects once both platforms are imported), which live as long
    as the process. Otherwise every full collection walks them again; with 1,000 asks in flight
    such a pause reached ~150 ms, and no acknowledgement goes out during it
    (bench/bench_discord_ack.py, paced runs). ``gc.freeze`` is the stdlib's tool for this."""
    gc.collect()
    gc.freeze()


async def run_bots(settings: Settings, stop: asyncio.Event | None = None, *,
                   retry_delays: Sequence[float] = RETRY_DELAYS) -> int:
    from .relay import open_relay

    platforms = configured_platforms(settings)
    if not platforms:
        raise ConfigError(
            "No bot is configured.",
            hint="Set TELEGRAM_TOKEN (from @BotFather) and/or DISCORD_TOKEN (Discord developer "
            "portal → Bot → Token) in .env, then run `rtxrelay run` again.",
        )
    stop = stop or asyncio.Event()
    async with open_relay(settings) as relay:

        async def guarded(name: str, runner: PlatformRunner) -> bool:
            # One platform failing (bad token, network) must not take the others down.
            attempt = 0
            while True:
                try:
                    await runner(relay.service, settings, stop)
                    return True
                except PlatformUnreachable as exc:
                    delay = retry_delays[min(attempt, len(retry_delays) - 1)]
                    attempt += 1
                    log.warning("%s bot cannot start: %s Retrying in %g s.", name, exc, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        return True  # stopped on request while waiting: not a failure
                except ConfigError as exc:
                    log.error("%s bot stopped: %s", name, exc)
                    return False
                except Exception:
                    log.exception("%s bot stopped with an error", name)
                    return False

        try:
            results = await asyncio.gather(*(guarded(n, r) for n, r in platforms.items()))
        finally:
            stop.set()
    # Non-zero when a bot failed, so a service manager sees it (and can restart us).
    return 0 if all(results) else 1
