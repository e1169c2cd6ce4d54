"""Start, kill and restart the real llama.cpp server (llama-cpp-python) from the tests.

    async with LlamaServer() as llama:
        ...  # llama.base_url ("http://127.0.0.1:PORT/v1"), llama.model ("smollm2")
        await llama.kill()      # a crash: clients see the connection die
        await llama.restart()   # back on the same port, model loaded again

Ready means ``GET /v1/models`` answers with the model: the server loads the model before it
binds its port, so the first answer is the ready signal. Start-up fails fast, with the server's
output, if the process exits first, and after ``startup_timeout`` seconds in any case.

Greedy answers (temperature 0) are the same run after run, and with 1 or 2 threads: the venv
is compiled for one instruction set (tests/llama/env.py). One thread is the default: the 135M
model is as fast on one (~140 tokens/s), while two compute threads (OpenMP, spinning at each
barrier) starve on a 2-core machine as soon as anything else runs: with both cores busy, a
16-token answer stalled for over 8 s at a single token; one thread stayed under 2.5 s.

``--interrupt_requests False``: llama-cpp-python's default ends a stream early, with
``[DONE]`` and no finish reason, as soon as another request waits; here requests queue, as
Ollama's and vLLM's do.

Portable: asyncio subprocesses and Process.kill() only (no signals, no process groups); the
venv's python sits in Scripts\\python.exe on Windows (see env.venv_python). The readiness
probe is stdlib urllib, run in a thread, with proxies bypassed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from types import TracebackType

if __package__:
    from .env import LlamaInstall, ensure_llama_server
else:  # run as a script: tests/llama is sys.path[0]
    from env import LlamaInstall, ensure_llama_server  # type: ignore[import-not-found,no-redef]

MODEL_ALIAS = "smollm2"
# Keep memory bounded: loading the model logs ~2,100 lines (llama.cpp's metadata dump), and
# each request a few more; diagnostics need the tail.
MAX_OUTPUT_LINES = 20_000
ENV_BUILD_TIMEOUT = 3600.0  # a cold build when nothing was prebuilt (python tests/llama/env.py)
# Environment variables llama-cpp-python's settings (pydantic-settings, case-insensitive,
# no prefix) would read for any option not given on the command line, and those its
# __main__ reads itself (HOST, PORT, CONFIG_FILE): a CI's PORT or VERBOSE must not leak in.
# The field names of llama_cpp.server.settings.Settings in 0.3.36.
_SETTINGS_ENV = frozenset({
    "api_key", "cache", "cache_size", "cache_type", "chat_format", "chat_template_kwargs",
    "clip_model_path", "config_file", "disable_ping_events", "draft_model",
    "draft_model_num_pred_tokens", "embedding", "flash_attn", "hf_model_repo_id",
    "hf_pretrained_model_name_or_path", "hf_tokenizer_config_path", "host",
    "interrupt_requests", "kv_overrides", "last_n_tokens_size", "logits_all", "lora_base",
    "lora_path", "main_gpu", "model", "model_alias", "mul_mat_q", "n_batch", "n_ctx",
    "n_gpu_layers", "n_threads", "n_threads_batch", "n_ubatch", "numa", "offload_kqv", "port",
    "root_path", "rope_freq_base", "rope_freq_scale", "rope_scaling_type", "rpc_servers",
    "seed", "split_mode", "ssl_certfile", "ssl_keyfile", "tensor_split", "type_k", "type_v",
    "use_mlock", "use_mmap", "verbose", "vocab_only", "yarn_attn_factor", "yarn_beta_fast",
    "yarn_beta_slow", "yarn_ext_factor", "yarn_orig_ctx",
})


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class LlamaServerError(RuntimeError):
    """The server exited, or did not answer /v1/models in time; carries its output's tail."""


