"""Suite-wide settings and the shared Chat with RTX replicas.

All tests share one event loop (pyproject sets the loop scope to "session") so a replica
server started once can serve every test that needs it; each starts in a few seconds.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

# The real llama.cpp server (SmolLM2), one for the whole run: `llama`.
from tests.llama.fixtures import llama  # noqa: F401
from tests.replica.launcher import Replica, started
from tests.replica.variants import VARIANTS
from tests.support.faults import REPORT, FaultRow

# A real PostgreSQL server for the run (`postgres`), a new database per test (`postgres_dsn`).
from tests.support.postgres import postgres, postgres_dsn  # noqa: F401

# PTB constructs RetryAfter through a deprecated property unless this is set; under
# -W error that warning would replace the exception (docs/platforms.md#telegram-gotchas).
os.environ["PTB_TIMEDELTA"] = "true"
# Loopback must never go through a proxy the CI machine might have configured.
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

TOKEN_DELAY = 0.001  # fast, but still many separate streamed updates per answer


@pytest_asyncio.fixture(scope="session", params=sorted(VARIANTS))
async def rtx(request: object) -> AsyncIterator[Replica]:
    """One replica per protocol generation: sse_v1, sse_v2, sse_v2.1, sse_v3, gradio 5 prefix."""
    async with Replica(request.param, token_delay=TOKEN_DELAY) as replica:  # type: ignore[attr-defined]
        yield replica


@pytest_asyncio.fixture(scope="session")
async def rtx_426() -> AsyncIterator[Replica]:
    """The ChatRTX 0.3 version, for tests that need one healthy server."""
    async with Replica("4.26", token_delay=TOKEN_DELAY) as replica:
        yield replica


@pytest_asyncio.fixture(scope="session")
async def rtx_pair() -> AsyncIterator[tuple[Replica, Replica]]:
    """Two ChatRTX 0.3 replicas, started at once, for the tests of a pool of two (desk and
    laptop). Neither is ever killed: a test that kills a backend starts its own."""
    desk = Replica("4.26", token_delay=TOKEN_DELAY)
    laptop = Replica("4.26", token_delay=TOKEN_DELAY)
    async with started(desk, laptop):
        yield desk, laptop


@pytest_asyncio.fixture(scope="session")
async def rtx_https() -> AsyncIterator[Replica]:
    async with Replica("4.26", https=True, token_delay=TOKEN_DELAY) as replica:
        yield replica


# -- the fault report (tests/support/faults.py) -------------------------------------------------


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``fault(kept=…, lost=…, stale=…, leaked=…)``: the figures of this test's row (the
    row itself comes from its ``@pytest.mark.fault(case, what happened)``)."""

    def record(**figures: int) -> None:
        row = REPORT.rows[request.node.nodeid]
        for name, value in figures.items():
            setattr(row, name, value)

    return record


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("fault")
    if marker is not None:
        REPORT.rows[item.nodeid] = FaultRow(*marker.args)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    row = REPORT.rows.get(item.nodeid)
    if row is not None and report.when == "call":
        row.passed = report.passed
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT.rows:
        terminalreporter.section("faults and bad input (issue 11)")
        for line in REPORT.table():
            terminalreporter.write_line(line)

