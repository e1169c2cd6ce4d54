"""The OpenAI-compatible backend against the protocol-faithful fake (tests/fakes/openai_api.py):
what a real tiny model cannot show on demand — errors, reasoning, usage, the products' quirks.
The real server (llama.cpp) runs in tests/backends/test_openai_llama.py."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from rtxrelay.backends.openai.backend import OpenAiBackend
from rtxrelay.backends.openai.products import ProductKind
from rtxrelay.backends.openai.settings import OpenAiSettings, OpenAiTimeouts
from rtxrelay.core.backend import (
    BackendUpdate,
    Done,
    Exchange,
    Failed,
    Started,
    TextSoFar,
    Throttled,
    Usage,
)
from rtxrelay.core.conversation import ConversationLimits, ConversationService, Finished
from rtxrelay.core.errors import BackendErrorKind
from rtxrelay.core.store import ConversationKey, TurnStatus
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.fakes.openai_api import FakeOpenAI, Persona, ReasoningStyle, Reply
from tests.fakes.openai_api import Usage as FakeUsage


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trust_env=False) as session:
        yield session


def backend_for(http: aiohttp.ClientSession, fake: FakeOpenAI, **settings: object) -> OpenAiBackend:
    options: dict[str, object] = {"base_url": fake.base_url, **settings}
    return OpenAiBackend(http, OpenAiSettings(**options))  # type: ignore[arg-type]  # test-only kwargs


async def answer(backend: OpenAiBackend, question: str = "hello",
                 history: Sequence[Exchange] = ()) -> list[BackendUpdate]:
    return [u async for u in backend.stream_answer(question, history, session="s")]


def final(updates: list[BackendUpdate]) -> str | None:
    """The answer of a ``Done`` (its text and its history form are the same here)."""
    done = updates[-1]
    if not isinstance(done, Done):
        return None
    assert done.raw == done.text
    return done.text


def texts(updates: list[BackendUpdate]) -> list[str]:
    return [u.text for u in updates if isinstance(u, TextSoFar)]


async def test_an_answer_streams_and_ends_with_its_token_counts(
        http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(persona=Persona.LLAMA_CPP, models=("smol",)) as fake:
        fake.script(Reply(["The ", "answer ", "is ", "42."], usage=FakeUsage(12, 4)))
        updates = await answer(backend_for(http, fake))
        request = fake.chat_requests[-1]
    assert isinstance(updates[0], Started)
    shown = texts(updates)
    assert shown[-1] == "The answer is 42."
    assert "".join(u.delta for u in updates if isinstance(u, TextSoFar)) == shown[-1]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(shown))
    assert updates[-1] == Done("The answer is 42.", "The answer is 42.", usage=Usage(12, 4))
    body = request.json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "smol"  # the first the server lists, as OPENAI_MODEL is unset


async def test_text_grows_read_by_read_and_an_error_later_in_a_read_keeps_it(
        http: aiohttp.ClientSession) -> None:
    """One update per read (not per token); an error event after text in the same read
    still passes that text on before the failure."""
    async with FakeOpenAI(persona=Persona.VLLM, models=("m",)) as fake:
        fake.script(Reply(["a", "b", "c", "d"], error_after=3))  # one read: 3 pieces + error
        updates = await answer(backend_for(http, fake))
    shown = texts(updates)
    failed = updates[-1]
    assert shown[-1] == "abc" and isinstance(failed, Failed) and failed.partial_text == "abc"


async def test_history_and_system_prompt_go_as_messages(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(persona=Persona.OLLAMA, models=("llama3.2:latest", "qwen3:8b")) as fake:
        backend = backend_for(http, fake, model="qwen3:8b", system_prompt="Be brief.")
        await answer(backend, "and 3?", [Exchange("what is 1+1?", "2"), Exchange("2+2?", "4")])
        sent = fake.chat_requests[-1].json
    assert sent["model"] == "qwen3:8b"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "what is 1+1?"}, {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3?"},
    ]


@pytest.mark.parametrize(("persona", "style"), [
    (Persona.VLLM, ReasoningStyle.REASONING_CONTENT),
    (Persona.OLLAMA, ReasoningStyle.REASONING),
    (Persona.LLAMA_CPP, ReasoningStyle.THINK_TAGS),
])
async def test_reasoning_is_never_shown_nor_sent_back(http: aiohttp.ClientSession,
                                                      persona: Persona,
                                                      style: ReasoningStyle) -> None:
    thoughts = ["The user asks ", "about <b>tags</b>; ", "SECRET-THOUGHT."]
    async with FakeOpenAI(persona=persona, models=("r1",)) as fake:
        fake.script(Reply(["Short ", "answer."], reasoning=thoughts, reasoning_style=style))
        backend = backend_for(http, fake)
        updates = await answer(backend)
        done = updates[-1]
        assert isinstance(done, Done) and done.text == "Short answer." == done.raw
        assert not any("SECRET" in text for text in texts(updates))
        # The next question sends the answer back without its reasoning.
        await answer(backend, "more?", [Exchange("hello", done.raw)])
        assert "SECRET" not in str(fake.chat_requests[-1].json["messages"])


async def test_a_reasoning_block_opened_by_the_template_is_taken_back(
        http: aiohttp.ClientSession) -> None:
    """DeepSeek-R1 distills on llama.cpp: the template opens <think>, so the output only
    closes it. What streamed before the closing tag was reasoning: the text shrinks to the
    answer."""
    async with FakeOpenAI(persona=Persona.LLAMA_CPP, models=("r1",)) as fake:
        fake.script(Reply(["Hmm, let me ", "see.</think>\n\n", "Yes."]))
        updates = await answer(backend_for(http, fake))
    assert texts(updates)[-1] == "Yes." and final(updates) == "Yes."


async def test_a_wrong_key_says_which_setting(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(persona=Persona.LLAMA_CPP, models=("smol",), api_key="right") as fake:
        [failed] = await answer(backend_for(http, fake, api_key="wrong"))
    assert isinstance(failed, Failed) and failed.error.kind is BackendErrorKind.AUTH
    assert "OPENAI_API_KEY" in failed.error.hint and "401" in failed.error.message
    assert "wrong" not in str(failed.error)  # the key itself is never repeated
    assert "OPENAI_API_KEY" in failed.error.user_message


async def test_an_unknown_model_lists_the_servers_models(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(persona=Persona.VLLM, models=("Qwen/Qwen3-8B", "meta/llama")) as fake:
        [failed] = await answer(backend_for(http, fake, model="gpt-4o"))
    assert isinstance(failed, Failed) and failed.error.kind is BackendErrorKind.NO_MODEL
    assert "Qwen/Qwen3-8B, meta/llama" in failed.error.message
    assert "OPENAI_MODEL" in failed.error.hint


async def test_a_server_with_no_model_loaded_says_how_to_load_one(
        http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(persona=Persona.OLLAMA, models=()) as fake:
        [failed] = await answer(backend_for(http, fake))
    assert isinstance(failed, Failed) and failed.error.kind is BackendErrorKind.NO_MODEL
    assert "ollama pull" in failed.error.hint


@pytest.mark.parametrize("persona", [Persona.LLAMA_CPP, Persona.VLLM, Persona.GENERIC])
async def test_too_long_for_the_context_asks_again_without_history(
        http: aiohttp.ClientSession, persona: Persona) -> None:
    async with FakeOpenAI(persona=persona, models=("m",), context_chars=400) as fake:
        history = [Exchange("tell me a story " * 5, "once upon a time " * 10)] * 2
        updates = await answer(backend_for(http, fake, model="m"), "short?", history)
        first, second = fake.chat_requests[-2:]
        done = updates[-1]
        assert isinstance(done, Done) and done.history_dropped and done.text
        assert first.status == 400 and len(first.json["messages"]) == 5
        assert second.json["messages"] == [{"role": "user", "content": "short?"}]
        # Even alone the question does not fit: say so, do not loop.
        [*_, failed] = await answer(backend_for(http, fake, model="m"), "long " * 200, history)
    assert isinstance(failed, Failed) and failed.error.kind is BackendErrorKind.CONTEXT_TOO_LONG
    assert "Shorten it" in failed.error.user_message


async def test_a_busy_server_is_asked_again_after_its_retry_after(
        http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(persona=Persona.GENERIC, models=("m",)) as fake:
        fake.script(Reply(status=429, headers={"Retry-After": "0.2"}),
                    Reply(status=503, headers={"Retry-After": "0.1"}), Reply(["ok"]))
        updates = await answer(backend_for(http, fake))
    assert [u for u in updates if isinstance(u, Throttled)] == [Throttled(0.2), Throttled(0.1)]
    assert final(updates) == "ok"


async def test_a_server_busy_for_longer_than_the_wait_tells_the_asker(
        http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(persona=Persona.GENERIC, models=("m",)) as fake:
        fake.script(Reply(status=429, headers={"Retry-After": "30"}))
        [failed] = await answer(backend_for(http, fake, busy_wait=10.0))
    assert isinstance(failed, Failed) and failed.error.kind is BackendErrorKind.BUSY
    assert "too busy" in failed.error.user_message


@pytest.mark.parametrize("persona", [Persona.VLLM, Persona.LLAMA_CPP, Persona.OLLAMA])
async def test_an_error_mid_stream_fails_the_answer_and_keeps_the_text(
        http: aiohttp.ClientSession, persona: Persona) -> None:
    async with FakeOpenAI(persona=persona, models=("m",)) as fake:
        fake.script(Reply(["Half ", "an ", "answer"], error_after=2))
        updates = await answer(backend_for(http, fake))
    failed = updates[-1]
    assert isinstance(failed, Failed) and failed.partial_text == "Half an "
    # vLLM and llama.cpp send an error event; Ollama just ends the stream.
    assert failed.error.kind in (BackendErrorKind.FAILED, BackendErrorKind.STOPPED)


async def test_closing_the_answer_hangs_up_so_the_server_stops(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(persona=Persona.LLAMA_CPP, models=("m",)) as fake:
        fake.script(Reply(["one ", "two ", "three"], stall_after=2))
        updates = backend_for(http, fake).stream_answer("q", (), session="s")
        async for update in updates:
            if isinstance(update, TextSoFar) and update.text == "one two ":
                break
        await updates.aclose()
        [gone] = await fake.wait_hangups(1, timeout=10)
    assert gone.hung_up and not gone.completed


async def test_a_stalled_stream_times_out(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(persona=Persona.LLAMA_CPP, models=("m",)) as fake:
        fake.script(Reply(["one ", "two"], stall_after=1))
        backend = backend_for(http, fake, timeouts=OpenAiTimeouts(idle=0.3))
        updates = await answer(backend)
    failed = updates[-1]
    assert isinstance(failed, Failed) and failed.error.kind is BackendErrorKind.TIMEOUT
    assert failed.partial_text == "one " and "OPENAI_IDLE_TIMEOUT" in failed.error.hint


async def test_a_server_that_refuses_stream_options_is_asked_without(
        http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAI(persona=Persona.GENERIC, models=("m",)) as fake:
        fake.script(Reply(status=400, error="Unrecognized request argument supplied: "
                          "stream_options"), Reply(["fine"]), Reply(["again"]))
        backend = backend_for(http, fake)
        with caplog.at_level(logging.INFO):
            assert final(await answer(backend)) == "fine"
        assert final(await answer(backend)) == "again"
        bodies = [r.json for r in fake.chat_requests]
    assert "stream_options" in bodies[0] and "stream_options" not in bodies[1]
    assert "stream_options" not in bodies[2]  # remembered
    assert any("token counts are not kept" in r.getMessage() for r in caplog.records)


def closed_port(port: int | None = None) -> int | None:
    """A loopback port nothing listens on (``port`` if it is free, else a fresh one)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port or 0))
        except OSError:
            return None
        return int(sock.getsockname()[1])


