"""Bench worker of ``bench_serve.py``, part 1: one streamed answer read by the raw aiohttp
reader of ``_openai_raw_worker.py`` (or the SDK of ``_openai_sdk_worker.py``), with a
handshake around the measured answer so the parent can read the *server's* CPU for exactly it.

    python bench/_serve_stream_worker.py raw|sdk JOB_JSON OUT_JSON

The same client code and phases as ``_openai_worker.py`` (setup, a short first request on a
new connection, then the measured answer on the warm connection), plus, on stdout:

- ``{"phase": "ready"}`` once the first request is done; then it waits for a line on stdin
  (the parent reads ``serve``'s and the fake's CPU, then writes ``go``);
- ``{"phase": "done"}`` as soon as the answer's final text is in; then it waits for another
  line (the parent reads the CPU again) before it closes the connection and exits.

The waits are outside the measured answer phase. The result file is ``_measure.Result``'s.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp
from _measure import Result, checkpoint, startup_wall
from _openai_worker import Answer, Connect, Job


def _client(name: str) -> tuple[str, Connect, dict[str, str]]:
    if name == "sdk":
        import _openai_sdk_worker
        import httpx
        import openai

        return ("openai SDK", _openai_sdk_worker.connect,
                {"openai": openai.__version__, "httpx": httpx.__version__})
    import _openai_raw_worker

    return "raw aiohttp", _openai_raw_worker.connect, {"aiohttp": aiohttp.__version__}


def _tell(phase: str) -> None:
    """One line to the parent, then wait for its answer (blocking: nothing else runs)."""
    print(json.dumps({"phase": phase}), flush=True)
    if not sys.stdin.readline():
        raise RuntimeError("the parent went away")


async def _run(job: Job, connect: Connect, result: Result) -> None:
    start = checkpoint()
    async with connect(job) as ask:
        made = checkpoint()
        warm = Answer()
        await ask(job.warm_question, True, warm)
        warmed = checkpoint()
        _tell("ready")
        answer = Answer()
        asked = checkpoint()
        await ask(job.question, False, answer)
        done = checkpoint()
        _tell("done")
    result.connect_wall = warmed.wall - start.wall
    result.connect_cpu = warmed.cpu - start.cpu
    result.answer_wall = done.wall - asked.wall
    result.answer_cpu = done.cpu - asked.cpu
    if answer.first_text is not None:
        result.first_text_wall = answer.first_text - asked.wall
    result.updates = answer.updates
    result.final_text = answer.text
    result.extra.update({
        "setup_cpu": made.cpu - start.cpu,
        "warm_cpu": warmed.cpu - made.cpu,
        "warm_ttft": (warm.first_text - made.wall) if warm.first_text is not None else None,
        "warm_text": warm.text,
        "warm_usage": [warm.prompt_tokens, warm.completion_tokens],
        "usage": [answer.prompt_tokens, answer.completion_tokens],
        "rss_before_answer_mib": asked.rss_mib,
        **answer.extra,
    })
    result.ok = True


def main() -> int:
    ready = checkpoint()
    name, job_json, out = sys.argv[1:4]
    client, connect, versions = _client(name)
    result = Result(client=client, startup_wall=startup_wall(), startup_cpu=ready.cpu,
                    rss_after_import_mib=ready.rss_mib,
                    extra={**versions, "python": sys.version.split()[0]})
    try:
        asyncio.run(_run(Job.from_json(job_json), connect, result))
    except BaseException as exc:  # report anything, even a KeyboardInterrupt
        result.fail(exc)
    result.write(out)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
