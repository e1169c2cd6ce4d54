"""The upstream of ``bench_serve.py``: ``_openai_fake_server.py``'s fake (``FakeOpenAI``, llama.cpp
persona) with two additions the serve bench needs.

    python bench/_serve_fake_upstream.py [--persona llama.cpp]

The same protocol as ``_openai_fake_server.py`` (one JSON hello line, then one JSON command
per stdin line, one JSON answer per stdout line; it exits when stdin closes), except:

- each scripted answer takes its own pace: ``{"script": [{"tokens": N, "prompt_tokens": P,
  "ascii": false, "delay": 0.005}, …]}`` (``delay``: the sleep before each chunk, s; 0 or
  absent = as fast as it can), so one fake serves both the fast and the paced runs, and one
  ``rtxrelay serve`` in front of it lives through the whole bench;
- ``{"stats": true}`` also answers ``"requests": {"GET /v1/models": n, …}``: every request
  the fake has seen so far, by method and path (what ``serve`` asks upstream per answer),
  ``"hung_up"`` (answers abandoned by their client so far) and ``"max_active"`` (the most chat
  answers at once since the last ``script`` command).

The answers are ``answer_pieces(N)`` of ``_openai_fake_server.py``, so the bench checks the
text a client gets against the same script, byte for byte.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
for _path in (REPO_DIR, BENCH_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _openai_fake_server import MODEL, _cpu, answer_pieces, command_loop  # noqa: E402

from tests.fakes.openai_api import FakeOpenAI, Persona, Reply, Usage  # noqa: E402


def _reply(spec: dict[str, Any]) -> Reply:
    tokens = int(spec["tokens"])
    usage = Usage(prompt_tokens=int(spec.get("prompt_tokens", 1)), completion_tokens=tokens)
    pieces = answer_pieces(tokens, ascii_only=bool(spec.get("ascii")))
    return Reply(pieces, usage=usage, chunk_delay=float(spec.get("delay") or 0.0))


def _handle(fake: FakeOpenAI, command: dict[str, Any]) -> dict[str, Any]:
    if "script" in command:
        fake.clear_script()
        fake.max_active = fake.active  # "most at once" counts from here
        fake.script(*(_reply(spec) for spec in command["script"]))
        return {"pending": fake.pending_replies}
    if command.get("stats"):
        by_path = Counter(f"{r.method} {r.path}" for r in fake.requests)
        chats = fake.chat_requests
        return {"cpu": _cpu(), "chat_requests": len(chats), "requests": dict(by_path),
                "hung_up": len(fake.hangups), "max_active": fake.max_active,
                "pending": fake.pending_replies}
    return {"error": f"unknown command {command!r}"}


async def serve(persona: Persona) -> None:
    async with FakeOpenAI(persona=persona, models=(MODEL,)) as fake:
        await command_loop(fake, {"persona": persona.value}, lambda c: _handle(fake, c))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persona", default=Persona.LLAMA_CPP.value,
                        choices=[p.value for p in Persona])
    args = parser.parse_args()
    asyncio.run(serve(Persona(args.persona)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
