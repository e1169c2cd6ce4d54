"""``rtxrelay doctor``: one line per check, each OK or what to do."""

from __future__ import annotations

from typing import TextIO

from rtxrelay.storage.sqlite_store import SqliteStore

from .config import Settings, env_reader
from .errors import RelayError
from .relay import backend_session, make_backend


async def run_doctor(settings: Settings, out: TextIO) -> int:
    problems = 0

    def ok(what: str) -> None:
        print(f"OK    {what}", file=out)

    def bad(what: str, exc: RelayError | str) -> None:
        nonlocal problems
        problems += 1
        if isinstance(exc, RelayError):
            print(f"FIX   {what}: {exc.message}", file=out)
            if exc.hint:
                print(f"      → {exc.hint}", file=out)
        else:
            print(f"FIX   {what}: {exc}", file=out)

    def info(what: str) -> None:
        print(f"--    {what}", file=out)

    ok(f"settings loaded ({settings.env_file or 'environment only, no .env file'})")
    try:
        launch = settings.backend.launch_url()
        settings.backend.ssl_context(launch)  # reports a bad RTX_CA_FILE / insecure setting
    except RelayError as exc:
        bad("RTX_URL", exc)
    else:
        ok(f"RTX_URL is {launch.redacted}")
        if not launch.cookie:
            info("RTX_URL has no ?cookie=…; Chat with RTX 0.2/0.3 will reject the session")
        async with backend_session() as http:
            backend = make_backend(http, settings)
            try:
                found = await backend.probe()
            except RelayError as exc:
                bad("Chat with RTX", exc)
            else:
                ok(
                    f"Chat with RTX reachable (gradio {found.gradio_version}, protocol "
                    f"{found.protocol})"
                )
                ok(f"chat function found: {found.chat_function}")
                ok("session cookie accepted")
    try:
        async with SqliteStore(settings.database) as store:
            await store.check_writable()
    except RelayError as exc:
        bad("database", exc)
    else:
        ok(f"database {settings.database} is writable")
    env = env_reader(settings)
    platforms = [
        name
        for name, var in (("Telegram", "TELEGRAM_TOKEN"), ("Discord", "DISCORD_TOKEN"))
        if env.str(var)
    ]
    if platforms:
        ok("bots configured: " + ", ".join(platforms))
    else:
        info(
            "no bot token set (TELEGRAM_TOKEN, DISCORD_TOKEN): `rtxrelay run` has nothing to start"
        )
    print(f"\n{'All good.' if not problems else f'{problems} problem(s) to fix.'}", file=out)
    return 0 if not problems else 1
