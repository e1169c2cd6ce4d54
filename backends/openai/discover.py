"""Find the OpenAI-compatible servers listening on this PC: ``GET /v1/models`` on each
listening loopback port (the same list ``backends.discover`` probes for Chat with RTX), and
the product behind each where it can be told (``products.identify``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp

from rtxrelay.core.errors import BackendError, BackendErrorKind

from .client import OpenAiClient
from .products import Product, ProductKind, identify
from .settings import OpenAiTimeouts, parse_base_url


@dataclass(frozen=True)
class FoundServer:
    base_url: str  # what OPENAI_BASE_URL should say
    product: Product
    models: tuple[str, ...]
    needs_key: bool = False  # it answered 401: OPENAI_API_KEY is needed too

    @property
    def summary(self) -> str:
        if self.needs_key:
            return f"{self.product.label}; needs an API key (OPENAI_API_KEY)"
        shown = ", ".join(self.models[:5]) + (" …" if len(self.models) > 5 else "")
        return f"{self.product.label}; models: {shown or 'none loaded'}"


async def discover_openai(ports: Iterable[int], *, host: str = "127.0.0.1",
                          timeout: float = 1.5, concurrency: int = 64) -> list[FoundServer]:
    limit = asyncio.Semaphore(concurrency)
    found: list[FoundServer] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as http:

        async def probe(port: int) -> None:
            async with limit:
                result = await _probe(http, f"http://{host}:{port}/v1", timeout)
                if result is not None:
                    found.append(result)

        await asyncio.gather(*(probe(p) for p in ports))
    # ChatRTX's own first, then by port.
    found.sort(key=lambda f: (f.product.kind not in (ProductKind.CHATRTX_NIM,
                                                     ProductKind.CHATRTX_BRIDGE), f.base_url))
    return found


async def _probe(http: aiohttp.ClientSession, base_url: str, timeout: float) -> FoundServer | None:
    client = OpenAiClient(http, parse_base_url(base_url), api_key=None,
                          timeouts=OpenAiTimeouts(connect=timeout), service="the server")
    with contextlib.suppress(BackendError, aiohttp.ClientError, TimeoutError, OSError):
        async with asyncio.timeout(4 * timeout):
            try:
                models = await client.models()
            except BackendError as exc:
                if exc.kind is not BackendErrorKind.AUTH:
                    return None
                return FoundServer(base_url, await identify(client, []), (), needs_key=True)
            return FoundServer(base_url, await identify(client, models), tuple(models))
    return None
