"""The ChatRTX 0.4/0.5 bridge (backends/chatrtx/bridge.py), run the way its users run it.

Each bridge is a subprocess under a real Python 3.10 (ChatRTX's env has 3.10.11) with a stand-in
for NVIDIA's engine on its path (tests/fakes/chatrtx_engine), driven with the official openai
client, and with raw aiohttp for what a well-behaved client never sends. The pure parts (stop
strings, reference stripping, templates) are also tested in-process, at every split of a stream.

Nothing waits on the clock: every wait is for the output line or the engine event it means, with
a timeout. To see the line's length, the tests ask ``/health`` again and again (requests, no
sleeps) until it shows what they wait for.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from rtxrelay.backends.chatrtx import bridge
from tests.fakes.chatrtx_engine.ChatRTX import chatrtx as fake

T = TypeVar("T")

FAKES = Path(fake.__file__).resolve().parent.parent
BRIDGE_FILE = Path(str(resources.files("rtxrelay.backends.chatrtx").joinpath("bridge.py")))
TIMEOUT = 20.0
READY = re.compile(r"^Listening on http://(?P<host>\S+):(?P<port>\d+)/v1")
MISTRAL = "mistral_7b_AWQ_int4_chat"
LLAMA2 = "llama2_13b_AWQ_INT4_chat"
GEMMA = "gemma_7b_int4"
CHATGLM3 = "chatglm3_6b_AWQ_int4"
ENGINES = {MISTRAL: "LlamaForCausalLM", LLAMA2: "LlamaForCausalLM", GEMMA: "GemmaForCausalLM",
           CHATGLM3: "ChatGLMForCausalLM"}
REFERENCE_LINE = "Reference files: secret plan.pdf, notes.txt"


# -- Python 3.10, ChatRTX's data, bridge processes ----------------------------------------------


@cache
def python310() -> str | None:
    """A Python 3.10 that really runs: ``python3.10`` on PATH (a pyenv shim for a version that
    is not selected exits 127), else pyenv's versions folder, else python.org's Windows one."""
    candidates = [found] if (found := shutil.which("python3.10")) else []
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += [str(path) for path in
                   sorted(pyenv.glob("versions/3.10.*/bin/python3.10"), reverse=True)]
    if local := os.environ.get("LOCALAPPDATA"):
        candidates += [str(path) for path in
                       Path(local).glob("Programs/Python/Python310/python.exe")]
    for candidate in candidates:
        try:
            done = subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 10)"],
                capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return candidate
    return None


@pytest.fixture(scope="session")
def py310() -> str:
    found = python310()
    if found is None:
        pytest.skip("no Python 3.10 found (python3.10 on PATH, or pyenv's versions/3.10.*): "
                    "the bridge must be run under ChatRTX's own Python, 3.10")
    return found


def model_entry(name: str, model_id: str, **extra: Any) -> dict[str, Any]:
    """A ``models/supported`` entry as ChatRTX 0.4 writes it (0.5 adds ``backend``)."""
    return {
        "name": name, "id": model_id, "min_gpu_memory": 8,
        "prerequisite": {"tokenizer_local_dir": "tokenizer", "engine_dir": "engine",
                         "engine_build_command": "trtllm-build --max_batch_size 1 "
                         "--max_input_len 7168 --max_output_len 1024"},
        "metadata": {"engine": "rank0.engine", "max_new_tokens": 1024,
                     "max_input_token": 7168, "temperature": 0.1},
        **extra,
    }


@pytest.fixture(scope="session")
def chatrtx_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``%ProgramData%\\NVIDIA Corporation\\chatrtx`` in small: the config, built engines."""
    root = tmp_path_factory.mktemp("chatrtx")
    supported = [
        model_entry("Mistral 7B int4", MISTRAL),
        model_entry("Llama2 13B int4", LLAMA2),
        model_entry("Gemma 7B int4", GEMMA),
        model_entry("ChatGLM 3 6B int4", CHATGLM3),
        model_entry("Mistral 7B int4 (downloaded, not built)", "mistral_not_built"),
        model_entry("Llama 3.1 8B Instruct", "meta/llama-3.1-8b-instruct", backend="nims",
                    nims_id="nvcr.io/nim/meta/llama-3.1-8b-instruct"),
        model_entry("CLIP", "clip_model", isImageBased=True),
    ]
    (root / "config").mkdir()
    (root / "config" / "config.json").write_text(json.dumps(
        {"models": {"supported": supported, "selected": MISTRAL}}), encoding="utf-8")
    for model_id, architecture in {**ENGINES, "clip_model": "CLIP"}.items():
        engine = root / "models" / model_id / "engine"
        engine.mkdir(parents=True)
        (engine / "rank0.engine").write_bytes(b"")
        (engine / "config.json").write_text(json.dumps(
            {"pretrained_config": {"architecture": architecture}}), encoding="utf-8")
    return root