class LlamaServer:
    """One ``python -m llama_cpp.server`` process serving SmolLM2, as an async context manager."""

    def __init__(
        self,
        install: LlamaInstall | None = None,
        *,
        port: int | None = None,
        model_alias: str = MODEL_ALIAS,
        n_ctx: int = 2048,
        threads: int = 1,
        interrupt_requests: bool = False,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 120.0,
        echo: bool = False,
        build_progress: Callable[[str], None] | None = None,
    ) -> None:
        self.install = install
        self.port = port if port is not None else free_port()
        self.model = model_alias
        self.n_ctx = n_ctx
        self.threads = threads
        self.interrupt_requests = interrupt_requests
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.echo = echo  # copy the server's output to our stdout (manual runs)
        self.build_progress = build_progress  # told each step of a venv build
        self.output: list[str] = []
        self.started_in: float | None = None  # seconds from spawn to ready, last start
        self._proc: asyncio.subprocess.Process | None = None
        self._drain_task: asyncio.Task[None] | None = None

    # ---- public surface -----------------------------------------------------------

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as its base URL: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.root_url}/v1"

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def command(self, install: LlamaInstall) -> list[str]:
        return [
            *install.server_command(),
            "--model", str(install.model),
            "--model_alias", self.model,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),
            "--interrupt_requests", str(self.interrupt_requests),
            # No mlock: it only warns where RLIMIT_MEMLOCK is small, and buys nothing here.
            "--use_mlock", "False",
            *self.extra_args,
        ]

    def tail(self, lines: int = 60) -> str:
        """The last lines the server printed, for an assertion message."""
        return "\n".join(self.output[-lines:])

    async def start(self) -> LlamaServer:
        if self.running:
            raise RuntimeError("llama.cpp server already running")
        if self.install is None:
            build = functools.partial(ensure_llama_server, progress=self.build_progress)
            self.install = await asyncio.wait_for(asyncio.to_thread(build), ENV_BUILD_TIMEOUT)
        started = time.monotonic()
        self._proc = proc = await asyncio.create_subprocess_exec(
            *self.command(self.install),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,  # one pipe to drain, ordered output
            env=self._child_env(),
        )
        self._drain_task = asyncio.create_task(self._drain(proc))
        try:
            await self._wait_ready(proc, started + self.startup_timeout)
        except LlamaServerError:
            await self.kill()
            raise
        self.started_in = time.monotonic() - started
        return self

    async def kill(self) -> None:
        """Hard kill, as a crash would end it; returns once the process is gone."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await self._reap(limit=15.0)

    async def stop(self, grace: float = 10.0) -> None:
        """Ask politely (terminate), then kill."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()  # TerminateProcess on Windows, SIGTERM elsewhere
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await self._reap(limit=15.0)

    async def restart(self) -> LlamaServer:
        """Kill, then start again on the same port (an outage and a recovery)."""
        await self.kill()
        return await self.start()

    async def __aenter__(self) -> LlamaServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- internals ----------------------------------------------------------------

    @staticmethod
    def _child_env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.lower() not in _SETTINGS_ENV}
        env.update({
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "HF_HUB_OFFLINE": "1",  # nothing comes from a model hub
        })
        return env

    def _models_answer(self) -> bool:
        """One probe of GET /v1/models (blocking; run in a thread): True once it lists us."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.base_url}/models", timeout=2.0) as response:
                body = json.loads(response.read().decode("utf-8"))
        except (OSError, ValueError):  # refused, reset, timed out, HTTP error, bad JSON
            return False
        data = body.get("data") if isinstance(body, dict) else None
        return isinstance(data, list) and any(
            isinstance(m, dict) and m.get("id") == self.model for m in data)

    async def _wait_ready(self, proc: asyncio.subprocess.Process, deadline: float) -> None:
        exited = asyncio.ensure_future(proc.wait())
        pause = 0.02
        try:
            while True:
                if await asyncio.to_thread(self._models_answer):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LlamaServerError(
                        f"llama.cpp server on port {self.port} did not answer /v1/models "
                        f"within {self.startup_timeout:.0f} s; output:\n{self.tail()}")
                # Between probes, wait for the process to exit: a crash ends the wait at once.
                done, _ = await asyncio.wait({exited}, timeout=min(pause, left))
                if done:
                    await self._reap(limit=5.0)  # all its output, for the message
                    raise LlamaServerError(
                        f"llama.cpp server exited with code {proc.returncode} before it was "
                        f"ready; output:\n{self.tail()}")
                pause = min(pause * 2, 0.1)
        finally:
            if not exited.done():
                exited.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await exited

    async def _drain(self, proc: asyncio.subprocess.Process) -> None:
        """Read the child's output until EOF, so its pipe never fills and blocks it."""
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                break
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.output.append(line)
            if len(self.output) > MAX_OUTPUT_LINES:
                del self.output[: len(self.output) - MAX_OUTPUT_LINES]
            if self.echo:
                print(line, flush=True)

    async def _reap(self, limit: float) -> None:
        proc, task = self._proc, self._drain_task
        if proc is not None:
            await asyncio.wait_for(proc.wait(), limit)
        if task is not None:
            try:
                await asyncio.wait_for(task, limit)
            except TimeoutError:
                task.cancel()
            self._drain_task = None


def _main() -> None:  # a manual run: python tests/llama/server.py (Ctrl-C ends it)
    async def run() -> None:
        async with LlamaServer(build_progress=lambda line: print(f"  [llama venv] {line}",
                                                                  file=sys.stderr)) as server:
            print(f"{server.base_url} (model {server.model!r}, ready in "
                  f"{server.started_in:.2f} s)", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    _main()
