"""The session-wide ``llama`` fixture: one real llama.cpp server (SmolLM2) for the whole run.

tests/conftest.py imports it, so tests in every folder (backends, bots, app, llama) share the
one server:

    from tests.llama.fixtures import llama  # noqa: F401

The venv is normally prebuilt (``python tests/llama/env.py``, as CI does). If it is not, the
first test that needs the server builds it (80-100 s on 2 cores), showing the build's
progress on the terminal, with pytest-timeout's clock stopped for that test: the per-test
timeout is for tests, not for compiling llama.cpp.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from tests.llama.env import LlamaInstall, ensure_llama_server, installed, is_ready, print_progress
from tests.llama.server import LlamaServer

BUILD_TIMEOUT = 3600.0


def _live_printer(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a line on the terminal even while pytest captures output (main thread only)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def show(line: str) -> None:
        if capman is None:
            print_progress(line)
            return
        with capman.global_and_fixture_disabled():
            print_progress(line)

    return show


def _stop_test_timeout(request: pytest.FixtureRequest) -> None:
    """Stop pytest-timeout's clock for the test that is waiting on the build, if any."""
    item = getattr(request, "_pyfuncitem", None)  # the test that asked for this fixture
    if item is not None and request.config.pluginmanager.hasplugin("timeout"):
        request.config.hook.pytest_timeout_cancel_timer(item=item)


async def _install(request: pytest.FixtureRequest) -> LlamaInstall:
    if is_ready():
        return installed()
    _stop_test_timeout(request)
    loop = asyncio.get_running_loop()
    show = _live_printer(request)
    show("the llama.cpp server venv is not built yet: building it now "
         "(prebuild with `python tests/llama/env.py`)")

    def progress(line: str) -> None:  # called in the build thread
        loop.call_soon_threadsafe(show, line)

    def build() -> LlamaInstall:
        return ensure_llama_server(progress=progress)

    return await asyncio.wait_for(asyncio.to_thread(build), BUILD_TIMEOUT)


@pytest_asyncio.fixture(scope="session")
async def llama(request: pytest.FixtureRequest) -> AsyncIterator[LlamaServer]:
    """A real OpenAI-compatible server: ``llama.base_url``, ``llama.model``; ``kill()`` and
    ``restart()`` (same port) for outage tests. Greedy answers (temperature 0) repeat exactly.

    A test that kills it must restart it before it ends (in a ``finally``): the server is
    shared by the whole session."""
    install = await _install(request)
    async with LlamaServer(install) as server:
        yield server