class BridgeProcess:
    """A bridge subprocess and everything it printed, read as it comes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.port = 0
        self._news = asyncio.Condition()
        assert process.stdout is not None and process.stderr is not None
        self._readers = [asyncio.create_task(self._read(process.stdout, self.stdout)),
                         asyncio.create_task(self._read(process.stderr, self.stderr))]

    async def _read(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        while line := await stream.readline():
            async with self._news:
                lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
                self._news.notify_all()
        async with self._news:
            self._news.notify_all()

    def output(self) -> str:
        return "\n".join(["-- stdout", *self.stdout, "-- stderr", *self.stderr])

    async def wait_for(self, found: Callable[[], T | None], what: str) -> T:
        try:
            async with asyncio.timeout(TIMEOUT), self._news:
                while (result := found()) is None:
                    if all(reader.done() for reader in self._readers):
                        raise AssertionError(f"the bridge ended before {what}:\n{self.output()}")
                    await self._news.wait()
                return result
        except TimeoutError:
            raise AssertionError(f"no {what} within {TIMEOUT} s:\n{self.output()}") from None

    async def wait_ready(self) -> None:
        ready = await self.wait_for(
            lambda: next((m for line in self.stdout if (m := READY.match(line))), None),
            "listening line")
        self.port = int(ready["port"])

    def events(self, name: str | None = None, tag: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr:
            if line.startswith(fake.EVENT_PREFIX):
                event = json.loads(line[len(fake.EVENT_PREFIX):])
                if name in (None, event["event"]) and tag in (None, event.get("tag")):
                    found.append(event)
        return found

    async def event(self, name: str, tag: str | None = None) -> dict[str, Any]:
        return await self.wait_for(lambda: next(iter(self.events(name, tag)), None),
                                   f"engine event {name!r} (tag {tag})")

    def bridge_log(self) -> list[str]:
        return [line for line in self.stderr if not line.startswith(fake.EVENT_PREFIX)]

    async def release(self) -> None:
        """Let a ``[hold]`` generation finish."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"\n")
        await self.process.stdin.drain()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "unused") -> AsyncOpenAI:
        return AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0,
                           timeout=TIMEOUT)

    async def health(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.url}/health") as response:
            body: dict[str, Any] = await response.json()
            return body

    async def wait_until_waiting(self, count: int) -> None:
        async with aiohttp.ClientSession() as http, asyncio.timeout(TIMEOUT):
            while (await self.health(http))["waiting"] != count:
                pass

    async def finish(self, stop: bool = True) -> int:
        """Stop the bridge if ``stop`` (else wait for it to end), and read it to its end."""
        if self.process.stdin is not None:
            self.process.stdin.close()  # also lets a [hold] generation go
        if stop and self.process.returncode is None:
            self.process.terminate()
        try:
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(*self._readers)
                return await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            await asyncio.gather(*self._readers)
            raise AssertionError(f"the bridge did not end:\n{self.output()}") from None


async def spawn(py310: str, data: Path, *args: str, fakes_on_path: bool = True,
                env: dict[str, str] | None = None) -> BridgeProcess:
    clean = {name: value for name, value in os.environ.items()
             if name not in ("PYTHONPATH", "PYTHONHOME", bridge.KEY_ENV)
             and not name.startswith("FAKE_CHATRTX_")}
    clean.update(PYTHONPATH=str(FAKES) if fakes_on_path else "", PYTHONDONTWRITEBYTECODE="1",
                 PYTHONIOENCODING="utf-8", **(env or {}))
    process = await asyncio.create_subprocess_exec(
        py310, "-u", str(BRIDGE_FILE), "--port", "0",
        "--config", str(data / "config" / "config.json"), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=clean, cwd=data)
    return BridgeProcess(process)


@contextlib.asynccontextmanager
async def running(py310: str, data: Path, *args: str, fakes_on_path: bool = True,
                  env: dict[str, str] | None = None) -> AsyncIterator[BridgeProcess]:
    process = await spawn(py310, data, *args, fakes_on_path=fakes_on_path, env=env)
    try:
        await process.wait_ready()
        yield process
    finally:
        await process.finish()


async def run_to_exit(py310: str, data: Path, *args: str, fakes_on_path: bool = True,
                      env: dict[str, str] | None = None) -> tuple[int, BridgeProcess]:
    process = await spawn(py310, data, *args, fakes_on_path=fakes_on_path, env=env)
    return await process.finish(stop=False), process


@pytest_asyncio.fixture(scope="module")
async def mistral(py310: str, chatrtx_data: Path) -> AsyncIterator[BridgeProcess]:
    """ChatRTX's selected model; a line of one waiting request, so the 429 is quick to reach."""
    async with running(py310, chatrtx_data, "--max-waiting", "1") as process:
        yield process


@pytest_asyncio.fixture
async def client(mistral: BridgeProcess) -> AsyncIterator[AsyncOpenAI]:
    async with mistral.client() as openai_client:
        yield openai_client


def ask(question: str, system: str | None = None) -> list[dict[str, Any]]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}]


