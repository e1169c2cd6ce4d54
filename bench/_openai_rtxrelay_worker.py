"""Bench worker: answers from rtxrelay's ``OpenAiBackend`` (runs in the project venv).

    python bench/_openai_rtxrelay_worker.py JOB_JSON OUT_JSON

The bot's path: ``OpenAiBackend(http, OpenAiSettings(...)).stream_answer(question, [], ...)``
on a session made as ``app/wiring.backend_session`` makes it; the consumer takes each
``TextSoFar`` and the final ``Done``. Against a real server the bench asks for ``max_tokens``
and ``temperature`` through ``OpenAiSettings``. Phases and figures: see ``_openai_worker.py``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from _openai_worker import Answer, Ask, Job, main

from rtxrelay.backends.openai.backend import OpenAiBackend
from rtxrelay.backends.openai.settings import OpenAiSettings
from rtxrelay.core.backend import Done, Failed, TextSoFar


def _settings(job: Job, warm: bool) -> OpenAiSettings:
    """The backend's settings, with a real server's max_tokens and temperature in them
    (OPENAI_MAX_TOKENS, OPENAI_TEMPERATURE)."""
    extra = job.body(warm=warm)
    names = {f.name for f in dataclasses.fields(OpenAiSettings)}
    unknown = set(extra) - names
    assert not unknown, f"OpenAiSettings cannot carry {unknown}"
    return OpenAiSettings(base_url=job.base_url, api_key=job.api_key or None, model=job.model,
                          **extra)


@asynccontextmanager
async def connect(job: Job) -> AsyncIterator[Ask]:
    # As app/wiring.backend_session makes the backend's session; one backend per request kind
    # (the short first request may have its own max_tokens), both on this session, so the
    # answer reuses the first request's connection.
    async with aiohttp.ClientSession(trust_env=False,
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:
        backends: dict[bool, OpenAiBackend] = {}
        for warm in (True, False):
            backends[warm] = OpenAiBackend(http, _settings(job, warm))

        async def ask(question: str, warm: bool, answer: Answer) -> None:
            async for update in backends[warm].stream_answer(question, [], session="bench"):
                if isinstance(update, TextSoFar):
                    answer.saw_text()
                elif isinstance(update, Done):
                    answer.text = update.text
                    if update.usage is not None:
                        answer.prompt_tokens = update.usage.prompt_tokens
                        answer.completion_tokens = update.usage.completion_tokens
                elif isinstance(update, Failed):
                    raise RuntimeError(f"{update.error.kind}: {update.error}")

        yield ask


if __name__ == "__main__":
    sys.exit(main("rtxrelay", connect, {"aiohttp": aiohttp.__version__}))
