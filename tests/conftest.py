"""Suite-wide settings and the shared Chat with RTX replicas.

All tests share one event loop (pyproject sets the loop scope to "session") so a replica
server started once can serve every test that needs it; each starts in a few seconds.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest_asyncio

from tests.replica.launcher import Replica
from tests.replica.variants import VARIANTS

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
async def rtx_https() -> AsyncIterator[Replica]:
    async with Replica("4.26", https=True, token_delay=TOKEN_DELAY) as replica:
        yield replica
