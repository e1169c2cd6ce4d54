"""The ``rtxrelay`` command with OPENAI_BASE_URL, as a user runs it: a real subprocess against
the protocol-faithful fake (the real llama.cpp server: tests/backends/test_openai_llama.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.test_cli import run_cli
from tests.backends.test_openai_backend import closed_port
from tests.fakes.openai_api import FakeOpenAI, Persona, Reply


async def test_ask_streams_from_an_openai_compatible_server(tmp_path: Path) -> None:
    async with FakeOpenAI(persona=Persona.OLLAMA, models=("llama3.2",)) as fake:
        fake.script(Reply(["Ollama ", "says ", "hi."]))
        env = {"OPENAI_BASE_URL": fake.base_url, "RTXRELAY_DB": str(tmp_path / "r.db")}
        code, out, err = await run_cli("ask", "hello", env=env, cwd=tmp_path)
    assert code == 0, err
    assert out.strip() == "Ollama says hi."


async def test_doctor_checks_server_key_model_and_a_completion(tmp_path: Path) -> None:
    async with FakeOpenAI(persona=Persona.LLAMA_CPP, models=("smol",), api_key="k3y",
                          parallel=2) as fake:
        env = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "k3y",
               "RTXRELAY_DB": str(tmp_path / "r.db")}
        code, out, err = await run_cli("doctor", env=env, cwd=tmp_path)
        assert code == 0, out + err
        for expected in ("OK    llama.cpp", "API key accepted",
                         "model smol (the first the server lists",
                         "a one-token completion works", "up to 2 answer(s) at once",
                         "All good."):
            assert expected in out, out
        code, out, _ = await run_cli("doctor", env={**env, "OPENAI_API_KEY": "nope"},
                                     cwd=tmp_path)
    assert code == 1
    assert "FIX   the server at" in out and "OPENAI_API_KEY" in out
    assert "nope" not in out  # the key is never printed


async def test_doctor_says_when_chatrtx_nim_is_not_loaded(tmp_path: Path) -> None:
    env = {"OPENAI_BASE_URL": "http://localhost:8000/v1", "RTXRELAY_DB": str(tmp_path / "r.db")}
    if closed_port(8000) is None:
        pytest.skip("something listens on port 8000 here")
    code, out, _ = await run_cli("doctor", env=env, cwd=tmp_path)
    assert code == 1 and "ChatRTX app runs with that model selected" in out


async def test_discover_names_the_server_and_prints_the_setting(tmp_path: Path) -> None:
    async with FakeOpenAI(persona=Persona.OLLAMA, models=("qwen3:8b",)) as ollama, \
            FakeOpenAI(persona=Persona.NIM, models=("meta/llama-3.1-8b-instruct",)) as nim:
        ports = ",".join(base.rsplit(":", 1)[1].split("/")[0]
                         for base in (ollama.base_url, nim.base_url))
        code, out, err = await run_cli("discover", "--ports", ports, env={}, cwd=tmp_path)
    assert code == 0, err
    assert f"OpenAI-compatible: {ollama.base_url}  (Ollama" in out and "qwen3:8b" in out
    assert f"OpenAI-compatible: {nim.base_url}  (ChatRTX's model (NIM)" in out
    # ChatRTX's own model is the one suggested.
    assert f"Set OPENAI_BASE_URL={nim.base_url}" in out


async def test_two_backends_at_once_is_a_config_error(tmp_path: Path) -> None:
    env = {"RTX_URL": "http://127.0.0.1:5000?cookie=x",
           "OPENAI_BASE_URL": "http://localhost:11434/v1"}
    code, _, err = await run_cli("ask", "hi", env=env, cwd=tmp_path)
    assert code == 2 and "Both RTX_URL and OPENAI_BASE_URL are set" in err