async def test_a_server_that_is_down_names_the_url_and_the_setting(
        http: aiohttp.ClientSession) -> None:
    port = closed_port()
    backend = OpenAiBackend(http, OpenAiSettings(f"http://127.0.0.1:{port}/v1"))
    [failed] = await answer(backend)
    assert isinstance(failed, Failed) and failed.error.kind is BackendErrorKind.UNREACHABLE
    assert f"127.0.0.1:{port}/v1" in failed.error.message
    assert "OPENAI_BASE_URL" in failed.error.hint


async def test_chatrtx_nim_down_says_chatrtx_must_have_it_loaded(
        http: aiohttp.ClientSession) -> None:
    if closed_port(8000) is None:
        pytest.skip("something listens on port 8000 here")
    backend = OpenAiBackend(http, OpenAiSettings("http://localhost:8000/v1"))
    [failed] = await answer(backend)
    assert isinstance(failed, Failed) and failed.error.kind is BackendErrorKind.UNREACHABLE
    assert "ChatRTX" in failed.error.hint and "rtxrelay never starts or stops it" in \
        failed.error.hint
    assert failed.error.user_message.startswith("ChatRTX is not running")


@pytest.mark.parametrize(("persona", "kind", "service"), [
    (Persona.OLLAMA, ProductKind.OLLAMA, "Ollama"),
    (Persona.LLAMA_CPP, ProductKind.LLAMA_CPP, "the model server"),
    (Persona.LM_STUDIO, ProductKind.LM_STUDIO, "LM Studio"),
    (Persona.NIM, ProductKind.CHATRTX_NIM, "ChatRTX"),
    (Persona.VLLM, ProductKind.VLLM, "the model server"),
    (Persona.GENERIC, ProductKind.GENERIC, "the model server"),
])
async def test_doctor_names_the_product(http: aiohttp.ClientSession, persona: Persona,
                                        kind: ProductKind, service: str) -> None:
    models = {Persona.NIM: ("meta/llama-3.1-8b-instruct",),
              Persona.OLLAMA: ("m:latest",)}.get(persona, ("m",))
    async with FakeOpenAI(persona=persona, models=models, parallel=3) as fake:
        backend = backend_for(http, fake)
        info = await backend.probe()
        assert info.product.startswith(kind.value) and info.model == models[0]
        assert any("one-token completion works" in check for check in info.checks)
        assert fake.chat_requests[-1].json["max_tokens"] == 1
        if persona is Persona.LLAMA_CPP:
            assert info.parallel == 3  # its slots, from /props
        fake.script(Reply(status=500, error="boom"))
        [failed] = await answer(backend)
    assert isinstance(failed, Failed)
    assert failed.error.user_message.lower().startswith(service.lower())


