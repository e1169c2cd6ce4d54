"""Bench worker: the floor, a minimal raw aiohttp reader of the same stream (project venv).

    python bench/_openai_raw_worker.py JOB_JSON OUT_JSON

POST the request, then per read: split off complete events, ``json.loads`` each ``data:``,
add ``choices[0].delta.content`` to the text so far, stop at ``[DONE]``. No error handling,
no timeouts, no reasoning, no Markdown: the least any client must do. Phases and figures: see
``_openai_worker.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from _openai_worker import Answer, Ask, Job, main


@asynccontextmanager
async def connect(job: Job) -> AsyncIterator[Ask]:
    url = f"{job.base_url.rstrip('/')}/chat/completions"
    headers = {"Authorization": f"Bearer {job.api_key}"} if job.api_key else {}
    async with aiohttp.ClientSession() as http:

        async def ask(question: str, warm: bool, answer: Answer) -> None:
            body = {"model": job.model, "messages": [{"role": "user", "content": question}],
                    "stream": True, "stream_options": {"include_usage": True},
                    **job.body(warm=warm)}
            text = ""
            reads = 0
            async with http.post(url, json=body, headers=headers) as response:
                response.raise_for_status()
                buffer = b""
                separator = b""
                async for data in response.content.iter_any():
                    reads += 1
                    buffer += data
                    if not separator:  # sse-starlette (llama-cpp-python) ends lines with \r\n
                        separator = b"\r\n\r\n" if b"\r\n" in buffer else b"\n\n"
                    *events, buffer = buffer.split(separator)
                    for event in events:
                        if not event.startswith(b"data:"):
                            continue  # a comment (": ping") or another field
                        payload = event[5:].strip()
                        if payload == b"[DONE]":
                            break
                        chunk = json.loads(payload)
                        choices = chunk.get("choices")
                        if choices:
                            content = choices[0]["delta"].get("content")
                            if content:
                                text += content
                                answer.saw_text()
                        usage = chunk.get("usage")
                        if usage:
                            answer.prompt_tokens = usage["prompt_tokens"]
                            answer.completion_tokens = usage["completion_tokens"]
            answer.text = text
            answer.extra["socket_reads"] = reads

        yield ask


if __name__ == "__main__":
    sys.exit(main("raw aiohttp", connect, {"aiohttp": aiohttp.__version__}))