async def streamed(openai_client: AsyncOpenAI, messages: list[dict[str, Any]],
                   **options: Any) -> list[Any]:
    stream = await openai_client.chat.completions.create(
        model=MISTRAL, messages=messages, stream=True, **options)
    return [chunk async for chunk in stream]


def content_of(chunks: list[Any]) -> list[str]:
    return [chunk.choices[0].delta.content for chunk in chunks
            if chunk.choices and chunk.choices[0].delta.content]


def finish_reasons(chunks: list[Any]) -> list[str]:
    return [chunk.choices[0].finish_reason for chunk in chunks
            if chunk.choices and chunk.choices[0].finish_reason]


# -- start-up -----------------------------------------------------------------------------------


def test_the_bridge_is_one_standard_library_file_for_python_310() -> None:
    source = BRIDGE_FILE.read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 10))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert imported <= sys.stdlib_module_names | {"__future__"}, imported
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    for newer in ("StrEnum", "asyncio.timeout", "Self", "ExceptionGroup", "tomllib", "UTC"):
        assert not re.search(rf"\b{re.escape(newer)}\b", source), newer


async def test_says_what_it_loaded_and_warns_about_the_gpu_memory(
        mistral: BridgeProcess) -> None:
    env_line = await mistral.wait_for(
        lambda: next((line for line in mistral.stdout if "OPENAI_BASE_URL=" in line), None),
        "the .env hint")
    assert f"OPENAI_BASE_URL=http://127.0.0.1:{mistral.port}/v1" in env_line
    said = mistral.output()
    assert "Loaded Mistral 7B int4 (mistral_7b_AWQ_int4_chat)" in said
    assert "Mistral template" in said
    assert "loaded twice" in said and "close the app" in said
    loaded = await mistral.event("loaded")
    assert loaded["model"] == MISTRAL


@pytest.mark.parametrize(("args", "env", "says"), [
    (["--model", "mistral_not_built"], {}, ["is not installed", "Open the ChatRTX app"]),
    (["--model", "meta/llama-3.1-8b-instruct"], {},
     ["runs as a NIM", "OPENAI_BASE_URL=http://localhost:8000/v1"]),
    (["--model", "clip_model"], {}, ["photo search model"]),
    (["--model", "nope"], {}, ["does not know a model 'nope'", "Installed chat models: "]),
    (["--config", "elsewhere/config.json"], {}, ["config is not at", "--config"]),
    ([], {"FAKE_CHATRTX_FAIL_LOAD": "1"}, ["could not load", "ChatRTX app still open"]),
    (["--host", "0.0.0.0"], {}, ["Refusing to listen on 0.0.0.0 without an API key",
                                 bridge.KEY_ENV]),
], ids=["not built", "NIM model", "photo model", "unknown model", "no config", "load fails",
        "LAN without key"])
async def test_says_what_is_wrong_and_what_to_do(
        py310: str, chatrtx_data: Path, args: list[str], env: dict[str, str],
        says: list[str]) -> None:
    code, process = await run_to_exit(py310, chatrtx_data, *args, env=env)
    assert code == bridge.SETUP_ERROR_EXIT, process.output()
    for words in says:
        assert words in process.output()
    assert "What to do:" in process.output()
    assert not any(READY.match(line) for line in process.stdout)
    assert "Traceback" not in process.output()


async def test_says_when_chatrtx_engine_cannot_be_imported(
        py310: str, chatrtx_data: Path) -> None:
    code, process = await run_to_exit(py310, chatrtx_data, "--engine-dir",
                                      str(chatrtx_data / "nowhere"), fakes_on_path=False)
    assert code == bridge.SETUP_ERROR_EXIT
    assert "Cannot import ChatRTX's engine" in process.output()
    assert "env_nvd_rag\\Scripts\\python.exe" in process.output()
    assert "not a folder" in process.output()


async def test_falls_back_to_the_apps_engine_folder(py310: str, chatrtx_data: Path) -> None:
    async with running(py310, chatrtx_data, "--engine-dir", str(FAKES / "app_engine"),
                       fakes_on_path=False) as process, process.client() as openai_client:
        assert "the app's engine in" in process.output()
        answer = await openai_client.chat.completions.create(
            model=MISTRAL, messages=ask("Hi [tag=app-engine]", system="Be brief."))
        assert answer.choices[0].message.content == fake.BASE_ANSWER
        prompt = await process.event("prompt", "app-engine")
        assert prompt["via"] == "stream_complete"
        assert prompt["prompt"] == "<s>[INST] Be brief.\n\nHi [tag=app-engine] [/INST]"


@pytest.mark.skipif(sys.platform == "win32",
                    reason="a test cannot send Ctrl+C to one process on Windows")
async def test_ctrl_c_stops_it_cleanly(py310: str, chatrtx_data: Path) -> None:
    process = await spawn(py310, chatrtx_data)
    try:
        await process.wait_ready()
        process.process.send_signal(signal.SIGINT)
    finally:
        code = await process.finish(stop=False)
    assert code == 0, process.output()
    assert "Stopped." in process.stdout
    assert process.events("unloaded")
    assert "Traceback" not in process.output()


