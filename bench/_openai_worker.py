"""What the three workers of ``bench_openai.py`` share (stdlib only): the job, the phases, the
measurements.

    python bench/_openai_<client>_worker.py JOB_JSON OUT_JSON

A worker imports its client library at module level, then calls ``main(name, connect)``.
Phases, each measured by the process itself (``_measure.py``: getrusage user+sys, ru_maxrss):

- start-up: interpreter start + imports (up to ``main``);
- setup: the client object (``ClientSession`` / ``AsyncOpenAI``), made inside the event loop;
- first request: a short answer on a new connection (cold code paths: the first request of a
  bot that just started);
- answer: the measured answer, on the warm connection: from the call to the final text.

``BENCH_PROFILE=path`` (an environment variable): run the answer phase under cProfile and
write its stats there (the figures of such a run are not comparable).
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from _measure import Result, checkpoint, startup_wall

PROFILE_ENV = "BENCH_PROFILE"


@dataclass(frozen=True)
class Job:
    base_url: str  # …/v1
    model: str
    api_key: str
    question: str
    warm_question: str
    # Extra request fields for a real server (max_tokens, temperature): the same for every
    # client. The warm-up request gets ``warm_max_tokens`` instead of max_tokens, if set.
    extra_body: dict[str, Any] = field(default_factory=dict)
    warm_max_tokens: int | None = None

    def body(self, *, warm: bool) -> dict[str, Any]:
        """The request fields besides model, messages and stream."""
        extra = dict(self.extra_body)
        if warm and self.warm_max_tokens is not None:
            extra["max_tokens"] = self.warm_max_tokens
        return extra

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))


@dataclass
class Answer:
    """What the consumer saw of one streamed answer."""

    text: str = ""
    updates: int = 0  # text updates the consumer handled (non-empty content)
    first_text: float | None = None  # perf_counter() at the first text
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def saw_text(self) -> None:
        self.updates += 1
        if self.first_text is None:
            self.first_text = time.perf_counter()


# ``connect(job)`` gives an async context manager holding the client; what it yields asks one
# question and fills the Answer: ``await ask(question, warm, answer)``.
Ask = Callable[[str, bool, Answer], Awaitable[None]]
Connect = Callable[[Job], AbstractAsyncContextManager[Ask]]


async def _run(job: Job, connect: Connect, result: Result) -> None:
    profile_path = os.environ.get(PROFILE_ENV)
    start = checkpoint()
    async with connect(job) as ask:
        made = checkpoint()
        warm = Answer()
        await ask(job.warm_question, True, warm)
        warmed = checkpoint()
        answer = Answer()
        profile = cProfile.Profile() if profile_path else None
        asked = checkpoint()
        if profile is not None:
            profile.enable()
        await ask(job.question, False, answer)
        if profile is not None:
            profile.disable()
        done = checkpoint()
    closed = checkpoint()
    if profile is not None and profile_path:
        profile.dump_stats(profile_path)

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
        "setup_wall": made.wall - start.wall,
        "warm_cpu": warmed.cpu - made.cpu,
        "warm_wall": warmed.wall - made.wall,
        "warm_ttft": (warm.first_text - made.wall) if warm.first_text is not None else None,
        "warm_text": warm.text,
        "warm_usage": [warm.prompt_tokens, warm.completion_tokens],
        "usage": [answer.prompt_tokens, answer.completion_tokens],
        "close_cpu": closed.cpu - done.cpu,
        "total_cpu": closed.cpu,  # the whole process: start-up, setup, both requests, close
        "rss_before_answer_mib": asked.rss_mib,
        **answer.extra,
    })
    result.ok = True


def main(client: str, connect: Connect, versions: dict[str, str]) -> int:
    ready = checkpoint()  # every import of the worker is done: interpreter start-up + imports
    job_json, out = sys.argv[1:3]
    result = Result(
        client=client,
        startup_wall=startup_wall(),
        startup_cpu=ready.cpu,
        rss_after_import_mib=ready.rss_mib,
        extra={**versions, "python": sys.version.split()[0]},
    )
    try:
        asyncio.run(_run(Job.from_json(job_json), connect, result))
    except BaseException as exc:  # report anything, even a KeyboardInterrupt
        result.fail(exc)
    result.write(out)
    return 0 if result.ok else 1

