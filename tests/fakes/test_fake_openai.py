"""The fake OpenAI-compatible server, read by the official openai SDK over loopback.

These tests pin what the fake puts on the wire for each persona and that the real client reads
it the way it reads the real servers: chunks, errors mapped to the SDK's exception classes,
reasoning fields, side endpoints, hang-ups and slots. Every wait is bounded and event-driven;
nothing asserts on timings and nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.fakes.openai_api import (
    NIM_MODEL,
    FakeOpenAI,
    Persona,
    ReasoningStyle,
    Reply,
    Usage,
    think_tag_pieces,
)

ALL = list(Persona)
KEYED = [Persona.LLAMA_CPP, Persona.VLLM, Persona.LM_STUDIO, Persona.GENERIC]
KEYLESS = [Persona.OLLAMA, Persona.NIM]
Messages = list[ChatCompletionMessageParam]
HI: Messages = [{"role": "user", "content": "hi there"}]


@contextlib.asynccontextmanager
async def serve(
    persona: Persona, *, key: str = "sk-test-key", **options: Any
) -> AsyncIterator[tuple[FakeOpenAI, AsyncOpenAI]]:
    async with (
        FakeOpenAI(persona=persona, **options) as fake,
        AsyncOpenAI(base_url=fake.base_url, api_key=key, max_retries=0, timeout=10) as client,
    ):
        yield fake, client


def model_of(fake: FakeOpenAI) -> str:
    return fake.models[0]


async def collect(client: AsyncOpenAI, fake: FakeOpenAI, messages: Messages = HI,
                  **kwargs: Any) -> list[ChatCompletionChunk]:
    stream = await client.chat.completions.create(
        model=kwargs.pop("model", model_of(fake)), messages=messages,
        stream=True, **kwargs)
    async with stream:
        return [chunk async for chunk in stream]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def extra(chunk: ChatCompletionChunk, name: str) -> Any:
    return (chunk.choices[0].delta.model_extra or {}).get(name) if chunk.choices else None


async def raw_post(fake: FakeOpenAI, body: bytes | dict[str, Any],
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.base_url}/chat/completions", data=data,
                     headers={"Content-Type": "application/json", **(headers or {})}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def raw_get(fake: FakeOpenAI, path: str,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(fake.root_url + path, headers=headers or {}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def sse_payloads(raw: bytes) -> list[str]:
    return [line.removeprefix("data: ") for line in raw.decode().split("\n\n") if line]


# ------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("persona", ALL)
async def test_stream_parses_role_content_finish_and_usage(persona: Persona) -> None:
    async with serve(persona) as (fake, client):
        fake.script(Reply(["Hel", "lo", " world"]))
        chunks = await collect(client, fake, stream_options={"include_usage": True})
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert text_of(chunks) == "Hello world"
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == 2  # "hi there": 8 chars, 4 per token
    assert usage_chunk.usage.completion_tokens == 3  # "Hello world": 11 chars
    assert usage_chunk.usage.total_tokens == 5
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)


@pytest.mark.parametrize("persona", ALL)
async def test_usage_chunk_only_when_asked(persona: Persona) -> None:
    async with serve(persona) as (fake, client):
        chunks = await collect(client, fake)
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize(
    ("persona", "null_usage"),
    [(Persona.GENERIC, True), (Persona.NIM, True), (Persona.LLAMA_CPP, False),
     (Persona.OLLAMA, False), (Persona.VLLM, False), (Persona.LM_STUDIO, False)],
)
async def test_usage_key_on_ordinary_chunks_is_null_or_absent(persona: Persona,
                                                              null_usage: bool) -> None:
    async with FakeOpenAI(persona=persona) as fake:
        status, _, raw = await raw_post(fake, {
            "model": model_of(fake), "messages": HI, "stream": True,
            "stream_options": {"include_usage": True}})
    assert status == 200
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    ordinary = [e for e in events if e["choices"]]
    assert all(("usage" in e) is null_usage for e in ordinary)
    assert all(e.get("usage") is None for e in ordinary)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] > 0


async def test_vllm_stream_options_without_include_usage_means_usage() -> None:
    async with FakeOpenAI(persona=Persona.VLLM) as fake:
        _, _, raw = await raw_post(fake, {"model": "smol", "messages": HI, "stream": True,
                                          "stream_options": {}})
    assert json.loads(sse_payloads(raw)[-2])["choices"] == []  # StreamOptions default True


async def test_default_answer_echoes_the_last_user_message() -> None:
    async with serve(Persona.LLAMA_CPP) as (fake, client):
        chunks = await collect(client, fake, messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second one"}]}])
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert pieces == ["echo:", " second", " one"]


async def test_default_answer_stops_at_max_tokens_with_length() -> None:
    async with serve(Persona.VLLM) as (fake, client):
        chunks = await collect(client, fake, messages=[
            {"role": "user", "content": "a fairly long question to echo back"}], max_tokens=2)
    assert text_of(chunks) == "echo: a "
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_finish_reason_length_as_scripted() -> None:
    async with serve(Persona.OLLAMA) as (fake, client):
        fake.script(Reply("cut", finish_reason="length"))
        chunks = await collect(client, fake)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_llama_cpp_first_chunk_is_role_with_null_content_and_timings_last() -> None:
    async with FakeOpenAI(persona=Persona.LLAMA_CPP) as fake:
        _, headers, raw = await raw_post(fake, {"model": "x", "messages": HI, "stream": True})
    events = [json.loads(p) for p in sse_payloads(raw)[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert events[-1]["choices"][0]["delta"] == {} and "timings" in events[-1]
    assert all(e["system_fingerprint"].startswith("b") for e in events)
    assert headers["Server"] == "llama.cpp"


async def test_ollama_role_rides_on_first_piece_and_json_is_go_escaped() -> None:
    async with FakeOpenAI(persona=Persona.OLLAMA) as fake:
        fake.script(Reply(["a<b", " & c"], reasoning_style=ReasoningStyle.THINK_TAGS,
                          reasoning=["x"]))
        _, headers, raw = await raw_post(fake, {"model": "smol", "messages": HI, "stream": True})
    assert b"<" not in raw and b"\\u003cthi" in raw and b"\\u0026" in raw
    events = [json.loads(p) for p in sse_payloads(raw)[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "<thi"}
    assert events[0]["id"].startswith("chatcmpl-")
    assert events[0]["system_fingerprint"] == "fp_ollama"
    assert "Server" not in headers


async def test_empty_reply_still_opens_with_the_role() -> None:
    for persona in ALL:
        async with serve(persona) as (fake, client):
            fake.script(Reply([]))
            chunks = await collect(client, fake)
        assert chunks[0].choices[0].delta.role == "assistant", persona
        assert text_of(chunks) == "" and chunks[-1].choices[0].finish_reason == "stop"


# ------------------------------------------------------------------------------- reasoning


@pytest.mark.parametrize(
    ("persona", "field"),
    [(Persona.LLAMA_CPP, "reasoning_content"), (Persona.NIM, "reasoning_content"),
     (Persona.LM_STUDIO, "reasoning_content"), (Persona.GENERIC, "reasoning_content"),
     (Persona.OLLAMA, "reasoning"), (Persona.VLLM, "reasoning")],
)
async def test_reasoning_arrives_on_the_sdk_delta(persona: Persona, field: str) -> None:
    async with serve(persona) as (fake, client):
        fake.script(Reply(["42"], reasoning=["Let me ", "think."]))
        chunks = await collect(client, fake)
    thoughts = "".join(extra(c, field) or "" for c in chunks)
    assert thoughts == "Let me think."
    assert text_of(chunks) == "42"


@pytest.mark.parametrize("style", [ReasoningStyle.REASONING_CONTENT, ReasoningStyle.REASONING])
async def test_reasoning_style_is_scriptable(style: ReasoningStyle) -> None:
    async with serve(Persona.LLAMA_CPP) as (fake, client):
        fake.script(Reply("ok", reasoning="because", reasoning_style=style))
        chunks = await collect(client, fake)
        fake.script(Reply("ok", reasoning="because", reasoning_style=style))
        completion = await client.chat.completions.create(model="m", messages=HI)
    assert "".join(extra(c, style.value) or "" for c in chunks) == "because"
    assert (completion.choices[0].message.model_extra or {})[style.value] == "because"


async def test_think_tags_are_split_across_chunks_in_awkward_places() -> None:
    async with serve(Persona.LLAMA_CPP) as (fake, client):
        fake.script(Reply(["The", " answer"], reasoning=["step one", ", step two"],
                          reasoning_style=ReasoningStyle.THINK_TAGS))
        chunks = await collect(client, fake)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert pieces == ["<thi", "nk>step one", ", step two</th", "ink>\n\nThe", " answer"]
    assert text_of(chunks) == "<think>step one, step two</think>\n\nThe answer"
    assert think_tag_pieces(["r"], ["c"], open_tag=False) == ["r</th", "ink>\n\nc"]


async def test_non_streamed_think_tags_are_inside_content() -> None:
    async with serve(Persona.OLLAMA) as (fake, client):
        fake.script(Reply("Yes.", reasoning="hm", reasoning_style=ReasoningStyle.THINK_TAGS))
        completion = await client.chat.completions.create(model="smol", messages=HI)
    assert completion.choices[0].message.content == "<think>hm</think>\n\nYes."


# -------------------------------------------------------------------------- non-streamed


@pytest.mark.parametrize("persona", ALL)
async def test_non_streamed_completion_parses(persona: Persona) -> None:
    async with serve(persona) as (fake, client):
        fake.script(Reply(["Hel", "lo"], usage=Usage(prompt_tokens=7, completion_tokens=2)))
        completion = await client.chat.completions.create(model=model_of(fake), messages=HI)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (7, 2, 9)


# ------------------------------------------------------------------------------ HTTP errors


@pytest.mark.parametrize("persona", KEYED)
async def test_wrong_key_is_authentication_error(persona: Persona) -> None:
    async with serve(persona, key="wrong", api_key="right") as (fake, client):
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model=model_of(fake), messages=HI)
        fake.script(Reply("fine"))
        async with AsyncOpenAI(base_url=fake.base_url, api_key="right", max_retries=0) as good:
            completion = await good.chat.completions.create(model=model_of(fake), messages=HI)
    assert caught.value.status_code == 401
    assert completion.choices[0].message.content == "fine"
    assert fake.chat_requests[0].headers["Authorization"] == "Bearer wrong"
    assert fake.chat_requests[0].reply is None  # never reached generation


@pytest.mark.parametrize(
    ("persona", "body"),
    [(Persona.LLAMA_CPP,
      {"error": {"message": "Invalid API Key", "type": "authentication_error", "code": 401}}),
     (Persona.VLLM, {"error": "Unauthorized"})],
)
async def test_missing_key_bodies(persona: Persona, body: dict[str, Any]) -> None:
    async with FakeOpenAI(persona=persona, api_key="k") as fake:
        status, _, raw = await raw_post(fake, {"model": "smol", "messages": HI})
    assert status == 401 and json.loads(raw) == body


async def test_llama_cpp_key_checks_skip_public_paths_and_accept_x_api_key() -> None:
    async with FakeOpenAI(persona=Persona.LLAMA_CPP, api_key="k") as fake:
        assert (await raw_get(fake, "/health"))[0] == 200
        assert (await raw_get(fake, "/v1/models"))[0] == 200
        assert (await raw_get(fake, "/props"))[0] == 401
        assert (await raw_get(fake, "/props", {"X-Api-Key": "k"}))[0] == 200


async def test_vllm_guards_every_v1_path_but_not_health() -> None:
    async with FakeOpenAI(persona=Persona.VLLM, api_key="k") as fake:
        assert (await raw_get(fake, "/v1/models"))[0] == 401
        assert (await raw_get(fake, "/health"))[0] == 200


@pytest.mark.parametrize("persona", KEYLESS)
async def test_keyless_products_ignore_the_key(persona: Persona) -> None:
    async with serve(persona, key="anything", api_key="configured") as (fake, client):
        completion = await client.chat.completions.create(model=model_of(fake), messages=HI)
    assert completion.choices[0].message.content == "echo: hi there"


@pytest.mark.parametrize(
    ("persona", "message"),
    [(Persona.VLLM, "The model `nope` does not exist."),
     (Persona.NIM, "The model `nope` does not exist."),
     (Persona.OLLAMA, "model 'nope' not found"),
     (Persona.GENERIC, "The model `nope` does not exist or you do not have access to it."),
     (Persona.LM_STUDIO, 'Model "nope" not found. Please specify a valid model.')],
)
async def test_unknown_model_is_not_found(persona: Persona, message: str) -> None:
    models = None if persona is not Persona.LM_STUDIO else ("a", "b")
    async with serve(persona, models=models) as (_fake, client):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="nope", messages=HI)
    assert caught.value.status_code == 404
    assert message in str(caught.value)


async def test_nim_errors_are_flat_and_vllm_errors_nested() -> None:
    async with FakeOpenAI(persona=Persona.NIM) as fake:
        _, _, raw = await raw_post(fake, {"model": "x", "messages": HI})
    assert json.loads(raw) == {"object": "error", "message": "The model `x` does not exist.",
                               "type": "NotFoundError", "param": None, "code": 404}
    async with FakeOpenAI(persona=Persona.VLLM) as fake:
        _, _, raw = await raw_post(fake, {"model": "x", "messages": HI})
    assert json.loads(raw)["error"]["type"] == "NotFoundError"


@pytest.mark.parametrize("persona", [Persona.LLAMA_CPP, Persona.LM_STUDIO])
async def test_single_model_servers_ignore_the_model_field(persona: Persona) -> None:
    async with serve(persona) as (_fake, client):
        completion = await client.chat.completions.create(model="gpt-4o", messages=HI)
    assert completion.choices[0].message.content == "echo: hi there"


async def test_ollama_accepts_the_name_with_or_without_its_tag() -> None:
    async with serve(Persona.OLLAMA, models=("smol",)) as (_fake, client):
        for name in ("smol", "smol:latest"):
            completion = await client.chat.completions.create(model=name, messages=HI)
            assert completion.model == name


LONG: Messages = [{"role": "user", "content": "x" * 60}]


@pytest.mark.parametrize(
    ("persona", "needle"),
    [(Persona.LLAMA_CPP,
      "request (15 tokens) exceeds the available context size (10 tokens), try increasing it"),
     (Persona.VLLM, "This model's maximum context length is 10 tokens. However, your request "
                    "has 15 input tokens."),
     (Persona.NIM, "However, you requested 15 tokens in the messages, Please reduce"),
     (Persona.GENERIC, "However, your messages resulted in 15 tokens."),
     (Persona.LM_STUDIO, "(n_keep: 15>= n_ctx: 10)")],
)
async def test_context_overflow_is_bad_request(persona: Persona, needle: str) -> None:
    async with serve(persona, context_chars=40) as (fake, client):
        fake.script(Reply("kept for later"))
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=model_of(fake), messages=LONG)
        assert fake.pending_replies == 1  # the scripted reply waits for a request that fits
    if persona is Persona.LM_STUDIO:
        # {"error": "<string>"}: the SDK's message keeps only "Error code: 400"; body is the text
        assert str(caught.value) == "Error code: 400"
        assert isinstance(caught.value.body, str) and needle in caught.value.body
    else:
        assert needle in str(caught.value)


async def test_llama_cpp_context_error_carries_the_numbers() -> None:
    async with serve(Persona.LLAMA_CPP, context_chars=40) as (_fake, client):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="m", messages=LONG)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "exceed_context_size_error"
    assert (body["n_prompt_tokens"], body["n_ctx"], body["code"]) == (15, 10, 400)


async def test_vllm_counts_max_tokens_against_the_context() -> None:
    async with serve(Persona.VLLM, context_chars=40) as (_fake, client):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="smol", messages=HI, max_tokens=9)
    assert "'max_tokens' or 'max_completion_tokens' is too large: 9." in str(caught.value)


async def test_ollama_silently_drops_old_messages_to_fit() -> None:
    history: Messages = [{"role": "system", "content": "sys"},
               {"role": "user", "content": "a" * 40}, {"role": "assistant", "content": "b" * 40},
               {"role": "user", "content": "last one"}]
    async with serve(Persona.OLLAMA, context_chars=40) as (fake, client):
        completion = await client.chat.completions.create(model="smol", messages=history)
    assert completion.choices[0].message.content == "echo: last one"
    assert fake.chat_requests[0].kept_messages == [history[0], history[3]]
    assert completion.usage is not None and completion.usage.prompt_tokens == 3


async def test_rate_limit_with_retry_after_read_off_the_exception() -> None:
    async with serve(Persona.GENERIC) as (fake, client):
        fake.script(Reply(status=429, error="Rate limit reached", headers={"Retry-After": "7"}))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="smol", messages=HI)
    assert caught.value.response.headers["retry-after"] == "7"
    assert "Rate limit reached" in str(caught.value)
    assert len(fake.chat_requests) == 1  # max_retries=0: no retry


async def test_scripted_server_error_and_raw_error_body() -> None:
    async with serve(Persona.VLLM) as (fake, client):
        fake.script(Reply(status=500), Reply(status=503, error={"detail": "custom"}))
        with pytest.raises(openai.InternalServerError) as first:
            await client.chat.completions.create(model="smol", messages=HI)
        with pytest.raises(openai.InternalServerError) as second:
            await client.chat.completions.create(model="smol", messages=HI)
    assert first.value.status_code == 500 and second.value.status_code == 503
    assert second.value.body == {"detail": "custom"}


async def test_llama_cpp_loading_answers_503_everywhere_until_loaded() -> None:
    async with serve(Persona.LLAMA_CPP, loading=True) as (fake, client):
        status, _, raw = await raw_get(fake, "/health")
        assert status == 503
        assert json.loads(raw) == {"error": {"code": 503, "message": "Loading model",
                                             "type": "unavailable_error"}}
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="m", messages=HI)
        assert caught.value.status_code == 503 and "Loading model" in str(caught.value)
        fake.loading = False
        assert (await raw_get(fake, "/health"))[2] == b'{"status":"ok"}'
        completion = await client.chat.completions.create(model="m", messages=HI)
    assert completion.choices[0].message.content == "echo: hi there"


async def test_scripted_503_on_llama_cpp_defaults_to_loading_model() -> None:
    async with serve(Persona.LLAMA_CPP) as (fake, client):
        fake.script(Reply(status=503))
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="m", messages=HI)
    assert caught.value.body == {"code": 503, "message": "Loading model",
                                 "type": "unavailable_error"}


@pytest.mark.parametrize(
    ("persona", "status", "needle"),
    [(Persona.LLAMA_CPP, 500, "[json.exception.parse_error.101] parse error at line 1"),
     (Persona.OLLAMA, 400, "invalid character 'n' looking for beginning of value"),
     (Persona.VLLM, 400, "json_invalid"),
     (Persona.NIM, 400, "json_invalid"),
     (Persona.GENERIC, 400, "We could not parse the JSON body of your request."),
     (Persona.LM_STUDIO, 400, "Unexpected token")],
)
async def test_malformed_json(persona: Persona, status: int, needle: str) -> None:
    async with FakeOpenAI(persona=persona) as fake:
        got, _, raw = await raw_post(fake, b'{"model": not json')
    assert got == status and needle in raw.decode()
    assert fake.chat_requests[0].body is None
    assert fake.chat_requests[0].raw_body == b'{"model": not json'


async def test_ollama_empty_messages_wording() -> None:
    async with FakeOpenAI(persona=Persona.OLLAMA) as fake:
        status, _, raw = await raw_post(fake, {"model": "smol", "messages": []})
    assert status == 400
    assert json.loads(raw)["error"]["message"] == "[] is too short - 'messages'"


# ------------------------------------------------------------------------ mid-stream errors


@pytest.mark.parametrize("persona", [Persona.LLAMA_CPP, Persona.VLLM, Persona.NIM,
                                     Persona.GENERIC, Persona.LM_STUDIO])
async def test_mid_stream_error_raises_api_error(persona: Persona) -> None:
    async with serve(persona) as (fake, client):
        fake.script(Reply(["one", " two", " three"], error_after=2, error="the GPU fell over"))
        stream = await client.chat.completions.create(model=model_of(fake), messages=HI,
                                                      stream=True)
        seen: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            async with stream:
                async for chunk in stream:
                    seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "one two"
    assert not isinstance(caught.value, openai.APIStatusError)
    if persona is not Persona.LM_STUDIO:  # its error is a bare string (GUESS)
        assert caught.value.message == "the GPU fell over"


@pytest.mark.parametrize(("persona", "done"), [(Persona.LLAMA_CPP, False), (Persona.VLLM, True),
                                               (Persona.NIM, True)])
async def test_mid_stream_error_wire_shape(persona: Persona, done: bool) -> None:
    async with FakeOpenAI(persona=persona) as fake:
        fake.script(Reply(["a", "b"], error_after=1, error="boom"))
        _, _, raw = await raw_post(fake, {"model": model_of(fake), "messages": HI, "stream": True})
    payloads = sse_payloads(raw)
    assert (payloads[-1] == "[DONE]") is done
    error = json.loads(payloads[-2] if done else payloads[-1])["error"]
    expected = {Persona.LLAMA_CPP: {"code": 500, "message": "boom", "type": "server_error"},
                Persona.VLLM: {"message": "boom", "type": "InternalServerError", "param": None,
                               "code": 500},
                Persona.NIM: {"object": "error", "message": "boom", "type": "BadRequestError",
                              "param": None, "code": 400}}[persona]
    assert error == expected


async def test_ollama_mid_stream_error_is_an_empty_chunk_and_a_cut_stream() -> None:
    async with serve(Persona.OLLAMA) as (fake, client):
        fake.script(Reply(["one", " two"], error_after=1, error="runner died"))
        chunks = await collect(client, fake)
    assert text_of(chunks) == "one"
    assert chunks[-1].choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None for c in chunks)


@pytest.mark.parametrize("persona", [Persona.LLAMA_CPP, Persona.OLLAMA])
async def test_an_error_before_the_first_piece_is_an_http_error(persona: Persona) -> None:
    async with serve(persona) as (fake, client):
        fake.script(Reply(["never"], error_after=0, error="failed to decode"))
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="smol", messages=HI, stream=True)
    assert "failed to decode" in str(caught.value)


async def test_non_streamed_error_after_is_an_http_error() -> None:
    async with serve(Persona.VLLM) as (fake, client):
        fake.script(Reply(["a", "b"], error_after=1, error="boom"))
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="smol", messages=HI)


# ------------------------------------------------------------------------------ models list


@pytest.mark.parametrize("persona", ALL)
async def test_models_list_works_for_every_persona(persona: Persona) -> None:
    async with serve(persona) as (_fake, client):
        page = await client.models.list()
    ids = [m.id for m in page.data]
    expected = {Persona.NIM: [NIM_MODEL], Persona.OLLAMA: ["smol:latest"]}.get(persona, ["smol"])
    assert ids == expected
    assert all(m.object == "model" for m in page.data)
    owned = {Persona.LLAMA_CPP: "llamacpp", Persona.OLLAMA: "library", Persona.VLLM: "vllm",
             Persona.NIM: "system", Persona.LM_STUDIO: "organization_owner",
             Persona.GENERIC: "system"}
    assert page.data[0].owned_by == owned[persona]


async def test_models_list_extras() -> None:
    async with serve(Persona.LLAMA_CPP) as (_fake, client):
        page = await client.models.list()
    assert (page.data[0].model_extra or {})["meta"]["n_ctx_train"] > 0
    async with serve(Persona.VLLM, context_chars=4000) as (_fake, client):
        page = await client.models.list()
    assert (page.data[0].model_extra or {})["max_model_len"] == 1000
    async with FakeOpenAI(persona=Persona.OLLAMA, models=()) as fake:
        _, _, raw = await raw_get(fake, "/v1/models")
    assert json.loads(raw) == {"object": "list", "data": None}


# -------------------------------------------------------------------------- side endpoints


async def test_side_endpoints_and_server_headers() -> None:
    async with FakeOpenAI(persona=Persona.LLAMA_CPP, parallel=2, context_chars=2048) as fake:
        status, headers, raw = await raw_get(fake, "/props", {"Origin": "http://evil.test"})
        props = json.loads(raw)
        assert (status, props["total_slots"]) == (200, 2)
        assert props["default_generation_settings"]["n_ctx"] == 512
        assert headers["Access-Control-Allow-Origin"] == "http://evil.test"
        status, _, raw = await raw_get(fake, "/nope")
        assert (status, json.loads(raw)["error"]["message"]) == (404, "File Not Found")
    async with FakeOpenAI(persona=Persona.OLLAMA) as fake:
        status, headers, raw = await raw_get(fake, "/")
        assert (status, raw) == (200, b"Ollama is running") and "Server" not in headers
        assert "version" in json.loads((await raw_get(fake, "/api/version"))[2])
        tags = json.loads((await raw_get(fake, "/api/tags"))[2])
        assert tags["models"][0]["name"] == "smol:latest"
    async with FakeOpenAI(persona=Persona.LM_STUDIO, context_chars=4096) as fake:
        models = json.loads((await raw_get(fake, "/api/v0/models"))[2])["data"]
        assert models[0]["state"] == "loaded" and models[0]["max_context_length"] == 1024
        status, _, raw = await raw_get(fake, "/nope")
        assert status == 200  # sic
        assert json.loads(raw) == {"error": "Unexpected endpoint or method. (GET /nope)"}
    async with FakeOpenAI(persona=Persona.VLLM) as fake:
        status, headers, raw = await raw_get(fake, "/health")
        assert (status, raw, headers["Server"]) == (200, b"", "uvicorn")
        assert "x-request-id" in {name.lower() for name in headers}
        assert "version" in json.loads((await raw_get(fake, "/version"))[2])
        assert (await raw_get(fake, "/nope"))[2] == b'{"detail":"Not Found"}'
    async with FakeOpenAI(persona=Persona.NIM, loading=True) as fake:
        assert (await raw_get(fake, "/v1/health/live"))[0] == 200
        assert (await raw_get(fake, "/v1/health/ready"))[0] == 503
        fake.loading = False
        status, _, raw = await raw_get(fake, "/v1/health/ready")
        assert (status, json.loads(raw)) == (200, {"object": "health-response",
                                                   "message": "Service is ready."})
        assert (await raw_get(fake, "/v1/metadata"))[0] == 200
        assert json.loads((await raw_get(fake, "/v1/version"))[2])["api"] == "1.0.0"


async def test_requests_are_recorded() -> None:
    async with serve(Persona.VLLM) as (fake, client):
        await client.chat.completions.create(model="smol", messages=HI, temperature=0.5)
        await client.models.list()
    chat = fake.chat_requests[0]
    assert (chat.method, chat.path, chat.model, chat.stream) == (
        "POST", "/v1/chat/completions", "smol", False)
    assert chat.json["temperature"] == 0.5 and chat.messages == HI
    assert chat.headers["Authorization"] == "Bearer sk-test-key"
    assert chat.status == 200 and chat.completed and not chat.hung_up
    assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/models"]


# ---------------------------------------------------------------------- hang-ups and stalls


@pytest.mark.parametrize("persona", ALL)
async def test_hang_up_during_a_stall_is_detected(persona: Persona) -> None:
    async with serve(persona) as (fake, client):
        fake.script(Reply(["a", "b", "c"], stall_after=2))
        stream = await client.chat.completions.create(model=model_of(fake), messages=HI,
                                                      stream=True)
        async for chunk in stream:
            if chunk.choices[0].delta.content == "a":
                break
        await fake.wait_stalled(1, timeout=5)
        assert fake.streams_in_progress == 1
        await stream.close()
        gone = await fake.wait_hangups(1, timeout=5)
        await fake.wait_until(lambda: fake.streams_in_progress == 0, timeout=5)
    assert gone[0] is fake.chat_requests[0]
    assert gone[0].hung_up and gone[0].stalled and not gone[0].completed
    assert gone[0].pieces_sent == 2


async def test_hang_up_while_writing_is_detected() -> None:
    async with serve(Persona.LLAMA_CPP) as (fake, client):
        fake.script(Reply([f"w{i} " for i in range(2000)], chunk_delay=0.005))
        stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
        async for _chunk in stream:
            break
        await stream.close()
        gone = await fake.wait_hangups(1, timeout=5)
    assert 0 < gone[0].pieces_sent < 2000 and not gone[0].stalled


async def test_a_stall_is_released_when_the_fake_closes() -> None:
    async with serve(Persona.VLLM) as (fake, client):
        fake.script(Reply(["a", "b"], stall_after=1))
        stream = await client.chat.completions.create(model="smol", messages=HI, stream=True)
        await fake.wait_stalled(1, timeout=5)
    with contextlib.suppress(openai.APIError):
        async with stream:
            async for _ in stream:
                pass
    assert fake.hangups == []  # the server closing is no hang-up


async def test_non_streamed_hang_up_is_detected() -> None:
    async with serve(Persona.OLLAMA) as (fake, client):
        fake.script(Reply("slow", stall_after=0))
        task = asyncio.create_task(client.chat.completions.create(model="smol", messages=HI))
        await fake.wait_stalled(1, timeout=5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gone = await fake.wait_hangups(1, timeout=5)
    assert gone[0].status is None


# ----------------------------------------------------------------------------- concurrency


async def test_parallel_limit_queues_requests_server_side() -> None:
    async with serve(Persona.LLAMA_CPP, parallel=1) as (fake, client):
        fake.script(Reply(["first", " done"], stall_after=1), Reply("second"))
        first = await client.chat.completions.create(model="m", messages=HI, stream=True)
        await fake.wait_stalled(1, timeout=5)
        second = asyncio.create_task(client.chat.completions.create(model="m", messages=HI))
        await fake.wait_until(lambda: fake.queued == 1, timeout=5)
        assert not second.done() and fake.active == 1
        await first.close()  # the first client gives up; its slot frees
        completion = await asyncio.wait_for(second, timeout=5)
    assert completion.choices[0].message.content == "second"
    assert fake.max_active == 1 and fake.queued == 0


async def test_without_a_limit_requests_run_side_by_side() -> None:
    async with serve(Persona.VLLM) as (fake, client):
        fake.script(Reply(["x", "y"], stall_after=1), Reply(["x", "y"], stall_after=1))
        streams = [await client.chat.completions.create(model="smol", messages=HI, stream=True)
                   for _ in range(2)]
        await fake.wait_stalled(2, timeout=5)
        assert fake.max_active == 2 and fake.streams_in_progress == 2
        for stream in streams:
            await stream.close()
        await fake.wait_hangups(2, timeout=5)
