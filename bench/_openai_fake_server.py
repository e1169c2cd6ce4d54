"""The OpenAI-compatible server of ``bench_openai.py``: ``tests/fakes/openai_api.FakeOpenAI`` in
a process of its own, answering as fast as it can, each answer scripted by the bench.

    python bench/_openai_fake_server.py [--persona llama.cpp] [--token-delay 0]

Prints one JSON line, ``{"base_url": …, "model": …, "persona": …, "pid": …}``, then takes one
JSON command per line on stdin and answers each with one JSON line on stdout:

- ``{"script": [{"tokens": N, "prompt_tokens": P, "ascii": false}, …]}``: the next chat
  requests, in order, stream ``answer_pieces(N)`` (one piece per SSE chunk) with usage
  ``(P, N)``; anything still queued from before is dropped first. Answers ``{"pending": k}``.
- ``{"stats": true}``: ``{"cpu": s, "chat_requests": n, "events_sent": [...], "pending": k}``:
  this process's CPU so far (to show what the server, not the client, spent), and the SSE
  events written for each chat request so far.

It exits when stdin closes. ``answer_pieces`` is imported by the bench too, so both sides agree
on the text byte for byte.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parent.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from tests.fakes.openai_api import FakeOpenAI, Persona, Reply, Usage  # noqa: E402

MODEL = "bench-model"

# Pieces of roughly a BPE token each (~4 chars): words with their leading space, punctuation,
# paragraph breaks, Markdown, non-ASCII text (2-, 3- and 4-byte UTF-8), characters JSON must
# escape (quotes, backslashes, newlines) and a "<" now and then (rtxrelay holds one back at
# the end of a chunk in case a </think> tag starts there).
_WORDS = (
    " the", " model", " token", " tensor", " core", "s", " GPU", " stream", " answer", " is",
    " a", " of", " to", " and", " in", " cache", " batch", " kernel", " latency", " memory",
    " context", " window", " layer", " weight", " prompt", " with", " it", " that", " for",
    " on", " inference", " shader", " frame", " pixel", " driver", " vector", " index",
)
_OTHER = (
    ",", ".", ".", ":", ";", " (", ")", "\n\n", "\n- ", " **", "**", " `", "`", " \"", "\"",
    " café", " naïve", " —", " 4×", " 😀", " 推理", " ü", "\\", " <", " a<b", " 50%", "'s",
)
_ASCII_OTHER = tuple(piece for piece in _OTHER if piece.isascii())


def answer_pieces(tokens: int, *, ascii_only: bool = False) -> list[str]:
    """The scripted answer of ``tokens`` pieces. Deterministic, and the same pieces for every
    length up to ``tokens`` (a prefix). It starts with a word and no whitespace: rtxrelay drops
    whitespace before the first text (as a chat shows it), the other clients keep it.

    With an emoji in it, from there on CPython keeps the text so far as 4 bytes a character
    (``ascii_only``: 1), which makes every copy of it 4 times larger."""
    rng = random.Random(20261201)
    other = _ASCII_OTHER if ascii_only else _OTHER
    pieces = ["The"]
    while len(pieces) < tokens:
        pieces.append(rng.choice(other) if rng.random() < 0.2 else rng.choice(_WORDS))
    return pieces[:tokens]


def answer_text(tokens: int, *, ascii_only: bool = False) -> str:
    return "".join(answer_pieces(tokens, ascii_only=ascii_only))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reply(spec: dict[str, Any], token_delay: float) -> Reply:
    tokens = int(spec["tokens"])
    usage = Usage(prompt_tokens=int(spec.get("prompt_tokens", 1)), completion_tokens=tokens)
    pieces = answer_pieces(tokens, ascii_only=bool(spec.get("ascii")))
    return Reply(pieces, usage=usage, chunk_delay=token_delay)


def _handle(fake: FakeOpenAI, command: dict[str, Any], token_delay: float) -> dict[str, Any]:
    if "script" in command:
        fake.clear_script()
        fake.script(*(_reply(spec, token_delay) for spec in command["script"]))
        return {"pending": fake.pending_replies}
    if command.get("stats"):
        chats = fake.chat_requests
        return {"cpu": _cpu(), "chat_requests": len(chats),
                "events_sent": [r.events_sent for r in chats],
                "pending": fake.pending_replies}
    return {"error": f"unknown command {command!r}"}


async def command_loop(fake: FakeOpenAI, hello: dict[str, Any],
                       handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The workers' protocol (this one's and ``_serve_fake_upstream``/``_pool_fake_upstream``'s):
    ``hello`` as the first stdout line, then one JSON answer per stdin command, until stdin
    closes. A malformed command gets ``{"error": …}``, not an exit."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print(json.dumps({"base_url": fake.base_url, "model": MODEL, "pid": os.getpid(), **hello}),
          flush=True)
    while line := await stdin.readline():
        try:
            answer = handle(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


async def serve(persona: Persona, token_delay: float) -> None:
    async with FakeOpenAI(persona=persona, models=(MODEL,)) as fake:
        await command_loop(fake, {"persona": persona.value},
                           lambda command: _handle(fake, command, token_delay))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persona", default=Persona.LLAMA_CPP.value,
                        choices=[p.value for p in Persona])
    parser.add_argument("--token-delay", type=float, default=0.0,
                        help="sleep before each piece (s); 0 = as fast as it can")
    args = parser.parse_args()
    asyncio.run(serve(Persona(args.persona), args.token_delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