async def test_questions_through_the_service_keep_token_counts(
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with FakeOpenAI(persona=Persona.LLAMA_CPP, models=("m",)) as fake, \
            SqliteStore(tmp_path / "t.db") as store:
        fake.script(Reply(["Four."], usage=FakeUsage(30, 2)),
                    Reply(status=429, headers={"Retry-After": "0.1"}), Reply(["Five."]))
        service = ConversationService(backend_for(http, fake), store,
                                      ConversationLimits(max_concurrent_jobs=2))
        key = ConversationKey("test", "chat", "user")
        first = [u async for u in service.ask(key, "2+2?")]
        second = [u async for u in service.ask(key, "2+3?")]
        assert first[-1] == Finished("Four.", TurnStatus.COMPLETE, usage=Usage(30, 2))
        assert any(isinstance(u, Throttled) for u in second)  # the bots show it as a status
        turns = await store.recent_turns((await store.current(str(key))).id, 5)
        sent = fake.chat_requests[-1].json["messages"]
    assert turns[0].usage == Usage(30, 2)
    assert sent[:2] == [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "Four."}]


async def test_reads_on_the_consumers_clock_gather_tokens_and_lose_none(
        http: aiohttp.ClientSession) -> None:
    """With a read window, what the server streams within it comes as one update (see
    tests/backends/test_paced_reads.py for the socket itself)."""
    window = 0.2
    pieces = [f"word{i} " for i in range(300)]
    loop = asyncio.get_running_loop()
    async with FakeOpenAI(persona=Persona.LLAMA_CPP, models=("m",)) as fake:
        fake.script(Reply(pieces, chunk_delay=0.003))
        started = loop.time()
        updates = [u async for u in backend_for(http, fake).stream_answer(
            "q", (), session="s", read_window=window)]
        elapsed = loop.time() - started
    assert final(updates) == "".join(pieces)
    shown = texts(updates)
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(shown))
    assert "".join(u.delta for u in updates if isinstance(u, TextSoFar)) == shown[-1]
    assert len(shown) <= 2 + 2 * elapsed / window < len(pieces) / 4
