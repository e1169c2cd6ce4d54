"""The OpenAI-compatible backend against a real server: llama.cpp (llama-cpp-python) serving
SmolLM2-135M-Instruct on the CPU (tests/llama). Real streaming, real history, cancel, restart,
doctor and discover; the protocol's corners are in test_openai_backend.py (the fake)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from rtxrelay.backends.openai.backend import OpenAiBackend
from rtxrelay.backends.openai.products import ProductKind
from rtxrelay.backends.openai.settings import OpenAiSettings
from rtxrelay.core.backend import Done, Failed, Started, TextSoFar
from rtxrelay.core.conversation import ConversationService, Finished
from rtxrelay.core.errors import BackendErrorKind
from rtxrelay.core.store import ConversationKey, TurnStatus
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.app.test_cli import run_cli
from tests.llama.server import LlamaServer

LONG_QUESTION = "Write a long story about a robot who learns to paint, in ten chapters."


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trust_env=False) as session:
        yield session


async def test_a_real_answer_streams_in_pieces(llama: LlamaServer,
                                               http: aiohttp.ClientSession) -> None:
    backend = OpenAiBackend(http, OpenAiSettings(llama.base_url, temperature=0.0))
    updates = [u async for u in backend.stream_answer("What is the capital of France?", (),
                                                      session="s")]
    assert isinstance(updates[0], Started)
    shown = [u for u in updates if isinstance(u, TextSoFar)]
    done = updates[-1]
    assert isinstance(done, Done), updates[-1]
    assert done.text.strip() and shown[-1].text == done.text
    # Every update grows the text by exactly its delta: nothing lost, nothing repeated.
    assert "".join(u.delta for u in shown) == done.text
    assert backend.model == llama.model  # the one model it lists, as OPENAI_MODEL is unset


async def test_history_reaches_the_model(llama: LlamaServer, http: aiohttp.ClientSession,
                                         tmp_path: Path) -> None:
    """Turn two's prompt holds turn one: the server counts more prompt tokens, and the model
    can use what it was told (a tiny model does repeat a name back)."""
    async with SqliteStore(tmp_path / "h.db") as store:
        settings = OpenAiSettings(llama.base_url, temperature=0.0)
        service = ConversationService(OpenAiBackend(http, settings), store)
        key = ConversationKey("test", "chat", "ada")
        first = [u async for u in service.ask(key, "Hello! My name is Ada Lovelace.")]
        second = [u async for u in service.ask(key, "What is my name?")]
        fresh_key = ConversationKey("test", "chat", "nobody")
        alone = [u async for u in service.ask(fresh_key, "What is my name?")]
    for updates in (first, second, alone):
        assert isinstance(updates[-1], Finished) and updates[-1].status is TurnStatus.COMPLETE
    with_history, without = second[-1], alone[-1]
    assert isinstance(with_history, Finished) and isinstance(without, Finished)
    assert "Ada" in with_history.text and "Ada" not in without.text


async def test_stop_hangs_up_and_the_server_answers_the_next_question(
        llama: LlamaServer, http: aiohttp.ClientSession) -> None:
    """llama-cpp-python answers one request at a time: had the hang-up not stopped the long
    answer, the next question would wait for all of it (the test's timeout would tell)."""
    backend = OpenAiBackend(http, OpenAiSettings(llama.base_url, temperature=0.0))
    updates = backend.stream_answer(LONG_QUESTION, (), session="s")
    async for update in updates:
        if isinstance(update, TextSoFar) and len(update.text) > 20:
            break
    await updates.aclose()
    async with asyncio.timeout(60):
        after = [u async for u in backend.stream_answer("Say hello.", (), session="s")]
    assert isinstance(after[-1], Done) and after[-1].text


async def test_a_server_restart_fails_one_answer_and_the_next_works(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with LlamaServer() as own:
        backend = OpenAiBackend(http, OpenAiSettings(own.base_url, temperature=0.0))
        updates = backend.stream_answer(LONG_QUESTION, (), session="s")
        async with contextlib.aclosing(updates):
            async for update in updates:
                if isinstance(update, TextSoFar) and len(update.text) > 20:
                    await own.kill()
                if isinstance(update, Failed):
                    break
        assert isinstance(update, Failed) and update.partial_text
        assert update.error.kind in (BackendErrorKind.STOPPED, BackendErrorKind.UNREACHABLE)
        [down] = [u async for u in backend.stream_answer("hi", (), session="s")]
        assert isinstance(down, Failed) and down.error.kind is BackendErrorKind.UNREACHABLE
        await own.restart()
        again = [u async for u in backend.stream_answer("Say hello.", (), session="s")]
    assert isinstance(again[-1], Done) and again[-1].text


async def test_the_product_and_its_one_at_a_time(llama: LlamaServer,
                                                 http: aiohttp.ClientSession) -> None:
    backend = OpenAiBackend(http, OpenAiSettings(llama.base_url, temperature=0.0))
    product = await backend.identify()
    assert product.kind is ProductKind.LLAMA_CPP_PYTHON and product.parallel == 1
    info = await backend.probe()
    assert info.model == llama.model and info.parallel == 1


async def test_doctor_and_discover_on_the_real_server(llama: LlamaServer, tmp_path: Path) -> None:
    env = {"OPENAI_BASE_URL": llama.base_url, "RTXRELAY_DB": str(tmp_path / "r.db")}
    code, out, err = await run_cli("doctor", env=env, cwd=tmp_path, timeout=120)
    assert code == 0, out + err
    assert "OK    llama-cpp-python answers" in out and "one-token completion works" in out
    assert "up to 1 answer(s) at once" in out
    code, out, err = await run_cli("discover", "--ports", str(llama.port), env={}, cwd=tmp_path)
    assert code == 0, err
    assert f"OpenAI-compatible: {llama.base_url}  (llama-cpp-python; models: smollm2)" in out
    assert f"Set OPENAI_BASE_URL={llama.base_url}" in out


async def test_ask_on_the_real_server(llama: LlamaServer, tmp_path: Path) -> None:
    env = {"OPENAI_BASE_URL": llama.base_url, "RTXRELAY_DB": str(tmp_path / "r.db")}
    code, out, err = await run_cli("ask", "Name a color.", env=env, cwd=tmp_path, timeout=120)
    assert code == 0, err
    assert out.strip()
