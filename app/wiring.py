"""Wire settings into live objects: one HTTP session, the store, the backend, the service."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.settings import ChatRtxTarget
from rtxrelay.core.conversation import ConversationService

from . import processes
from .settings import BackendFamily, Settings, load_settings
from .stores import RelayStore, open_store

if TYPE_CHECKING:  # imported where used: `rtxrelay ask` loads only its own backend's code
    from rtxrelay.backends.chatrtx.supervisor import SupervisedChatRtx
    from rtxrelay.backends.openai.backend import OpenAiBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Relay:
    settings: Settings
    backend: ChatRtxBackend | OpenAiBackend
    store: RelayStore
    service: ConversationService
    child: SupervisedChatRtx | None = None  # Chat with RTX, when rtxrelay started it


def backend_session() -> aiohttp.ClientSession:
    # trust_env=False: Chat with RTX is local; a system HTTP proxy must not see its traffic.
    # DummyCookieJar: ChatRTX's cookie check breaks on any extra cookie in the header.
    return aiohttp.ClientSession(trust_env=False, cookie_jar=aiohttp.DummyCookieJar())


def make_backend(http: aiohttp.ClientSession, settings: Settings,
                 child: SupervisedChatRtx | None = None) -> ChatRtxBackend | OpenAiBackend:
    """The one place settings become a backend (relay, doctor); raises on bad settings.
    Chat with RTX's address comes from ``child`` when rtxrelay started it (RTX_LAUNCH),
    else from RTX_URL, read again from the settings file after a restart."""
    if settings.family is BackendFamily.OPENAI:
        from rtxrelay.backends.openai.backend import OpenAiBackend

        return OpenAiBackend(http, settings.openai)
    if child is not None:
        target = child.target()
        assert target is not None, "a child is handed over once it printed its URL"
        reload: Callable[[], ChatRtxTarget | None] | None = child.target
    else:
        target = settings.chatrtx.target()
        reload = _reread_rtx_url(settings.env_file)
    return ChatRtxBackend(http, target.launch, ssl_context=target.ssl_context,
                          timeouts=settings.chatrtx.timeouts, chat_fn=settings.chatrtx.chat_fn,
                          reload=reload)


def _reread_rtx_url(env_file: Path | None) -> Callable[[], ChatRtxTarget] | None:
    """Chat with RTX's address as the settings file says now (the environment still wins):
    pasting its new launch URL into .env reaches a running rtxrelay."""
    if env_file is None:
        return None
    return lambda: load_settings(env_file=env_file).chatrtx.target()


@asynccontextmanager
async def open_relay(settings: Settings) -> AsyncIterator[Relay]:
    """The store first (a broken database fails before Chat with RTX is started), then
    Chat with RTX's address: RTX_URL, or what the child RTX_LAUNCH starts prints."""
    chatrtx = settings.chatrtx
    if settings.family is BackendFamily.OPENAI:
        settings.openai.endpoint()  # fails fast on bad settings
    elif chatrtx.launch_command is None:
        chatrtx.target()
    log.info("settings from %s; database %s", settings.env_file or "the environment only",
             settings.database)
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            open_store(settings.database, owner=processes.current()))
        recovered = await store.recover_pending(processes.is_alive)
        if recovered:
            log.info("marked %d unfinished answer(s) from a previous run as interrupted", recovered)
        http = await stack.enter_async_context(backend_session())
        child: SupervisedChatRtx | None = None
        if settings.family is BackendFamily.CHATRTX and chatrtx.launch_command is not None:
            from rtxrelay.backends.chatrtx.supervisor import SupervisedChatRtx

            log.info("starting Chat with RTX (RTX_LAUNCH); it can take minutes to load")
            child = await stack.enter_async_context(SupervisedChatRtx(
                chatrtx.launch_command, chatrtx, cwd=chatrtx.launch_dir))
        backend = make_backend(http, settings, child)
        limits = settings.limits
        if not isinstance(backend, ChatRtxBackend):
            product = await backend.identify()
            log.info("backend: %s at %s", product.label, settings.openai.endpoint())
            if not settings.jobs_set and product.parallel:
                limits = replace(limits, max_concurrent_jobs=product.parallel)
            log.info("up to %d answer(s) at once (MAX_CONCURRENT_JOBS%s)",
                     limits.max_concurrent_jobs,
                     "" if settings.jobs_set else " unset: the server's own figure or 4")
        service = ConversationService(backend, store, limits)
        try:
            yield Relay(settings, backend, store, service, child)
        finally:
            await service.close()