# -- the API ------------------------------------------------------------------------------------


async def test_lists_the_one_loaded_model(mistral: BridgeProcess,
                                          client: AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [(model.id, model.object, model.owned_by) for model in models.data] == [
        (MISTRAL, "model", "chatrtx-bridge")]
    extra = models.data[0].model_extra or {}
    assert "Mistral template" in extra["chatrtx_bridge"]["prompts"]
    assert extra["chatrtx_bridge"]["token_counts"] == "from the model's tokenizer"
    assert (await client.models.retrieve(MISTRAL)).id == MISTRAL
    async with aiohttp.ClientSession() as http:
        health = await mistral.health(http)
    assert health["status"] == "ok" and health["model"] == MISTRAL


async def test_streams_the_answer(client: AsyncOpenAI) -> None:
    chunks = await streamed(client, ask("Hi [tag=stream]"),
                            stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = content_of(chunks)
    assert "".join(pieces) == fake.BASE_ANSWER
    assert len(pieces) > 3  # in bursts, as the engine gives them
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    prompt = "<s>[INST] Hi [tag=stream] [/INST]"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        fake.count_tokens(prompt), fake.count_tokens(fake.BASE_ANSWER),
        fake.count_tokens(prompt) + fake.count_tokens(fake.BASE_ANSWER))
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert len({chunk.id for chunk in chunks}) == 1
    assert len({chunk.created for chunk in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")


async def test_answers_whole_with_usage(client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(model=MISTRAL, messages=ask("Hi [tag=whole]"),
                                                  temperature=0.7, top_p=0.5, seed=1)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == fake.BASE_ANSWER
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == fake.count_tokens(fake.BASE_ANSWER)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + \
        answer.usage.completion_tokens


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "First question?"},
    {"role": "assistant", "content": "First answer."},
    {"role": "user", "content": "Second question? [tag={tag}]"},
]
TEMPLATES = {
    MISTRAL: "<s>[INST] Be brief.\n\nFirst question? [/INST] First answer.</s>"
             "[INST] Second question? [tag={tag}] [/INST]",
    LLAMA2: "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nFirst question? [/INST] First answer. "
            "</s><s>[INST] Second question? [tag={tag}] [/INST]",
    GEMMA: "<start_of_turn>user\nBe brief.\n\nFirst question?<end_of_turn>\n"
           "<start_of_turn>model\nFirst answer.<end_of_turn>\n"
           "<start_of_turn>user\nSecond question? [tag={tag}]<end_of_turn>\n"
           "<start_of_turn>model\n",
    CHATGLM3: "<|system|>\nBe brief.\n<|user|>\nFirst question?\n<|assistant|>\nFirst answer.\n"
              "<|user|>\nSecond question? [tag={tag}]\n<|assistant|>",
}


@pytest.mark.parametrize("model_id", list(TEMPLATES))
async def test_builds_the_conversation_in_the_models_template(
        request: pytest.FixtureRequest, py310: str, chatrtx_data: Path, model_id: str) -> None:
    tag = f"turns-{model_id[:6]}"
    messages = [{**message, "content": message["content"].format(tag=tag)}
                for message in CONVERSATION]
    async with contextlib.AsyncExitStack() as stack:
        if model_id == MISTRAL:  # ChatRTX's selection: the shared bridge
            process: BridgeProcess = request.getfixturevalue("mistral")
        else:
            process = await stack.enter_async_context(
                running(py310, chatrtx_data, "--model", model_id))
        openai_client = await stack.enter_async_context(process.client())
        answer = await openai_client.chat.completions.create(model=model_id, messages=messages)
        assert answer.choices[0].message.content == fake.BASE_ANSWER
        prompt = await process.event("prompt", tag)
    assert prompt["via"] == "stream_complete"
    assert prompt["prompt"] == TEMPLATES[model_id].format(tag=tag)


async def test_stop_strings_end_the_answer_and_the_generation(
        mistral: BridgeProcess, client: AsyncOpenAI) -> None:
    chunks = await streamed(client, ask("Count [tag=stop-list]"), stop=["four five", "never"])
    pieces = content_of(chunks)
    assert "".join(pieces) == "Hello from the fake engine. One two three "
    assert not any("fou" in piece for piece in pieces)
    assert finish_reasons(chunks) == ["stop"]
    await mistral.event("closed", "stop-list")  # the engine stopped there too

    answer = await client.chat.completions.create(
        model=MISTRAL, messages=ask("Count [tag=stop-one]"), stop="engine.")
    assert answer.choices[0].message.content == "Hello from the fake "
    assert answer.choices[0].finish_reason == "stop"


async def test_the_models_next_turn_markers_end_the_answer(
        mistral: BridgeProcess, client: AsyncOpenAI) -> None:
    chunks = await streamed(client, ask("Go on [overrun] [tag=overrun]"))
    assert "".join(content_of(chunks)) == fake.BASE_ANSWER
    assert finish_reasons(chunks) == ["stop"]
    await mistral.event("closed", "overrun")


async def test_max_tokens_cuts_the_answer(mistral: BridgeProcess, client: AsyncOpenAI) -> None:
    chunks = await streamed(client, ask("Hi [tag=max-tokens]"), max_tokens=3,
                            stream_options={"include_usage": True})
    assert "".join(content_of(chunks)) == "Hello from the "
    assert finish_reasons(chunks) == ["length"]
    assert chunks[-1].usage.completion_tokens == 3
    await mistral.event("closed", "max-tokens")

    answer = await client.chat.completions.create(
        model=MISTRAL, messages=ask("Hi [tag=max-completion]"), max_completion_tokens=5)
    assert answer.choices[0].message.content == "Hello from the fake engine"
    assert answer.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_reference_html_becomes_a_line_of_file_names(
        mistral: BridgeProcess, stream: bool) -> None:
    body = {"model": MISTRAL, "messages": ask("What do my notes say? [refs]"), "stream": stream}
    async with aiohttp.ClientSession() as http, \
            http.post(f"{mistral.url}/v1/chat/completions", json=body) as response:
        raw = await response.text()
    assert response.status == 200
    for leak in ("C:", "alice", "Users", "data-link", "<div", "<br>"):
        assert leak not in raw
    if stream:
        events = [json.loads(line[len("data: "):]) for line in raw.split("\n\n")
                  if line.startswith("data: {")]
        content = "".join(event["choices"][0]["delta"].get("content") or ""
                          for event in events if event["choices"])
    else:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    assert content == f"{fake.BASE_ANSWER}\n\n{REFERENCE_LINE}"


async def test_a_key_guards_every_request(py310: str, chatrtx_data: Path) -> None:
    key = "a-long-random-key"
    async with running(py310, chatrtx_data, "--host", "0.0.0.0",
                       env={bridge.KEY_ENV: key}) as process:
        assert any(line.startswith("Listening on http://0.0.0.0:") for line in process.stdout)
        async with process.client("wrong-key") as wrong:
            with pytest.raises(openai.AuthenticationError):
                await wrong.models.list()
        async with aiohttp.ClientSession() as http:
            for method, path in (("GET", "/health"), ("GET", "/v1/models"),
                                 ("POST", "/v1/chat/completions"), ("GET", "/nowhere")):
                async with http.request(method, process.url + path,
                                        json={"messages": ask("Hi")}) as response:
                    assert response.status == 401, path
                    assert response.headers["WWW-Authenticate"] == "Bearer"
                    error = (await response.json())["error"]
                    assert set(error) == {"message", "type", "param", "code"}
                    assert error["code"] == "invalid_api_key"
        async with process.client(key) as right:
            answer = await right.chat.completions.create(model=MISTRAL,
                                                         messages=ask("Hi [tag=keyed]"))
            assert answer.choices[0].message.content == fake.BASE_ANSWER


BAD_REQUESTS = [
    ("POST", "/v1/chat/completions", b'{"messages": [', 400, None),
    ("POST", "/v1/chat/completions", b'["a list"]', 400, None),
    ("POST", "/v1/chat/completions", b'{"messages": []}', 400, "messages"),
    ("POST", "/v1/chat/completions", b'{"stream": true}', 400, "messages"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "system", "content": "s"}]}',
     400, "messages"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}',
     400, "messages[0].role"),
    ("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}).encode(), 400,
     "messages[0].content"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
     b'"stop": 5}', 400, "stop"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
     b'"max_tokens": 0}', 400, "max_tokens"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
     b'"n": 2}', 400, "n"),
    ("POST", "/v1/chat/completions", b'{"model": "gpt-4o", "messages": [{"role": "user", '
     b'"content": "x"}]}', 404, "model"),
    ("GET", "/v1/models/gpt-4o", b"", 404, "model"),
    ("POST", "/v1/completions", b'{"prompt": "x"}', 404, None),
    ("GET", "/", b"", 404, None),
    ("GET", "/v1/chat/completions", b"", 405, None),
    ("DELETE", "/v1/models", b"", 405, None),
]


