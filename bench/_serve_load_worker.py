"""Bench worker of ``bench_serve.py``, part 2: N streamed answers at once from one process, each
read by the raw aiohttp reader of ``_openai_raw_worker.py`` on a connection of its own.

    python bench/_serve_load_worker.py JOB_JSON OUT_JSON

``JOB_JSON`` is ``_openai_worker.Job``'s fields plus ``"clients": N``. The clients share one
``aiohttp.ClientSession`` (its pool opens up to 100 connections: one per client here) and start
together (``asyncio.gather``). Handshake on stdout, as ``_serve_stream_worker.py``:
``{"phase": "ready"}`` once imports and the session are ready (then a line on stdin starts
the clients), ``{"phase": "done"}`` when the last one has its final text (then a line on stdin
lets it close and exit), so the parent reads ``serve``'s CPU and samples its memory over
exactly the answers.

The result file is ``_measure.Result``'s; ``extra["clients"]`` has one entry per client: its
text, time to first text and to the final text (from the common start), chunks with content,
the usage the server sent, and its error if it failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
from _measure import Result, checkpoint, startup_wall
from _openai_raw_worker import connect
from _openai_worker import Answer, Ask, Job


def _tell(phase: str) -> None:
    print(json.dumps({"phase": phase}), flush=True)
    if not sys.stdin.readline():
        raise RuntimeError("the parent went away")


async def _one(ask: Ask, question: str, started: float) -> dict[str, Any]:
    answer = Answer()
    error: str | None = None
    try:
        await ask(question, False, answer)
    except Exception as exc:  # one client's failure is a figure, not the end of the run
        error = f"{type(exc).__name__}: {exc}"
    return {
        "text": answer.text, "error": error, "updates": answer.updates,
        "first_text": None if answer.first_text is None else answer.first_text - started,
        "wall": time.perf_counter() - started,
        "usage": [answer.prompt_tokens, answer.completion_tokens],
    }


async def _run(job: Job, clients: int, result: Result) -> None:
    async with connect(job) as ask:
        _tell("ready")
        begin = checkpoint()
        found = await asyncio.gather(*(_one(ask, job.question, begin.wall)
                                       for _ in range(clients)))
        end = checkpoint()
        _tell("done")
    result.answer_wall = end.wall - begin.wall
    result.answer_cpu = end.cpu - begin.cpu
    result.extra["clients"] = found
    result.ok = True


def main() -> int:
    ready = checkpoint()
    job_json, out = sys.argv[1:3]
    fields = json.loads(job_json)
    clients = int(fields.pop("clients"))
    result = Result(client=f"{clients} raw aiohttp clients", startup_wall=startup_wall(),
                    startup_cpu=ready.cpu, rss_after_import_mib=ready.rss_mib,
                    extra={"aiohttp": aiohttp.__version__, "python": sys.version.split()[0]})
    try:
        asyncio.run(_run(Job(**fields), clients, result))
    except BaseException as exc:  # report anything, even a KeyboardInterrupt
        result.fail(exc)
    result.write(out)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
