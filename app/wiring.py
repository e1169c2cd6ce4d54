"""Wire settings into live objects: one HTTP session, the store, the backends, the service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.settings import ChatRtxTarget
from rtxrelay.core.conversation import ConversationService
from rtxrelay.core.errors import BackendError, ConfigError
from rtxrelay.core.pool import BackendPool, Member
from rtxrelay.storage.dsn import PostgresDsn

from . import processes
from .settings import BackendFamily, BackendSettings, Settings, load_settings
from .stores import RelayStore, make_pool, open_store

if TYPE_CHECKING:  # imported where used: `rtxrelay ask` loads only its own backend's code
    from rtxrelay.backends.chatrtx.supervisor import SupervisedChatRtx
    from rtxrelay.backends.openai.backend import OpenAiBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Relay:
    settings: Settings
    store: RelayStore
    service: ConversationService  # its ``pool`` holds the backends
    child: SupervisedChatRtx | None = None  # Chat with RTX, when rtxrelay started it


def backend_session() -> aiohttp.ClientSession:
    # trust_env=False: Chat with RTX is local; a system HTTP proxy must not see its traffic.
    # DummyCookieJar: ChatRTX's cookie check breaks on any extra cookie in the header.
    return aiohttp.ClientSession(trust_env=False, cookie_jar=aiohttp.DummyCookieJar())


def make_backend(http: aiohttp.ClientSession, backend: BackendSettings, settings: Settings,
                 child: SupervisedChatRtx | None = None) -> ChatRtxBackend | OpenAiBackend:
    """The one place settings become a backend (relay, doctor); raises on bad settings.
    Chat with RTX's address comes from ``child`` when rtxrelay started it (RTX_LAUNCH),
    else from RTX_URL, read again from the settings files after a restart."""
    backend.check()
    if backend.family is BackendFamily.OPENAI:
        from rtxrelay.backends.openai.backend import OpenAiBackend

        return OpenAiBackend(http, backend.openai)
    if child is not None:
        target = child.target()
        assert target is not None, "a child is handed over once it printed its URL"
        reload: Callable[[], ChatRtxTarget | None] | None = child.target
    else:
        target = backend.chatrtx.target()
        reload = _reread_rtx_url(settings, backend.name)
    return ChatRtxBackend(http, target.launch, ssl_context=target.ssl_context,
                          timeouts=backend.chatrtx.timeouts, chat_fn=backend.chatrtx.chat_fn,
                          reload=reload)


def _reread_rtx_url(settings: Settings, name: str) -> Callable[[], ChatRtxTarget] | None:
    """Chat with RTX's address as the settings files say now (the environment still wins):
    pasting its new launch URL into .env (or backends.toml) reaches a running rtxrelay."""
    if settings.env_file is None and settings.backends_file is None:
        return None
    env_file = settings.env_file

    def reread() -> ChatRtxTarget:
        backends = load_settings(env_file=env_file).backends
        backend = next((b for b in backends if b.name == name), None)
        if backend is None:
            raise ConfigError(f"The backend {name!r} is no longer listed.",
                              hint="Restart rtxrelay after changing the list of backends.")
        return backend.chatrtx.target()

    return reread


async def _member(backend: ChatRtxBackend | OpenAiBackend, settings: BackendSettings,
                  *, pool: bool) -> Member:
    """The backend and its slots: MAX_CONCURRENT_JOBS, else Chat with RTX 1, else what the
    server says it runs at once (llama.cpp's slots), else 4."""
    jobs = settings.jobs or 1
    label = f"backend {settings.name}" if pool else "backend"
    if not isinstance(backend, ChatRtxBackend):
        product = await backend.identify()
        log.info("%s: %s at %s", label, product.label, settings.openai.endpoint())
        jobs = settings.jobs or product.parallel or 4
        log.info("%s: up to %d answer(s) at once (MAX_CONCURRENT_JOBS%s)", label, jobs,
                 "" if settings.jobs else " unset: the server's own figure or 4")
    elif pool:
        log.info("%s: Chat with RTX at %s", label, settings.chatrtx.launch_url().redacted)
    return Member(settings.name, backend, jobs)


@asynccontextmanager
async def open_relay(settings: Settings) -> AsyncIterator[Relay]:
    """The store first (a broken database fails before Chat with RTX is started), then the
    backends: .env's one (RTX_URL, what the child RTX_LAUNCH starts prints, or
    OPENAI_BASE_URL), or each of backends.toml's, in one pool."""
    for backend_settings in settings.backends:
        backend_settings.check()  # fails fast on bad settings
    chatrtx = settings.chatrtx
    log.info("settings from %s; database %s", settings.env_file or "the environment only",
             settings.database)
    # With PostgreSQL the processes sharing the line may run on several PCs: a pid names a
    # process on one of them only, and recovery goes by the line's leases (its start()).
    shared = isinstance(settings.database, PostgresDsn)
    owner = f"{socket.gethostname()}/{processes.current()}" if shared else processes.current()
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings.database, owner=owner))
        if not shared:
            recovered = await store.recover_pending(processes.is_alive)
            if recovered:
                log.info("marked %d unfinished answer(s) from a previous run as interrupted",
                         recovered)
        http = await stack.enter_async_context(backend_session())
        child: SupervisedChatRtx | None = None
        if not settings.pool and settings.family is BackendFamily.CHATRTX and \
                chatrtx.launch_command is not None:
            from rtxrelay.backends.chatrtx.supervisor import SupervisedChatRtx

            log.info("starting Chat with RTX (RTX_LAUNCH); it can take minutes to load")
            child = await stack.enter_async_context(SupervisedChatRtx(
                chatrtx.launch_command, chatrtx, cwd=chatrtx.launch_dir))
        members = [await _member(make_backend(http, entry, settings, child), entry,
                                 pool=settings.pool) for entry in settings.backends]
        limits = settings.limits
        pool = make_pool(store, members, probe_interval=limits.recovery_probe_interval,
                         check_interval=limits.pool_check_interval, lease=settings.line_lease)
        service = ConversationService(pool, store, limits)  # it closes the pool
        stack.push_async_callback(service.close)
        await pool.start()  # a shared line also recovers the answers of processes gone
        if settings.pool:
            await _first_checks(pool)
        yield Relay(settings, store, service, child)



async def _first_checks(pool: BackendPool) -> None:
    """Which backends of a pool answer now: the others start out taken out (and probed)
    rather than failing the first question sent to them."""
    errors = await asyncio.gather(*(pool.check(member) for member in pool.members))
    for member, error in zip(pool.members, errors, strict=True):
        if isinstance(error, BackendError):
            pool.take_out(member, error)
    up = sum(error is None for error in errors)
    log.info("%d of %d backends answer", up, len(pool.members))
