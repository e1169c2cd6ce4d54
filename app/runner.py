"""``rtxrelay run``: start every configured bot; one failing platform does not stop the other."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Sequence

from rtxrelay.bots import PLATFORMS, Platform, PlatformRunner, configured_platforms
from rtxrelay.bots.languages import Languages
from rtxrelay.core.conversation import ConversationService
from rtxrelay.core.errors import ConfigError, PlatformUnreachable
from rtxrelay.core.i18n import Catalogue

from .settings import Settings

log = logging.getLogger(__name__)

# Waits before each new start of a platform that could not reach its servers, then the last one
# forever: a PC that boots before its network is up gets its bots as soon as the network is.
RETRY_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0)


def load_platforms(settings: Settings) -> dict[str, PlatformRunner]:
    """The configured platforms' runners, by name; imports their SDKs."""
    return {p.name: p.load() for p in configured_platforms(settings.env)}


def freeze_startup_objects() -> None:
    """Take every object alive now out of the garbage collector's reach: modules, classes and
    the libraries' tables (~75k objects once both platforms are imported), which live as long
    as the process. Otherwise every full collection walks them again; with 1,000 asks in flight
    such a pause reached ~150 ms, and no acknowledgement goes out during it
    (bench/bench_discord_ack.py, paced runs). ``gc.freeze`` is the stdlib's tool for this."""
    gc.collect()
    gc.freeze()


def _no_bot_error(platforms: Sequence[Platform]) -> ConfigError:
    tokens = " and/or ".join(f"{p.token_setting} ({p.token_hint})" for p in platforms)
    return ConfigError("No bot is configured.",
                       hint=f"Set {tokens} in .env, then run `rtxrelay run` again.")


async def run_bots(settings: Settings, stop: asyncio.Event | None = None, *,
                   retry_delays: Sequence[float] = RETRY_DELAYS) -> int:
    from .serve import ApiSettings, serve
    from .wiring import open_relay

    platforms = load_platforms(settings)
    # RTXRELAY_API=1: the OpenAI-compatible API runs beside the bots (or alone).
    api = ApiSettings.from_env(settings.env) if settings.env.bool("RTXRELAY_API", False) \
        else None
    if not platforms and api is None:
        raise _no_bot_error(PLATFORMS)
    stop = stop or asyncio.Event()
    async with open_relay(settings) as relay:
        jobs: list[Awaitable[list[bool]]] = []
        if platforms:
            # One catalogue for the process; each user's /language choice lives in the store.
            languages = Languages(Catalogue.load(), relay.store,
                                  default=settings.default_language)
            jobs.append(_run_all(platforms, relay.service, languages, settings, stop,
                                 retry_delays))
        if api is not None:

            async def api_job() -> list[bool]:
                try:
                    await serve(relay.service, api, stop, ready=lambda url:
                                log.info("OpenAI-compatible API at %s", url))
                    return [True]
                except ConfigError as exc:
                    log.error("the API stopped: %s", exc)
                    return [False]
                finally:
                    stop.set()

            jobs.append(api_job())
        results = [ok for oks in await asyncio.gather(*jobs) for ok in oks]
    # Non-zero when a bot failed, so a service manager sees it (and can restart us).
    return 0 if all(results) else 1


async def _run_all(platforms: dict[str, PlatformRunner], service: ConversationService,
                   languages: Languages, settings: Settings, stop: asyncio.Event,
                   retry_delays: Sequence[float]) -> list[bool]:
    async def guarded(name: str, runner: PlatformRunner) -> bool:
        # One platform failing (bad token, network) must not take the others down.
        attempt = 0
        while True:
            try:
                await runner(service, languages, settings.env, stop)
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
        return list(await asyncio.gather(*(guarded(n, r) for n, r in platforms.items())))
    finally:
        stop.set()