@pytest.mark.parametrize(("method", "path", "data", "status", "param"), BAD_REQUESTS)
async def test_bad_requests_get_openai_shaped_errors(
        mistral: BridgeProcess, method: str, path: str, data: bytes, status: int,
        param: str | None) -> None:
    async with aiohttp.ClientSession() as http, http.request(
            method, mistral.url + path, data=data,
            headers={"Content-Type": "application/json"}) as response:
        raw = await response.text()
    assert response.status == status, raw
    body = json.loads(raw)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and body["error"]["param"] == param
    assert "Traceback" not in raw and "File \"" not in raw


async def test_a_long_conversation_loses_its_oldest_turns_to_fit_the_engine(
        mistral: BridgeProcess, client: AsyncOpenAI) -> None:
    limit = 7168  # the test config's max_input_len, in the fake tokenizer's words
    long_turn = "word " * limit
    answer = await client.chat.completions.create(model=MISTRAL, messages=[
        {"role": "user", "content": f"Old question {long_turn}"},
        {"role": "assistant", "content": "Old answer."},
        {"role": "user", "content": "New question [tag=trimmed]"},
    ])
    assert answer.choices[0].message.content == fake.BASE_ANSWER
    prompt = await mistral.event("prompt", "trimmed")
    assert prompt["prompt"] == "<s>[INST] New question [tag=trimmed] [/INST]"

    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MISTRAL,
                                             messages=ask("word " * (limit + 1)))
    assert caught.value.code == "context_length_exceeded"


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_an_engine_failure_is_an_error_and_its_log_stays_off_the_console(
        mistral: BridgeProcess, chatrtx_data: Path, client: AsyncOpenAI, stream: bool) -> None:
    secret = f"secret-{stream}"
    seen = len(mistral.stderr)
    with pytest.raises(openai.APIError) as caught:
        if stream:  # the first burst went out: the error comes as an event
            await streamed(client, ask(f"Break [fail] [tag=fail-{stream}] {secret}"))
        else:
            await client.chat.completions.create(
                model=MISTRAL, messages=ask(f"Break [fail] [tag=fail-{stream}] {secret}"))
    assert caught.value.code == "engine_error"
    assert secret not in caught.value.message
    await mistral.wait_for(lambda: next((line for line in mistral.stderr[seen:]
                                         if "engine failed while answering" in line), None),
                           "the failure's log line")
    assert not any(secret in line for line in mistral.bridge_log())
    # ChatRTX's own error quotes the prompt: it went to its log file, set up by the bridge
    assert secret in (chatrtx_data / "logs" / "chatrtx-bridge.txt").read_text(encoding="utf-8")
    answer = await client.chat.completions.create(model=MISTRAL,
                                                  messages=ask(f"Again [tag=after-{secret}]"))
    assert answer.choices[0].message.content == fake.BASE_ANSWER


