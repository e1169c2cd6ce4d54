"""Bench worker: answers from the official ``openai`` SDK (runs in the project venv).

    python bench/_openai_sdk_worker.py JOB_JSON OUT_JSON

As its README streams: ``AsyncOpenAI(base_url=…, api_key=…, max_retries=0)``, then
``await client.chat.completions.create(model=…, messages=…, stream=True,
stream_options={"include_usage": True})`` and ``async for chunk in stream``, adding each
``chunk.choices[0].delta.content`` to the text so far, as a bot would. Phases and figures: see
``_openai_worker.py``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import openai
from _openai_worker import Answer, Ask, Job, main
from openai import AsyncOpenAI


@asynccontextmanager
async def connect(job: Job) -> AsyncIterator[Ask]:
    async with AsyncOpenAI(base_url=job.base_url, api_key=job.api_key or "none",
                           max_retries=0) as client:

        async def ask(question: str, warm: bool, answer: Answer) -> None:
            stream = await client.chat.completions.create(
                model=job.model, messages=[{"role": "user", "content": question}],
                stream=True, stream_options={"include_usage": True},
                **job.body(warm=warm))
            text = ""
            async for chunk in stream:
                if chunk.choices:
                    content = chunk.choices[0].delta.content
                    if content:
                        text += content
                        answer.saw_text()
                if chunk.usage is not None:
                    answer.prompt_tokens = chunk.usage.prompt_tokens
                    answer.completion_tokens = chunk.usage.completion_tokens
            answer.text = text

        yield ask


if __name__ == "__main__":
    sys.exit(main("openai SDK", connect,
                  {"openai": openai.__version__, "httpx": httpx.__version__}))
