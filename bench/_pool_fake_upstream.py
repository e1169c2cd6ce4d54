"""An upstream of ``bench_pool.py``: ``_serve_fake_upstream.py``'s fake with one slot, like
a one-slot llama.cpp or Chat with RTX, and a timeline of its answers.

    python bench/_pool_fake_upstream.py [--parallel 1]

The protocol of ``_serve_fake_upstream.py`` (one JSON hello line, then one JSON command per
stdin line, one JSON answer per stdout line; it exits when stdin closes; its ``script``
command and the replies it scripts are that module's), except that:

- the fake has ``--parallel`` slots (``FakeOpenAI(parallel=1)``, which ``/props`` reports as
  ``total_slots``): a chat request that arrives while the slot is taken waits inside the
  server until it frees, as llama-server queues requests beyond its slots; side requests
  (``GET /v1/models``, ``/props``) are answered at once;
- ``{"stats": true}`` also answers ``"answers"``: ``[start, end]`` of each chat answer since
  the last ``script`` command, in ``time.monotonic()`` seconds (the same clock in every
  process of the machine), from the moment it took the slot to the moment it gave it back,
  and ``"max_waiting"``: the most chat requests waiting inside the server for its slot at once
  since the last ``script`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
for _path in (REPO_DIR, BENCH_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _openai_fake_server import MODEL, command_loop  # noqa: E402
from _serve_fake_upstream import _handle  # noqa: E402

from tests.fakes.openai_api import FakeOpenAI, Persona  # noqa: E402


class TimedFake(FakeOpenAI):
    """``FakeOpenAI`` that notes when each chat answer held a slot, and how many waited."""

    def __init__(self, *, parallel: int, **kwargs: Any) -> None:
        super().__init__(parallel=parallel, **kwargs)
        self.slots = parallel
        self.answers: list[tuple[float, float]] = []
        self.inside = 0  # chat requests holding a slot or waiting for one
        self.max_waiting = 0

    def reset(self) -> None:
        self.answers.clear()
        self.max_waiting = max(0, self.inside - self.slots)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        self.inside += 1
        self.max_waiting = max(self.max_waiting, self.inside - self.slots)
        try:
            async with super()._slot():
                started = time.monotonic()
                try:
                    yield
                finally:
                    self.answers.append((started, time.monotonic()))
        finally:
            self.inside -= 1


def _command(fake: TimedFake, command: dict[str, Any]) -> dict[str, Any]:
    answer = _handle(fake, command)
    if "script" in command:
        fake.reset()
    elif command.get("stats"):
        answer.update(answers=fake.answers, max_waiting=fake.max_waiting)
    return answer


async def serve(persona: Persona, parallel: int) -> None:
    fake = TimedFake(persona=persona, models=(MODEL,), parallel=parallel)
    async with fake:
        await command_loop(fake, {"persona": persona.value, "parallel": parallel},
                           lambda command: _command(fake, command))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persona", default=Persona.LLAMA_CPP.value,
                        choices=[p.value for p in Persona])
    parser.add_argument("--parallel", type=int, default=1,
                        help="chat answers at once (the rest wait inside the server)")
    args = parser.parse_args()
    asyncio.run(serve(Persona(args.persona), args.parallel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
