"""The ``rtxrelay`` command: ask, chat, doctor, discover, run."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import io
import logging
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rtxrelay.core.errors import ConfigError, RelayError
from rtxrelay.core.store import ConversationKey

from . import log_redaction, terminal
from .settings import Settings, load_settings, secrets

if TYPE_CHECKING:
    from rtxrelay.backends.discover import Found
    from rtxrelay.backends.openai.discover import FoundServer

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
BRIDGE_FILE = "rtxrelay_chatrtx_bridge.py"
# Where model servers listen by default: ChatRTX 0.5's NIM, llama.cpp, the ChatRTX bridge,
# NVIDIA's trt-llm-as-openai, Ollama, LM Studio.
USUAL_OPENAI_PORTS = (8000, 8080, 8765, 8081, 11434, 1234)


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
    # `run` and `serve` are services and log at INFO; the other commands print their answer
    # and only warnings, unless LOG_LEVEL asks for more.
    level = settings.log_level if args.command in ("run", "serve") or settings.log_level_set \
        else "WARNING"
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_file is not None:
        try:
            handlers.append(_rotating_file(settings.log_file))
        except OSError as exc:
            _error(ConfigError(f"Cannot write the log file {settings.log_file}: {exc.strerror}.",
                               hint="Check LOG_FILE and the folder's permissions."))
            return EXIT_CONFIG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers)
    log_redaction.install(secrets(settings))
    log_redaction.quiet_libraries(logging.getLogger().level, wire=settings.wire_logs)
    command: Callable[[Settings, argparse.Namespace], int] = args.handler
    try:
        return command(settings, args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`rtxrelay ask … | head`): end quietly, and let nothing try
        # to flush into the closed pipe on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ConfigError as exc:
        _error(exc)
        return EXIT_CONFIG
    except RelayError as exc:
        _error(exc)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtxrelay",
        description="Reach Chat with RTX or a local model server from Discord, Telegram and "
        "the terminal.",
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show rtxrelay's version and exit")
    env_help = ("settings file (default: .env in the current folder); a relative RTXRELAY_DB "
                "is found beside it")
    parser.add_argument("--env-file", metavar="FILE", default=None, help=env_help)
    # Every subcommand takes --env-file too, before or after its name. SUPPRESS: when it is
    # not repeated after the name, the value given before it stands.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", metavar="FILE", default=argparse.SUPPRESS, help=env_help)
    sub = parser.add_subparsers(dest="command")

    def command(name: str, summary: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=summary, description=summary,
                              epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)

    ask = command("ask", "ask one question and stream the answer", _epilog(
        "RTX_URL (or RTX_LAUNCH), or OPENAI_BASE_URL", "the answer on stdout as it grows; its "
        "place in line and errors on stderr",
        "0 answered, 1 not answered (the backend down, stopped, …)"))
    ask.add_argument("question", nargs="+")
    ask.set_defaults(handler=_cmd_ask)
    chat = command("chat", "chat with history (reads stdin when it is not a terminal)", _epilog(
        "RTX_URL (or RTX_LAUNCH), or OPENAI_BASE_URL", "each answer on stdout; prompts and "
        "errors on stderr. Ctrl+C stops an answer; at the prompt, /quit, Ctrl+C or end of "
        "input leaves",
        "0 every answer came, 1 one did not, 130 left with Ctrl+C"))
    chat.add_argument("--new", action="store_true", help="start a fresh conversation")
    chat.set_defaults(handler=_cmd_chat)
    doctor = command("doctor", "check settings, the backend and the database", _epilog(
        "none (it checks them)", "one line per check: OK, FIX (with what to do) or --",
        "0 all good, 1 something to fix"))
    doctor.set_defaults(handler=_cmd_doctor)
    discover = command("discover", "find Chat with RTX and OpenAI-compatible servers (ChatRTX "
                       "0.5's model, Ollama, LM Studio, llama.cpp) running on this PC", _epilog(
        "none", "each Gradio app and model server found, the most likely Chat with RTX and why, "
        "and the RTX_URL or OPENAI_BASE_URL line to set", "0 found one, 1 none"))
    discover.add_argument("--ports", help="ports to probe, e.g. 7860,8000-8100")
    discover.set_defaults(handler=_cmd_discover)
    bridge = command("chatrtx-bridge", "write the bridge that serves ChatRTX 0.4/0.5's own "
                     "models (no NIM) as an OpenAI-compatible API", _epilog(
        "none", "the file written and the command that runs it with ChatRTX's Python",
        "0 written, 2 the file cannot be written"))
    bridge.add_argument("--write", metavar="PATH", required=True,
                        help="where to write rtxrelay_chatrtx_bridge.py (a file or a folder)")
    bridge.set_defaults(handler=_cmd_chatrtx_bridge)
    run = command("run", "start the configured Telegram and Discord bots", _epilog(
        "RTX_URL (or RTX_LAUNCH, or OPENAI_BASE_URL) and TELEGRAM_TOKEN and/or DISCORD_TOKEN",
        "its log on stderr (and LOG_FILE); Ctrl+C, SIGTERM or Ctrl+Break stop it cleanly",
        "0 stopped on request, 1 a bot could not run (the log says which setting to fix), "
        "2 settings to fix, 130 Ctrl+C"))
    run.set_defaults(handler=_cmd_run)
    serve = command("serve", "serve the backend as an OpenAI-compatible API (for Open WebUI, "
                    "SillyTavern, Continue, scripts)", _epilog(
        "RTX_URL (or RTX_LAUNCH), or OPENAI_BASE_URL; RTXRELAY_API_KEY to listen beyond "
        "this PC", "the address it serves at, then one log line per request on stderr; "
        "Ctrl+C, SIGTERM or Ctrl+Break stop it", "0 stopped on request, 2 settings to fix"))
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1, or "
                       "RTXRELAY_API_HOST); another than this PC's needs RTXRELAY_API_KEY")
    serve.add_argument("--port", type=int, help="port (default 8642, or RTXRELAY_API_PORT)")
    serve.set_defaults(handler=_cmd_serve)
    service = command("service", "start `rtxrelay run` with the computer (Windows: a Task "
                      "Scheduler task at logon; Linux: a systemd user unit; macOS: a launchd "
                      "agent), restarted if it fails", _epilog(
                          "a .env file with your settings (its path goes into the task)",
                          "what the system's tool says", "0 done, 2 it failed (why is shown)"))
    service.add_argument("action", choices=["install", "uninstall", "status"])
    service.set_defaults(handler=_cmd_service)
    return parser


def _epilog(needs: str, prints: str, exits: str) -> str:
    return f"needs:      {needs}\nprints:     {prints}\nexit codes: {exits}"


# -- ask / chat -----------------------------------------------------------------------------------


def _cmd_ask(settings: Settings, args: argparse.Namespace) -> int:
    from .wiring import open_relay

    question = " ".join(args.question)

    async def go() -> int:
        async with open_relay(settings) as relay:
            # A one-off question: its own conversation (persisted like any other).
            key = ConversationKey("cli", "ask", uuid.uuid4().hex[:8])
            answer = relay.service.ask(key, question, read_window=terminal.READ_WINDOW)
            return await terminal.print_answer(answer, sys.stdout, sys.stderr)

    return asyncio.run(go())


def _cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    from .wiring import open_relay

    # A byte that is not valid in the console's encoding becomes U+FFFD instead of a crash.
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="replace")

    async def go() -> int:
        async with open_relay(settings) as relay:
            key = ConversationKey("cli", "terminal", _local_user())
            return await terminal.chat(relay.service, key, new=args.new,
                                       interactive=sys.stdin.isatty(), out=sys.stdout,
                                       err=sys.stderr)

    return asyncio.run(go())


# -- doctor ---------------------------------------------------------------------------------------


def _cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    return asyncio.run(run_doctor(settings, sys.stdout))


# -- discover -------------------------------------------------------------------------------------


def _cmd_discover(settings: Settings, args: argparse.Namespace) -> int:
    from rtxrelay.backends.discover import discover, listening_loopback_ports
    from rtxrelay.backends.openai.discover import discover_openai

    ports = _parse_ports(args.ports) if args.ports else listening_loopback_ports()

    async def both() -> tuple[list[Found], list[FoundServer]]:
        # Model servers listen on sockets the OS lists; without that list, only their
        # usual ports are worth a try (a 48,000-port sweep is for Chat with RTX's random one).
        servers = ports if ports is not None else list(USUAL_OPENAI_PORTS)
        return await asyncio.gather(discover(ports), discover_openai(servers))

    found, servers = asyncio.run(both())
    for server in servers:
        print(f"OpenAI-compatible: {server.base_url}  ({server.summary})")
    chatrtx = [f for f in found if f.is_chatrtx]
    for item in found:
        label = "Chat with RTX" if item.is_chatrtx else "other Gradio app"
        print(
            f"{label}: {item.base_url}  (gradio {item.gradio_version}, {item.protocol}, "
            f"{item.detail})"
        )
    if servers:
        print(f"\nSet OPENAI_BASE_URL={servers[0].base_url}" + (
            " (and OPENAI_API_KEY)" if servers[0].needs_key else "")
            + ("" if not chatrtx else "  — or RTX_URL for Chat with RTX, below; not both"))
    if not chatrtx:
        if servers:
            return EXIT_OK
        print(
            "Nothing found. Is Chat with RTX or a model server running? (Chat with RTX prints "
            "'Open http…?cookie=… in browser' when ready; ChatRTX 0.5 serves its model on "
            "port 8000 only while the app runs; Ollama listens on 11434, LM Studio on 1234 "
            "once its server is started.)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    best = chatrtx[0]
    if len(chatrtx) > 1:
        print(f"\nMost likely Chat with RTX: {best.base_url} ({best.detail}).")
    print(f"\nSet RTX_URL={best.base_url}?cookie=<the cookie from the URL Chat with RTX printed>")
    if best.base_url.startswith("https"):
        print(
            "It serves https with its own certificate: also set RTX_INSECURE_LOCALHOST=1 "
            "(or RTX_CA_FILE)."
        )
    return EXIT_OK


def _cmd_chatrtx_bridge(settings: Settings, args: argparse.Namespace) -> int:
    from importlib import resources

    target = Path(args.write)
    if target.is_dir():
        target = target / BRIDGE_FILE
    source = resources.files("rtxrelay.backends.chatrtx").joinpath("bridge.py").read_bytes()
    try:
        target.write_bytes(source)
    except OSError as exc:
        raise ConfigError(f"Cannot write {target}: {exc.strerror}.",
                          hint="Pick a folder you can write to.") from None
    print(f"Wrote {target}.\n\nRun it with ChatRTX's own Python, with the ChatRTX app closed "
          "(both would load the model into the GPU):\n"
          f'  "%ProgramFiles%\\NVIDIA Corporation\\ChatRTX\\env_nvd_rag\\Scripts\\python.exe" '
          f'"{target}"\n\n'
          "then set OPENAI_BASE_URL=http://127.0.0.1:8765/v1 in rtxrelay's .env. "
          f"`python {target.name} --help` lists its options.")
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


def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from .serve import ApiSettings, serve
    from .stop_signals import stop_on_signals
    from .wiring import open_relay

    api = ApiSettings.from_env(settings.env, host=args.host, port=args.port)

    def ready(url: str) -> None:
        print(f"Serving the OpenAI-compatible API at {url} — point clients there"
              + (" with RTXRELAY_API_KEY as their API key." if api.api_key else "."),
              file=sys.stderr, flush=True)

    async def until_stopped() -> int:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            async with open_relay(settings) as relay:
                await serve(relay.service, api, stop, ready=ready)
        return EXIT_OK

    return asyncio.run(until_stopped())


def _cmd_service(settings: Settings, args: argparse.Namespace) -> int:
    from . import service

    action = service.Action(args.action)
    if action is service.Action.INSTALL and settings.env_file is None:
        raise ConfigError("rtxrelay service install needs a settings file.",
                          hint="Write your settings into .env (see .env.example) and run it "
                          "again, or name one with --env-file.")
    steps = service.plan(action, env_file=settings.env_file or Path(".env"))
    for output in service.apply(steps):
        if output:
            print(output)
    if steps.done:
        print(steps.done)
    return EXIT_OK


# -- helpers --------------------------------------------------------------------------------------


class _Version(argparse.Action):
    """--version, reading the installed metadata only when asked (importlib.metadata costs
    more start-up than the rest of a one-off `rtxrelay ask` outside aiohttp)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib import metadata

        print(f"rtxrelay {metadata.version('rtxrelay')}")
        parser.exit()


def _rotating_file(path: Path) -> logging.Handler:
    """LOG_FILE: 5 files of 5 MB at most, UTF-8 whatever the console's code page."""
    import logging.handlers

    path.parent.mkdir(parents=True, exist_ok=True)
    return logging.handlers.RotatingFileHandler(path, maxBytes=5 * 1024 * 1024, backupCount=4,
                                                encoding="utf-8")


def _never_fail_on_output() -> None:
    """Characters the console's code page lacks (a redirected Windows console is cp1252 or
    similar; Chinese answers, emoji, "→") print as "?" instead of ending the command."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="replace")


def _error(exc: RelayError) -> None:
    terminal.print_error(exc, sys.stderr)


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (service accounts, containers)
        return "local"


if __name__ == "__main__":
    sys.exit(main())
