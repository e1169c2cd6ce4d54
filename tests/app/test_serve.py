"""``rtxrelay serve`` driven by the official openai SDK (async and sync, streamed and not) and
by raw HTTP for the malformed cases, in front of the Chat with RTX replica, the real llama.cpp
server and the protocol-faithful fake OpenAI server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from rtxrelay.app.serve import ApiSettings, serve
from rtxrelay.backends.chatrtx.answer_html import convert_answer
from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url
from rtxrelay.backends.openai.backend import OpenAiBackend
from rtxrelay.backends.openai.settings import OpenAiSettings
from rtxrelay.core.backend import AnswerOptions, Backend, Done
from rtxrelay.core.conversation import ConversationLimits, ConversationService
from rtxrelay.core.errors import ConfigError
from rtxrelay.core.pool import BackendPool, Member
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.app.test_cli import run_cli
from tests.fakes.openai_api import FakeOpenAI, Persona, Reply
from tests.llama.server import LlamaServer
from tests.replica import fake_model
from tests.replica.launcher import Replica, free_port

WAIT = 30.0


@dataclass
class Api:
    url: str  # the base URL clients take: http://127.0.0.1:PORT/v1
    service: ConversationService

    def client(self, key: str = "none") -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=WAIT)

    async def wait_line(self, running: int, waiting: int) -> None:
        """Until the line is so (the pool tells every change of it)."""
        await asyncio.wait_for(self.service.pool.until(
            lambda: self.service.line == (running, waiting)), WAIT)


@contextlib.asynccontextmanager
async def serving(make_backend: Callable[[aiohttp.ClientSession], Backend | BackendPool],
                  tmp_path: Path,
                  *, jobs: int = 1, **settings: object) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(trust_env=False) as http, \
            SqliteStore(tmp_path / "api.db") as store:
        backend = make_backend(http)
        service = ConversationService(backend, store, ConversationLimits(max_concurrent_jobs=jobs))
        stop = asyncio.Event()
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(
            service, ApiSettings(port=0, **settings),  # type: ignore[arg-type]
            stop, ready=listening.set_result))
        try:
            async with asyncio.timeout(WAIT):
                url = await asyncio.shield(listening)
            yield Api(url, service)
        finally:
            stop.set()
            async with asyncio.timeout(WAIT):
                await task
            await service.close()


def chatrtx(replica: Replica) -> Callable[[aiohttp.ClientSession], Backend]:
    return lambda http: ChatRtxBackend(http, parse_launch_url(replica.url))


def expected(question: str, history: list[list[str | None]] | None = None) -> str:
    return convert_answer(fake_model.answer_text(question, history or [])).text


async def streamed(client: AsyncOpenAI, messages: list[dict[str, str]], **extra: object
                   ) -> tuple[str, list[object]]:
    stream = await client.chat.completions.create(
        model=extra.pop("model", "chatrtx"), messages=messages, stream=True,  # type: ignore[arg-type]
        **extra)  # type: ignore[call-overload]
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


# -- Chat with RTX behind the API -------------------------------------------------------------


async def test_chatrtx_as_an_openai_model(rtx_426: Replica, tmp_path: Path) -> None:
    async with serving(chatrtx(rtx_426), tmp_path) as api, api.client() as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["chatrtx"]
        question = "what is RTX? [refs]"
        text, chunks = await streamed(client, ask(question))
        assert text == expected(question)
        assert "C:\\" not in text and "<a " not in text  # file names, never local paths
        first, last = chunks[0], chunks[-1]
        assert first.choices[0].delta.role == "assistant"  # type: ignore[attr-defined]
        assert last.choices[0].finish_reason == "stop"  # type: ignore[attr-defined]
        assert len({c.id for c in chunks}) == 1  # type: ignore[attr-defined]
        whole = await client.chat.completions.create(model="chatrtx", messages=ask(question))
        assert whole.choices[0].message.content == expected(question)
        assert whole.usage is not None and whole.usage.completion_tokens > 0
    # The README's promise: API requests are not stored (the client keeps its conversation).
    with contextlib.closing(sqlite3.connect(tmp_path / "api.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM turns").fetchone() == (0,)


async def test_history_comes_from_messages(rtx_426: Replica, tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "ignored by Chat with RTX"},
                {"role": "user", "content": "my name is Ada"},
                {"role": "assistant", "content": "Hello Ada."},
                {"role": "user", "content": "who am I? [recall]"}]
    async with serving(chatrtx(rtx_426), tmp_path) as api, api.client() as client:
        text, _ = await streamed(client, messages)
    assert text == expected("who am I? [recall]", [["my name is Ada", "Hello Ada."]])
    assert "- my name is Ada" in text


async def test_stop_and_max_tokens_are_emulated_for_chatrtx(rtx_426: Replica,
                                                            tmp_path: Path) -> None:
    question = "tell me about RTX [len=800]"
    full = expected(question)
    async with serving(chatrtx(rtx_426), tmp_path) as api, api.client() as client:
        stop_at = full[40:52]
        text, chunks = await streamed(client, ask(question), stop=[stop_at])
        assert text == full[:full.index(stop_at)]
        assert chunks[-1].choices[0].finish_reason == "stop"  # type: ignore[attr-defined]
        short = await client.chat.completions.create(model="chatrtx", messages=ask(question),
                                                     max_tokens=10)
        assert short.choices[0].finish_reason == "length"
        content = short.choices[0].message.content or ""
        assert content and full.startswith(content) and len(content) <= 40
        # Parameters Chat with RTX cannot honour are accepted (and ignored).
        text, _ = await streamed(client, ask(question), temperature=0.2, top_p=0.5)
        assert text == full


async def test_the_sync_client_works_too(rtx_426: Replica, tmp_path: Path) -> None:
    async with serving(chatrtx(rtx_426), tmp_path) as api:

        def use() -> tuple[str, str]:
            with OpenAI(base_url=api.url, api_key="x", max_retries=0, timeout=WAIT) as client:
                whole = client.chat.completions.create(model="chatrtx", messages=ask("hi"))
                stream = client.chat.completions.create(model="chatrtx", messages=ask("hi"),
                                                        stream=True)
                pieces = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                return whole.choices[0].message.content or "", pieces

        whole, pieces = await asyncio.to_thread(use)
    assert whole == pieces == expected("hi")


async def test_clients_wait_in_line_in_order_and_past_the_bound_get_429(
        rtx_426: Replica, tmp_path: Path) -> None:
    async with serving(chatrtx(rtx_426), tmp_path, max_waiting=2) as api, \
            api.client() as client:
        finished: list[str] = []

        async def one(name: str) -> None:
            await streamed(client, ask(f"{name} [len=300] [delay=0.01]"))
            finished.append(name)

        first = asyncio.create_task(one("first"))
        await api.wait_line(1, 0)
        second = asyncio.create_task(one("second"))
        await api.wait_line(1, 1)
        third = asyncio.create_task(one("third"))
        await api.wait_line(1, 2)
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model="chatrtx", messages=ask("fourth"))
        assert refused.value.response.headers["Retry-After"]
        async with asyncio.timeout(WAIT * 2):
            await asyncio.gather(first, second, third)
    assert finished == ["first", "second", "third"]


async def test_bots_and_api_clients_share_one_line(rtx_426: Replica, tmp_path: Path) -> None:
    """A bot user's question and an API request wait in the same line: Chat with RTX answers
    one at a time, whoever asks."""
    from rtxrelay.core.conversation import Finished
    from rtxrelay.core.store import ConversationKey

    async with serving(chatrtx(rtx_426), tmp_path) as api, api.client() as client, \
            aiohttp.ClientSession() as http:
        async with http.get(api.url.removesuffix("/v1") + "/health") as health:
            state = await health.json()
        assert health.status == 200 and state["backend"]["reachable"] is True

        async def bot_user() -> list[object]:
            key = ConversationKey("telegram", "1", "2")
            return [u async for u in api.service.ask(key, "from a bot [len=300] [delay=0.01]")]

        bot = asyncio.create_task(bot_user())
        await api.wait_line(1, 0)
        from_api = asyncio.create_task(streamed(client, ask("from the API")))
        await api.wait_line(1, 1)
        async with http.get(api.url.removesuffix("/v1") + "/health") as health:
            assert (await health.json())["queue"] == {"running": 1, "waiting": 1}
        updates = await bot
        text, _ = await from_api
    assert isinstance(updates[-1], Finished) and text == expected("from the API")


async def test_raw_stream_tells_the_place_in_line(rtx_426: Replica, tmp_path: Path) -> None:
    async with serving(chatrtx(rtx_426), tmp_path) as api, api.client() as client, \
            aiohttp.ClientSession() as http:
        ahead = asyncio.create_task(streamed(client, ask("ahead [len=300] [delay=0.01]")))
        await api.wait_line(1, 0)
        async with http.post(f"{api.url}/chat/completions", json={
                "model": "chatrtx", "messages": ask("behind"), "stream": True}) as response:
            raw = await response.text()
        await ahead
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert ": #1 in line" in raw and raw.rstrip().endswith("data: [DONE]")


async def test_a_backend_that_is_down_is_a_503_not_a_hang(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}?cookie=x"
    async with serving(lambda http: ChatRtxBackend(http, parse_launch_url(url)), tmp_path,
                       ) as api, api.client() as client, aiohttp.ClientSession() as http:
        with pytest.raises(openai.InternalServerError) as down:
            await client.chat.completions.create(model="chatrtx", messages=ask("hi"))
        assert down.value.status_code == 503
        assert "not running" in str(down.value.body)
        async with http.get(api.url.removesuffix("/v1") + "/health") as health:
            state = await health.json()
        assert health.status == 503 and state["backend"]["reachable"] is False


# -- auth, CORS, bad input ----------------------------------------------------------------------


async def test_a_key_guards_every_request(rtx_426: Replica, tmp_path: Path) -> None:
    async with serving(chatrtx(rtx_426), tmp_path, api_key="s3cret") as api:
        async with api.client("wrong") as client:
            with pytest.raises(openai.AuthenticationError) as refused:
                await client.models.list()
            assert refused.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        async with api.client("s3cret") as client:
            assert [m.id async for m in client.models.list()] == ["chatrtx"]


def test_listening_beyond_this_pc_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="without a key") as caught:
        ApiSettings(host="0.0.0.0").check()
    assert caught.value.setting == "RTXRELAY_API_KEY"
    ApiSettings(host="0.0.0.0", api_key="k").check()


async def test_serve_refuses_to_start_open_to_the_network(tmp_path: Path) -> None:
    env = {"RTX_URL": "http://127.0.0.1:5000?cookie=x", "RTXRELAY_DB": str(tmp_path / "r.db")}
    code, _, err = await run_cli("serve", "--host", "0.0.0.0", env=env, cwd=tmp_path)
    assert code == 2 and "RTXRELAY_API_KEY" in err


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"model": "chatrtx", "messages": []}', 400, "messages"),
    (b'{"model": "chatrtx"}', 400, "messages"),
    (b'{"model": "chatrtx", "messages": [{"role": "assistant", "content": "hi"}]}', 400,
     "messages"),
    (b'{"model": "chatrtx", "messages": [{"role": "user", "content": "  "}]}', 400, "messages"),
    (b'{"model": "chatrtx", "messages": [{"role": "wizard", "content": "hi"}]}', 400,
     "messages"),
    (b'{"model": "chatrtx", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
     400, "messages"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
    (b'{"model": "chatrtx", "n": 2, "messages": [{"role": "user", "content": "hi"}]}', 400, "n"),
    (b'{"model": "chatrtx", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}',
     400, "max_tokens"),
    (b'{"model": "chatrtx", "stop": [1], "messages": [{"role": "user", "content": "x"}]}', 400,
     "stop"),
])
async def test_bad_requests_get_openai_shaped_errors(rtx_426: Replica, tmp_path: Path,
                                                     body: bytes, status: int,
                                                     param: str | None) -> None:
    async with serving(chatrtx(rtx_426), tmp_path) as api, aiohttp.ClientSession() as http, \
            http.post(f"{api.url}/chat/completions", data=body,
                      headers={"Content-Type": "application/json"}) as response:
        error = (await response.json())["error"]
    assert response.status == status
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert "Traceback" not in error["message"]


async def test_unknown_paths_and_methods_answer_in_the_same_shape(rtx_426: Replica,
                                                                  tmp_path: Path) -> None:
    async with serving(chatrtx(rtx_426), tmp_path) as api, aiohttp.ClientSession() as http:
        async with http.get(f"{api.url}/embeddings") as missing:
            assert missing.status == 404 and "error" in await missing.json()
        async with http.get(f"{api.url}/chat/completions") as wrong:
            assert wrong.status == 405 and "error" in await wrong.json()


async def test_cors_is_off_unless_origins_are_listed(rtx_426: Replica, tmp_path: Path) -> None:
    origin = {"Origin": "http://localhost:3000"}
    async with aiohttp.ClientSession() as http:
        async with serving(chatrtx(rtx_426), tmp_path) as api, \
                http.get(f"{api.url}/models", headers=origin) as closed:
            assert "Access-Control-Allow-Origin" not in closed.headers
        async with serving(chatrtx(rtx_426), tmp_path,
                           cors_origins=("http://localhost:3000",)) as api:
            async with http.options(f"{api.url}/chat/completions", headers={
                    **origin, "Access-Control-Request-Method": "POST"}) as preflight:
                assert preflight.status == 204
                assert preflight.headers["Access-Control-Allow-Origin"] == origin["Origin"]
            async with http.post(f"{api.url}/chat/completions", headers=origin, json={
                    "model": "chatrtx", "messages": ask("hi"), "stream": True}) as stream:
                await stream.read()
                assert stream.headers["Access-Control-Allow-Origin"] == origin["Origin"]


async def test_one_log_line_per_request_and_never_the_content(
        rtx_426: Replica, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with serving(chatrtx(rtx_426), tmp_path) as api, api.client() as client:
        with caplog.at_level(logging.INFO, logger="rtxrelay.app.serve"):
            await client.chat.completions.create(model="chatrtx",
                                                 messages=ask("SECRET-QUESTION"))
    lines = [r.getMessage() for r in caplog.records if r.name == "rtxrelay.app.serve"]
    assert len(lines) == 1 and lines[0].startswith("POST /v1/chat/completions 200 ")
    assert lines[0].endswith("tokens")
    assert not any("SECRET" in r.getMessage() for r in caplog.records)


# -- an OpenAI-compatible backend behind the API ------------------------------------------------


async def test_a_client_that_hangs_up_cancels_its_job(tmp_path: Path) -> None:
    async with FakeOpenAI(persona=Persona.VLLM, models=("m",)) as fake:
        fake.script(Reply(["one ", "two ", "three"], stall_after=2))
        async with serving(lambda http: OpenAiBackend(http, OpenAiSettings(fake.base_url)),
                           tmp_path) as api, api.client() as client:
            stream = await client.chat.completions.create(model="m", messages=ask("q"),
                                                          stream=True)
            seen = ""
            async for chunk in stream:
                seen += (chunk.choices[0].delta.content or "") if chunk.choices else ""
                if "two" in seen:  # the stream stalls after it: only a hang-up ends it
                    break
            await stream.close()
            [gone] = await fake.wait_hangups(1, timeout=WAIT)
            assert gone.hung_up
            await api.wait_line(0, 0)


async def test_a_request_waiting_in_line_leaves_it_when_its_client_hangs_up(
        tmp_path: Path) -> None:
    async with FakeOpenAI(persona=Persona.VLLM, models=("m",)) as fake:
        fake.script(Reply(["busy "], stall_after=1))
        async with serving(lambda http: OpenAiBackend(http, OpenAiSettings(fake.base_url)),
                           tmp_path) as api, api.client() as client:
            busy = await client.chat.completions.create(model="m", messages=ask("a"),
                                                        stream=True)
            await api.wait_line(1, 0)
            waiting = asyncio.create_task(client.chat.completions.create(
                model="m", messages=ask("b")))
            await api.wait_line(1, 1)
            waiting.cancel()  # the client gives up: its connection closes
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await api.wait_line(1, 0)
            await busy.close()
            await api.wait_line(0, 0)


async def test_upstream_models_options_and_usage_pass_through(tmp_path: Path) -> None:
    async with FakeOpenAI(persona=Persona.OLLAMA, models=("llama3.2", "qwen3")) as fake, \
            serving(lambda http: OpenAiBackend(http, OpenAiSettings(fake.base_url)),
                    tmp_path) as api, api.client() as client:
        listed = [m.id async for m in client.models.list()]
        assert listed == ["llama3.2:latest", "qwen3:latest"]
        fake.script(Reply(["Hi ", "there."]))
        text, chunks = await streamed(
            client, [{"role": "system", "content": "Be terse."}, *ask("hello")],
            model="qwen3:latest", stop=["END"], max_tokens=50, temperature=0.1,
            stream_options={"include_usage": True})
        assert text == "Hi there."
        usage = chunks[-1].usage  # type: ignore[attr-defined]
        assert usage is not None and usage.completion_tokens > 0
        sent = fake.chat_requests[-1].json
        # The server counts real tokens: its answer is not cut again by rtxrelay's estimate.
        long_answer = ["word "] * 60
        fake.script(Reply(long_answer))
        whole = await client.chat.completions.create(model="qwen3:latest", messages=ask("x"),
                                                     max_tokens=60)
        assert whole.choices[0].message.content == "".join(long_answer).strip() or \
            whole.choices[0].message.content == "".join(long_answer)
        assert whole.choices[0].finish_reason == "stop"
        sent = fake.chat_requests[-2].json
    assert sent["model"] == "qwen3:latest" and sent["stop"] == ["END"]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.1
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}


async def test_the_real_llama_server_behind_the_api(llama: LlamaServer, tmp_path: Path) -> None:
    settings = OpenAiSettings(llama.base_url)
    async with aiohttp.ClientSession() as http:
        direct = [u async for u in OpenAiBackend(http, settings).stream_answer(
            "Name a fruit.", (), session="s",
            options=AnswerOptions(temperature=0.0))][-1]
    assert isinstance(direct, Done)
    async with serving(lambda http: OpenAiBackend(http, settings), tmp_path) as api, \
            api.client() as client:
        assert [m.id async for m in client.models.list()] == [llama.model]
        text, _ = await streamed(client, ask("Name a fruit."), model=llama.model,
                                 temperature=0)
        whole = await client.chat.completions.create(
            model=llama.model, messages=ask("Name a fruit."), temperature=0)
    assert text == direct.text == whole.choices[0].message.content


# -- as a user starts it -------------------------------------------------------------------------


async def test_run_serves_the_api_beside_the_bots_when_asked(rtx_426: Replica,
                                                             tmp_path: Path) -> None:
    """RTXRELAY_API=1 with no bot token: `rtxrelay run` serves the API alone, answers through
    it, and Ctrl+C stops it."""
    from tests.app.test_run_command import clean_env, rtxrelay_run

    port = free_port()
    env = clean_env(RTX_URL=rtx_426.url, RTXRELAY_DB=str(tmp_path / "r.db"), RTXRELAY_API="1",
                    RTXRELAY_API_PORT=str(port))
    async with rtxrelay_run(tmp_path, env) as cli:
        base = f"http://127.0.0.1:{port}/v1"
        async with asyncio.timeout(WAIT):  # until it listens: its log line says so
            while f"OpenAI-compatible API at {base}" not in cli.output():
                if cli.proc.returncode is not None:
                    pytest.fail(cli.output())
                await asyncio.sleep(0.05)
        async with AsyncOpenAI(base_url=base, api_key="x", max_retries=0,
                               timeout=WAIT) as client:
            text, _ = await streamed(client, ask("hello"))
        assert text == expected("hello")
        assert await cli.interrupt() == 130  # Ctrl+C, as documented
    assert "POST /v1/chat/completions 200" in cli.output()


async def test_requests_arriving_together_ask_the_backend_for_its_models_once(
        tmp_path: Path) -> None:
    async with FakeOpenAI(persona=Persona.OLLAMA, models=("llama3.2",)) as fake, \
            serving(lambda http: OpenAiBackend(http, OpenAiSettings(fake.base_url)),
                    tmp_path) as api, api.client() as client:
        before = sum(r.path.endswith("/models") for r in fake.requests)
        listings = await asyncio.gather(*(client.models.list() for _ in range(10)))
        assert all([m.id for m in listing.data] == ["llama3.2:latest"] for listing in listings)
        assert sum(r.path.endswith("/models") for r in fake.requests) - before == 1


async def test_a_pool_lists_every_backends_models_and_routes_a_request_by_its_model(
        tmp_path: Path) -> None:
    """README, 'Several backends': /v1/models lists every backend's models, and a request
    naming a model goes to a backend that serves it (here the second, the first being idle)."""
    async with FakeOpenAI(persona=Persona.OLLAMA, models=("llama3.2",)) as small, \
            FakeOpenAI(persona=Persona.OLLAMA, models=("qwen3",)) as big:
        def pool(http: aiohttp.ClientSession) -> BackendPool:
            return BackendPool([
                Member("small", OpenAiBackend(http, OpenAiSettings(small.base_url)), 1),
                Member("big", OpenAiBackend(http, OpenAiSettings(big.base_url)), 1)])

        async with serving(pool, tmp_path) as api, api.client() as client:
            listed = [m.id async for m in client.models.list()]
            assert listed == ["llama3.2:latest", "qwen3:latest"]
            big.script(Reply(["from ", "big"]))
            text, _ = await streamed(client, ask("hello"), model="qwen3:latest")
            assert text == "from big"
            assert len(big.chat_requests) == 1 and small.chat_requests == []
