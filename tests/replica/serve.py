"""Run a Chat with RTX replica by hand (stdlib only).

    python tests/replica/serve.py [--variant 4.26] [--https] [--token-delay 0.03] [--chat]

Builds the variant's venv if needed, starts the replica and prints its launch URL plus an
``RTX_URL=...`` line to paste into a shell. With ``--chat`` it then runs ``rtxrelay chat``
from this same venv against it (stdin/stdout are yours) and stops the replica afterwards;
without it, it serves until Ctrl-C or until the replica exits (shutdown button, [die]).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

if __package__:
    from .envs import print_progress
    from .launcher import Replica
    from .variants import DEFAULT_VARIANT, VARIANTS
else:  # the usual way: run as a script, tests/replica is sys.path[0]
    from envs import print_progress
    from launcher import Replica
    from variants import DEFAULT_VARIANT, VARIANTS


def chat_command() -> list[str]:
    """``rtxrelay chat`` from the venv running us; the module form if no script is there."""
    scripts = Path(sys.executable).parent  # bin/ or Scripts\ of this venv
    name = "rtxrelay.exe" if os.name == "nt" else "rtxrelay"
    script = scripts / name
    if script.exists():
        return [str(script), "chat"]
    found = shutil.which("rtxrelay", path=str(scripts))
    if found:
        return [found, "chat"]
    return [sys.executable, "-m", "rtxrelay.app.cli", "chat"]


def chat_env(url: str, https: bool) -> dict[str, str]:
    env = dict(os.environ, RTX_URL=url)
    if https:
        # The replica's certificate is self-signed, like ChatRTX 0.3's own.
        env["RTX_INSECURE_LOCALHOST"] = "1"
    return env


async def run(args: argparse.Namespace) -> int:
    replica = Replica(
        args.variant,
        https=args.https,
        token_delay=args.token_delay,
        port=args.port,
        cookie=args.cookie,
        startup_timeout=args.startup_timeout,
        echo=not args.chat,  # in chat mode the terminal belongs to the chat
        build_progress=print_progress,  # a first run builds Gradio's venv: say what happens
    )
    print(f"Starting the Chat with RTX replica (gradio {replica.variant.gradio})...", flush=True)
    async with replica:
        print(f"\nLaunch URL: {replica.url}", flush=True)
        if replica.ca_file is not None:
            print(f"Certificate: {replica.ca_file}", flush=True)
        print(f"RTX_URL={replica.url}", flush=True)
        if not args.chat:
            print("Serving; Ctrl-C stops it.", flush=True)
            return await replica.wait(limit=None)
        assert replica.url is not None
        chat = await asyncio.create_subprocess_exec(
            *chat_command(), env=chat_env(replica.url, args.https)
        )
        try:
            # Interactive: as long as the person chats, so no time limit here.
            return await chat.wait()
        finally:
            if chat.returncode is None:
                chat.kill()
                await asyncio.wait_for(chat.wait(), 10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a Chat with RTX replica.")
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=list(VARIANTS))
    parser.add_argument("--https", action="store_true")
    parser.add_argument("--token-delay", type=float, default=0.03)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--cookie", default=None)
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--chat", action="store_true", help="run `rtxrelay chat` against it")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
