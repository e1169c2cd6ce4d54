"""The real llama.cpp server, as the official ``openai`` SDK sees it: the ground the
OpenAI-compatible backend's tests stand on.

Every wait is bounded (the client's timeout, ``asyncio.timeout``); no time is asserted.
Timings are printed on the terminal for the record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.llama.server import LlamaServer

WAIT = 60.0  # generous for a 135M model on 2 busy cores; answers take well under a second
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}]


@pytest_asyncio.fixture
async def client(llama: LlamaServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=llama.base_url, api_key="not-used", max_retries=0,
                           timeout=WAIT) as sdk:
        yield sdk


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """Show a line on the terminal even though pytest captures output."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        print(line, flush=True)
        return
    with capman.global_and_fixture_disabled():
        print(f"\n[llama] {line}", flush=True)


async def _complete(client: AsyncOpenAI, model: str,
                    messages: list[ChatCompletionMessageParam],
                    max_tokens: int) -> str:
    answer = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0)
    return answer.choices[0].message.content or ""


async def test_lists_the_model(llama: LlamaServer, client: AsyncOpenAI) -> None:
    page = await client.models.list()
    assert [m.id for m in page.data] == [llama.model]


async def test_streamed_answer(llama: LlamaServer, client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=llama.model, messages=MESSAGES, max_tokens=16, temperature=0,
        stream=True)
    chunks = []
    async with asyncio.timeout(WAIT):
        async for chunk in stream:
            chunks.append(chunk)
    assert chunks, llama.tail()
    assert {c.id for c in chunks} == {chunks[0].id}, "one id for every chunk of an answer"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip(), llama.tail()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] in ("length", "stop") and not any(finish[:-1])
    # Greedy decoding: the same text as the same request answered whole.
    assert await _complete(client, llama.model, MESSAGES, 16) == text


async def test_answer_whole_with_usage(llama: LlamaServer, client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model=llama.model, messages=MESSAGES, max_tokens=16, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.model == llama.model
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert (choice.message.content or "").strip()
    assert choice.finish_reason in ("length", "stop")
    usage = answer.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 16


async def test_greedy_answers_repeat(llama: LlamaServer, client: AsyncOpenAI) -> None:
    """What later tests may rely on: the same prompt gets the same answer, also after other
    prompts have been through the server (its prompt cache) and after a restart."""
    other: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Write a haiku about the sea."}]
    first = await _complete(client, llama.model, MESSAGES, 24)
    await _complete(client, llama.model, other, 24)
    assert await _complete(client, llama.model, MESSAGES, 24) == first
    assert await _complete(client, llama.model, MESSAGES, 24) == first


async def test_closing_a_stream_midway_leaves_the_server_serving(
    llama: LlamaServer, client: AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model=llama.model, temperature=0, max_tokens=400, stream=True,
        messages=[{"role": "user", "content": "Tell me a long story about a dragon."}])
    seen = 0
    async with asyncio.timeout(WAIT):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen += 1
            if seen == 3:
                break
        await stream.close()  # the client hangs up in the middle of the answer
    assert seen == 3
    # The next request is answered in full: the server stopped the abandoned answer.
    answer = await client.chat.completions.create(
        model=llama.model, messages=MESSAGES, max_tokens=16, temperature=0)
    assert answer.choices[0].finish_reason in ("length", "stop")
    assert (answer.choices[0].message.content or "").strip()


async def test_kill_and_restart_on_the_same_port(llama: LlamaServer, client: AsyncOpenAI) -> None:
    base_url = llama.base_url
    before = await _complete(client, llama.model, MESSAGES, 8)
    try:
        await llama.kill()
        assert not llama.running
        with pytest.raises(openai.APIConnectionError):
            await _complete(client, llama.model, MESSAGES, 8)
        await llama.restart()
        assert llama.base_url == base_url
        assert await _complete(client, llama.model, MESSAGES, 8) == before
    finally:
        if not llama.running:  # leave the shared server up for the tests after this one
            await llama.restart()


async def test_timings_for_the_record(
    llama: LlamaServer, client: AsyncOpenAI, request: pytest.FixtureRequest
) -> None:
    """A 32-token streamed answer: time to first token and in all. Printed, never asserted."""
    started = time.perf_counter()
    first: float | None = None
    pieces = 0
    stream = await client.chat.completions.create(
        model=llama.model, temperature=0, max_tokens=32, stream=True,
        messages=[{"role": "user", "content": "Tell me a story about a dragon."}])
    async with asyncio.timeout(WAIT):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
                if first is None:
                    first = time.perf_counter() - started
    total = time.perf_counter() - started
    assert first is not None and pieces > 0
    _say(request, f"smollm2 via llama-cpp-python {pieces} tokens streamed in {total:.3f} s "
                  f"({pieces / total:.0f} tokens/s), first token after {first:.3f} s; "
                  f"server start {llama.started_in or 0:.2f} s")