async def test_an_unknown_model_is_a_not_found_error(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=ask("Hi"))
    assert caught.value.code == "model_not_found"


async def test_logs_a_line_per_request_and_never_the_content(
        mistral: BridgeProcess, client: AsyncOpenAI) -> None:
    seen = len(mistral.stderr)
    await client.chat.completions.create(model=MISTRAL,
                                         messages=ask("The password is xylophone [tag=log]"))
    line = await mistral.wait_for(
        lambda: next((line for line in mistral.stderr[seen:]
                      if "POST /v1/chat/completions 200" in line), None), "the request's log line")
    assert re.search(r"POST /v1/chat/completions 200 \d+\.\d\ds$", line)
    assert not any("xylophone" in line or "Hello from" in line for line in mistral.bridge_log())


# -- one answer at a time -----------------------------------------------------------------------


async def test_one_answer_at_a_time_and_a_bounded_line(
        mistral: BridgeProcess, client: AsyncOpenAI) -> None:
    first = asyncio.create_task(client.chat.completions.create(
        model=MISTRAL, messages=ask("First [hold] [tag=line-a]")))
    await mistral.event("holding", "line-a")
    second = asyncio.create_task(client.chat.completions.create(
        model=MISTRAL, messages=ask("Second [tag=line-b]")))
    await mistral.wait_until_waiting(1)

    async with aiohttp.ClientSession() as http, http.post(
            f"{mistral.url}/v1/chat/completions",
            json={"messages": ask("Third [tag=line-c]")}) as response:
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert (await response.json())["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MISTRAL, messages=ask("Fourth [tag=line-d]"))

    await mistral.release()
    answers = await asyncio.gather(first, second)
    assert [answer.choices[0].message.content for answer in answers] == [fake.BASE_ANSWER] * 2
    await mistral.event("end", "line-b")
    order = [(event["event"], event["tag"]) for event in mistral.events()
             if event.get("tag") in ("line-a", "line-b") and event["event"] in ("start", "end")]
    assert order == [("start", "line-a"), ("end", "line-a"), ("start", "line-b"),
                     ("end", "line-b")]
    assert not mistral.events("overlap")
    assert not mistral.events("prompt", "line-c") and not mistral.events("prompt", "line-d")


async def test_hanging_up_stops_the_generation(mistral: BridgeProcess,
                                               client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MISTRAL, messages=ask("Talk forever [endless] [tag=hang-up]"), stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    await mistral.event("closed", "hang-up")
    answer = await client.chat.completions.create(model=MISTRAL,
                                                  messages=ask("Next [tag=after-hang-up]"))
    assert answer.choices[0].message.content == fake.BASE_ANSWER


async def test_a_client_that_hangs_up_while_waiting_leaves_the_line(
        mistral: BridgeProcess, client: AsyncOpenAI) -> None:
    first = asyncio.create_task(client.chat.completions.create(
        model=MISTRAL, messages=ask("First [hold] [tag=gone-a]")))
    await mistral.event("holding", "gone-a")
    http = aiohttp.ClientSession()
    try:
        waiting = asyncio.create_task(http.post(f"{mistral.url}/v1/chat/completions",
                                                json={"messages": ask("Later [tag=gone-b]")}))
        await mistral.wait_until_waiting(1)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    finally:
        await http.close()
    await mistral.wait_until_waiting(0)
    await mistral.release()
    assert (await first).choices[0].message.content == fake.BASE_ANSWER
    assert not mistral.events("prompt", "gone-b")


# -- without ChatRTX's model object -------------------------------------------------------------


async def test_without_the_model_object_only_the_last_question_goes(
        py310: str, chatrtx_data: Path) -> None:
    async with running(py310, chatrtx_data, env={"FAKE_CHATRTX_HIDE_LLM": "1"}) as process, \
            process.client() as openai_client:
        assert any("single-question mode" in line for line in process.bridge_log())
        extra = (await openai_client.models.list()).data[0].model_extra or {}
        assert "one-question call" in extra["chatrtx_bridge"]["prompts"]
        assert extra["chatrtx_bridge"]["token_counts"].startswith("estimated")
        messages = [{**message, "content": message["content"].format(tag="single")}
                    for message in CONVERSATION]
        answer = await openai_client.chat.completions.create(model=MISTRAL, messages=messages)
        assert answer.choices[0].message.content == fake.BASE_ANSWER
        assert answer.usage is not None
        assert answer.usage.completion_tokens == bridge.estimate_tokens(fake.BASE_ANSWER)
        prompt = await process.event("prompt", "single")
    assert prompt["via"] == "generate_stream_response"
    assert prompt["prompt"] == "<s>[INST] Second question? [tag=single] [/INST]"


# -- the pure parts, in-process -----------------------------------------------------------------


def chunkings(text: str) -> Iterator[list[str]]:
    """``text`` cut in two at every place, in three at many, and character by character."""
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]
    for first, second in itertools.combinations(range(0, len(text) + 1, 3), 2):
        yield [text[:first], text[first:second], text[second:]]
    yield list(text)


def shape(pieces: list[str], stops: Sequence[str] = (), limit: int | None = None,
          counter: bridge.TokenCounter | None = None) -> tuple[list[str], str]:
    shaper = bridge.AnswerShaper(stops, limit, counter or bridge.TokenCounter())
    out: list[str] = []
    for piece in pieces:
        text, reason = shaper.feed(piece)
        out.append(text)
        if reason:
            return out, reason
    text, reason = shaper.finish()
    return [*out, text], reason


def test_stop_strings_at_every_split() -> None:
    text = "a STO b ST c STOP d"
    for pieces in chunkings(text):
        out, reason = shape(pieces, ["STOP", "never"])
        assert "".join(out) == "a STO b ST c ", pieces
        assert reason == "stop"
        sent = ""
        for part in out:  # nothing of "STOP" ever went out before it was known
            sent += part
            assert "STOP"[:3] not in sent[len("a STO b ST c"):], pieces


def test_reference_html_at_every_split() -> None:
    text = fake.BASE_ANSWER + fake.REFERENCES
    for pieces in chunkings(text):
        out, reason = shape(pieces)
        assert "".join(out) == f"{fake.BASE_ANSWER}\n\n{REFERENCE_LINE}", pieces
        assert reason == "stop"
        assert not any("<" in part or "C:" in part for part in out)


def test_reference_names_are_bare_file_names() -> None:
    tail = ("<br>Reference files:<br><div class=\"links-list\">"
            "<a data-link=\"C:/Users/bob/Q&amp;A.md\">Q&amp;A.md</a>"
            "<a data-link='\\\\nas\\share\\report.docx'>report.docx</a>"
            "<a data-link='D:\\data\\report.docx'>report.docx</a></div>"
            "<div class=\"images-list\"><a data-link='C:\\p\\cat.jpg'><img src='C:\\p\\cat.jpg'>"
            "</a></div>")
    assert bridge.reference_names(tail) == ["Q&A.md", "report.docx"]
    out, _ = shape([fake.BASE_ANSWER, tail[:30], tail[30:]])
    assert "".join(out) == f"{fake.BASE_ANSWER}\n\nReference files: Q&A.md, report.docx"
    assert "".join(shape(["<br>Reference files:<br><div class=\"links-list\"></div>"])[0]) == ""


def test_max_tokens_with_the_estimate() -> None:
    counter = bridge.TokenCounter()  # no tokenizer: 4 characters a token
    out, reason = shape(["abcdefgh", "ijkl"], limit=2, counter=counter)
    assert ("".join(out), reason) == ("abcdefgh", "length")
    assert bridge.estimate_tokens("") == 0
    assert bridge.estimate_tokens("abcde") == 2
    assert bridge.estimate_tokens("你好, RTX") == 2 + 2


def test_conversations_from_messages() -> None:
    conversation = bridge.conversation_from([
        {"role": "developer", "content": "Rule one."},
        {"role": "user", "content": [{"type": "text", "text": "Part one."},
                                     {"type": "text", "text": "Part two."}]},
        {"role": "user", "content": "More."},
        {"role": "system", "content": "Rule two."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "Next?"},
        {"role": "assistant", "content": "Well,"},
    ])
    assert conversation.system == "Rule one.\n\nRule two."
    assert conversation.turns == [bridge.Turn("Part one.\nPart two.\n\nMore.", "Sure."),
                                  bridge.Turn("Next?", "Well,")]
    assert conversation.last_question() == "Next?"
    # the last assistant message is a prefill: the model goes on from it
    assert bridge.render_prompt("llama2", conversation).endswith("[INST] Next? [/INST] Well,")
    assert bridge.render_prompt("gemma", conversation).endswith(
        "<start_of_turn>user\nNext?<end_of_turn>\n<start_of_turn>model\nWell,")
    for bad in ([], [{"role": "system", "content": "only rules"}], "text", [{"role": "user"}]):
        with pytest.raises(bridge.ApiError) as caught:
            bridge.conversation_from(bad)
        assert caught.value.status == 400


def test_templates_without_a_system_prompt() -> None:
    one = bridge.Conversation(None, [bridge.Turn("Q?")])
    assert bridge.render_prompt("llama2", one) == "<s>[INST] Q? [/INST]"
    assert bridge.render_prompt("mistral", one) == "<s>[INST] Q? [/INST]"
    assert bridge.render_prompt("gemma", one) == \
        "<start_of_turn>user\nQ?<end_of_turn>\n<start_of_turn>model\n"
    assert bridge.render_prompt("chatglm3", one) == "<|user|>\nQ?\n<|assistant|>"


def test_a_long_conversation_loses_its_oldest_turns() -> None:
    turns = [bridge.Turn(f"question {n} " + "x" * 40, f"answer {n}") for n in range(5)]
    conversation = bridge.Conversation("Rules.", [*turns, bridge.Turn("last one")])
    prompt = bridge.fit_prompt("mistral", conversation, bridge.TokenCounter(), budget=40)
    assert prompt.startswith("<s>[INST] Rules.\n\nquestion 4 ")
    assert prompt.endswith("[INST] last one [/INST]")
    assert bridge.fit_prompt("mistral", conversation, bridge.TokenCounter(), budget=1) == \
        "<s>[INST] Rules.\n\nlast one [/INST]"


def test_which_template_for_which_model() -> None:
    assert bridge.detect_family(MISTRAL, "LlamaForCausalLM") == "mistral"
    assert bridge.detect_family(LLAMA2, "LlamaForCausalLM") == "llama2"
    assert bridge.detect_family(GEMMA, None) == "gemma"
    assert bridge.detect_family(CHATGLM3, None) == "chatglm3"
    assert bridge.detect_family("custom_model", "GemmaForCausalLM") == "gemma"
    assert bridge.detect_family("custom_model", "QWenForCausalLM") is None


# -- rtxrelay through the bridge ------------------------------------------------------------


async def test_rtxrelay_reaches_chatrtx_through_the_bridge(mistral: BridgeProcess) -> None:
    """The point of the bridge: rtxrelay's OpenAI backend asks ChatRTX 0.4/0.5 with history,
    knows it answers one at a time, and no local path reaches the answer."""
    from rtxrelay.backends.openai.backend import OpenAiBackend
    from rtxrelay.backends.openai.products import ProductKind
    from rtxrelay.backends.openai.settings import OpenAiSettings
    from rtxrelay.core.backend import Done, Exchange

    async with aiohttp.ClientSession(trust_env=False) as http:
        backend = OpenAiBackend(http, OpenAiSettings(f"{mistral.url}/v1"))
        product = await backend.identify()
        assert product.kind is ProductKind.CHATRTX_BRIDGE and product.parallel == 1
        info = await backend.probe()
        assert info.model == MISTRAL
        updates = [u async for u in backend.stream_answer(
            "What do my notes say? [refs]", [Exchange("hi", "hello")], session="s")]
    done = updates[-1]
    assert isinstance(done, Done), updates
    assert done.text == f"{fake.BASE_ANSWER}\n\n{REFERENCE_LINE}"
    assert "C:" not in done.raw


def test_rtxrelay_writes_the_bridge_for_the_user(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "rtxrelay", "chatrtx-bridge", "--write",
                             str(tmp_path)], capture_output=True, text=True, timeout=60,
                            check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = tmp_path / "rtxrelay_chatrtx_bridge.py"
    assert written.read_bytes() == BRIDGE_FILE.read_bytes()
    assert "OPENAI_BASE_URL=http://127.0.0.1:8765/v1" in result.stdout
    missing = subprocess.run([sys.executable, "-m", "rtxrelay", "chatrtx-bridge", "--write",
                              str(tmp_path / "no" / "such" / "dir" / "b.py")],
                             capture_output=True, text=True, timeout=60, check=False,
                             cwd=tmp_path)
    assert missing.returncode == 2 and "Cannot write" in missing.stderr
