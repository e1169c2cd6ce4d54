"""The ``rtxrelay`` command: ask, chat, doctor, discover, run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import io
import logging
import sys
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from importlib import metadata
from typing import TextIO

from rtxrelay.core.backend import Queued, Started, TextSoFar
from rtxrelay.core.conversation import Busy, Finished, Rejected, ReplyUpdate
from rtxrelay.core.errors import ConfigError, RelayError
from rtxrelay.core.store import ConversationKey, TurnStatus

from . import log_redaction
from .settings import Settings, load_settings, secrets

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    _never_fail_on_output()
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        settings = load_settings(env_file=args.env_file or ".env",
                                 required=args.env_file is not None)
    except RelayError as exc:
        _error(exc)
        return EXIT_CONFIG
    # `run` is a service and logs at INFO; the other commands print their answer and only
    # warnings, unless LOG_LEVEL asks for more.
    level = settings.log_level if args.command == "run" or settings.log_level_set else "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log_redaction.install(secrets(settings))
    log_redaction.quiet_libraries(logging.getLogger().level, wire=settings.wire_logs)
    command: Callable[[Settings, argparse.Namespace], int] = args.handler
    try:
        return command(settings, args)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        _error(exc)
        return EXIT_CONFIG
    except RelayError as exc:
        _error(exc)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtxrelay",
        description="Reach Chat with RTX from Discord, Telegram and the terminal.",
    )
    parser.add_argument("--version", action="version",
                        version=f"rtxrelay {metadata.version('rtxrelay')}")
    env_help = ("settings file (default: .env in the current folder); a relative RTXRELAY_DB "
                "is found beside it")
    parser.add_argument("--env-file", metavar="FILE", default=None, help=env_help)
    # Every subcommand takes --env-file too, before or after its name. SUPPRESS: when it is
    # not repeated after the name, the value given before it stands.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", metavar="FILE", default=argparse.SUPPRESS, help=env_help)
    sub = parser.add_subparsers(dest="command")
    ask = sub.add_parser("ask", parents=[common],
                         help="ask one question and stream the answer")
    ask.add_argument("question", nargs="+")
    ask.set_defaults(handler=_cmd_ask)
    chat = sub.add_parser("chat", parents=[common],
                          help="chat with history (reads stdin when it is not a terminal)")
    chat.add_argument("--new", action="store_true", help="start a fresh conversation")
    chat.set_defaults(handler=_cmd_chat)
    doctor = sub.add_parser("doctor", parents=[common],
                            help="check settings, Chat with RTX and the database")
    doctor.set_defaults(handler=_cmd_doctor)
    discover = sub.add_parser("discover", parents=[common],
                              help="find a running Chat with RTX on this PC")
    discover.add_argument("--ports", help="ports to probe, e.g. 7860,8000-8100")
    discover.set_defaults(handler=_cmd_discover)
    run = sub.add_parser("run", parents=[common],
                         help="start the configured Telegram and Discord bots")
    run.set_defaults(handler=_cmd_run)
    return parser


# -- ask / chat -----------------------------------------------------------------------------------


def _cmd_ask(settings: Settings, args: argparse.Namespace) -> int:
    from .wiring import open_relay

    question = " ".join(args.question)

    async def go() -> int:
        async with open_relay(settings) as relay:
            # A one-off question: its own conversation (persisted like any other).
            key = ConversationKey("cli", "ask", uuid.uuid4().hex[:8])
            return await _print_answer(relay.service.ask(key, question), sys.stdout, sys.stderr)

    return asyncio.run(go())


def _cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    from .wiring import open_relay

    interactive = sys.stdin.isatty()
    # A byte that is not valid in the console's encoding becomes U+FFFD instead of a crash.
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="replace")

    async def go() -> int:
        async with open_relay(settings) as relay:
            key = ConversationKey("cli", "terminal", _local_user())
            if args.new:
                await relay.service.reset(key)
            if interactive:
                print(
                    "Chat with RTX — /reset starts over, /retry asks again, /quit leaves.",
                    file=sys.stderr,
                )
            status = EXIT_OK
            while True:
                if interactive:
                    print("you> ", end="", file=sys.stderr, flush=True)
                line = await asyncio.to_thread(sys.stdin.readline)
                if not line:
                    break
                text = line.strip()
                if not text:
                    continue
                if text in ("/quit", "/exit"):
                    break
                if text == "/reset":
                    await relay.service.reset(key)
                    print("(new conversation)", file=sys.stderr)
                    continue
                stream = (
                    relay.service.retry(key) if text == "/retry" else relay.service.ask(key, text)
                )
                if interactive:
                    print("rtx> ", end="", file=sys.stderr, flush=True)
                result = await _print_answer(stream, sys.stdout, sys.stderr)
                status = max(status, result)
            return status

    return asyncio.run(go())


async def _print_answer(stream: AsyncGenerator[ReplyUpdate, None], out: TextIO,
                        err: TextIO) -> int:
    # aclosing: returning early must end the answer now (its conversation stays busy until
    # then, and the next line would be refused as "still answering").
    async with contextlib.aclosing(stream):
        return await _print_updates(stream, out, err)


async def _print_updates(stream: AsyncIterator[ReplyUpdate], out: TextIO, err: TextIO) -> int:
    printed = ""
    async for update in stream:
        if isinstance(update, Queued):
            print(f"(#{update.position} in line)", file=err, flush=True)
        elif isinstance(update, Started):
            continue
        elif isinstance(update, TextSoFar):
            printed = _print_more(out, printed, update.text)
        elif isinstance(update, Busy):
            print("Still answering the previous question.", file=err)
            return EXIT_FAILED
        elif isinstance(update, Rejected):
            print(update.reason, file=err)
            return EXIT_FAILED
        elif isinstance(update, Finished):
            printed = _print_more(out, printed, update.text)
            print(file=out, flush=True)
            if update.history_trimmed:
                print("(older messages were left out of the context)", file=err)
            if update.error is not None:
                _error(update.error)
                return EXIT_FAILED
            if update.status is TurnStatus.INTERRUPTED:
                print("(stopped)", file=err)
    return EXIT_OK


def _print_more(out: TextIO, printed: str, text: str) -> str:
    if text.startswith(printed):
        out.write(text[len(printed) :])
    else:  # earlier text changed (rare): start a fresh line with the whole answer
        out.write("\n" + text)
    out.flush()
    return text


# -- doctor ---------------------------------------------------------------------------------------


def _cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    return asyncio.run(run_doctor(settings, sys.stdout))


# -- discover -------------------------------------------------------------------------------------


def _cmd_discover(settings: Settings, args: argparse.Namespace) -> int:
    from rtxrelay.backends.discover import discover

    ports = _parse_ports(args.ports) if args.ports else None
    found = asyncio.run(discover(ports))
    chatrtx = [f for f in found if f.is_chatrtx]
    for item in found:
        label = "Chat with RTX" if item.is_chatrtx else "other Gradio app"
        print(
            f"{label}: {item.base_url}  (gradio {item.gradio_version}, {item.protocol}, "
            f"{item.detail})"
        )
    if not chatrtx:
        print(
            "No Chat with RTX found. Is it running? (It prints 'Open http…?cookie=… in "
            "browser' when ready.)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    best = chatrtx[0]
    print(f"\nSet RTX_URL={best.base_url}?cookie=<the cookie from the URL Chat with RTX printed>")
    if best.base_url.startswith("https"):
        print(
            "It serves https with its own certificate: also set RTX_INSECURE_LOCALHOST=1 "
            "(or RTX_CA_FILE)."
        )
    return EXIT_OK


def _parse_ports(spec: str) -> list[int]:
    ports: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(p) for p in part.split("-", 1))
                ports.extend(range(low, high + 1))
            elif part:
                ports.append(int(part))
        except ValueError:
            raise ConfigError(
                f"--ports: {part!r} is not a port or range.", hint="Use e.g. 7860,8000-8100."
            ) from None
    return ports


# -- run ------------------------------------------------------------------------------------------


def _cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from .runner import freeze_startup_objects, load_platforms, run_bots
    from .stop_signals import stop_on_signals

    load_platforms(settings)  # imports the bots' libraries now, so the freeze holds them
    freeze_startup_objects()

    async def until_stopped() -> int:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            return await run_bots(settings, stop)

    return asyncio.run(until_stopped())


# -- helpers --------------------------------------------------------------------------------------


def _never_fail_on_output() -> None:
    """Characters the console's code page lacks (a redirected Windows console is cp1252 or
    similar; Chinese answers, emoji, "→") print as "?" instead of ending the command."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="replace")


def _error(exc: RelayError) -> None:
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"  → {exc.hint}", file=sys.stderr)


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (service accounts, containers)
        return "local"


if __name__ == "__main__":
    sys.exit(main())
