"""``rtxrelay doctor``: one line per check, each OK or what to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from rtxrelay.bots import PLATFORMS, configured_platforms
from rtxrelay.core.errors import RelayError

from .settings import BackendFamily, BackendSettings, Settings
from .stores import open_store
from .wiring import backend_session, make_backend


async def run_doctor(settings: Settings, out: TextIO) -> int:
    problems = 0

    def ok(what: str) -> None:
        print(f"OK    {what}", file=out)

    def bad(what: str, exc: RelayError) -> None:
        nonlocal problems
        problems += 1
        print(f"FIX   {what}: {exc.message}", file=out)
        if exc.hint:
            print(f"      → {exc.hint}", file=out)

    def info(what: str) -> None:
        print(f"--    {what}", file=out)

    ok(f"settings from {settings.env_file or 'the environment only (no .env file)'}")
    if settings.pool:
        ok(f"{len(settings.backends)} backends from {settings.backends_file}: "
           + ", ".join(backend.name for backend in settings.backends))
    for backend in settings.backends:
        # In a pool every line says which backend it is about.
        tag = f"[{backend.name}] " if settings.pool else ""
        await _check_backend(settings, backend, *_tagged(tag, ok, bad, info))
    try:  # a PostgreSQL URL shows with its password masked
        async with open_store(settings.database) as store:
            await store.check_writable()
    except RelayError as exc:
        bad("database", exc)
    else:
        ok(f"database {settings.database} is writable")
    platforms = configured_platforms(settings.env)
    if platforms:
        ok("bots configured: " + ", ".join(p.name for p in platforms))
    else:
        tokens = ", ".join(p.token_setting for p in PLATFORMS)
        info(f"no bot token set ({tokens}): `rtxrelay run` has nothing to start")
    print(f"\n{'All good.' if not problems else f'{problems} problem(s) to fix.'}", file=out)
    return 0 if not problems else 1


def _tagged(tag: str, ok: Callable[[str], None], bad: Callable[[str, RelayError], None],
            info: Callable[[str], None]) -> tuple[Callable[[str], None],
                                                  Callable[[str, RelayError], None],
                                                  Callable[[str], None]]:
    def tagged_ok(what: str) -> None:
        ok(tag + what)

    def tagged_bad(what: str, exc: RelayError) -> None:
        bad(tag + what, exc)

    def tagged_info(what: str) -> None:
        info(tag + what)

    return tagged_ok, tagged_bad, tagged_info


async def _check_backend(settings: Settings, backend: BackendSettings,
                         ok: Callable[[str], None], bad: Callable[[str, RelayError], None],
                         info: Callable[[str], None]) -> None:
    if backend.family is BackendFamily.OPENAI:
        await _check_openai(settings, backend, ok, bad, info)
    elif backend.chatrtx.launch_command is not None:
        # Starting Chat with RTX takes minutes and a GPU: doctor does not; ask does.
        info("RTX_LAUNCH is set: rtxrelay starts Chat with RTX itself and reads its URL "
             "(RTX_URL is not used); `rtxrelay ask hello` checks it end to end")
    else:
        await _check_rtx_url(settings, backend, ok, bad, info)


async def _check_rtx_url(settings: Settings, backend: BackendSettings,
                         ok: Callable[[str], None], bad: Callable[[str, RelayError], None],
                         info: Callable[[str], None]) -> None:
    try:
        launch = backend.chatrtx.launch_url()
        backend.chatrtx.ssl_context(launch)  # reports a bad RTX_CA_FILE / insecure setting
    except RelayError as exc:
        bad(getattr(exc, "setting", None) or "RTX_URL", exc)
        return
    ok(f"RTX_URL is {launch.redacted}")
    if not launch.cookie:
        info("RTX_URL has no ?cookie=…; Chat with RTX 0.2/0.3 will reject the session")
    async with backend_session() as http:
        chatrtx = make_backend(http, backend, settings)
        try:
            found = await chatrtx.probe()
        except RelayError as exc:
            bad("Chat with RTX", exc)
            return
    for check in found.checks:
        ok(check)


async def _check_openai(settings: Settings, backend: BackendSettings,
                        ok: Callable[[str], None], bad: Callable[[str, RelayError], None],
                        info: Callable[[str], None]) -> None:
    try:
        endpoint = backend.openai.endpoint()
    except RelayError as exc:
        bad(getattr(exc, "setting", None) or "OPENAI_BASE_URL", exc)
        return
    ok(f"OPENAI_BASE_URL is {endpoint}")
    async with backend_session() as http:
        server = make_backend(http, backend, settings)
        try:
            found = await server.probe()
        except RelayError as exc:
            bad(f"the server at {endpoint}", exc)
            return
    ok(f"{found.product} answers at {found.url}")
    for check in found.checks:
        ok(check)
    jobs = backend.jobs or found.parallel or 4
    info(f"up to {jobs} answer(s) at once" + ("" if backend.jobs else
         " (MAX_CONCURRENT_JOBS unset: " + ("the server's own figure)" if found.parallel
                                            else "the default for such servers)")))
    if backend.openai.system_prompt:
        info("SYSTEM_PROMPT is set: every conversation starts with it")
