"""Find a running Chat with RTX: its port changes at every launch.

Sweeping 48,000 ports is slow on Windows, where a connect to a closed loopback port takes about
2 s to fail. So we ask the OS which sockets are listening (psutil: GetExtendedTcpTable on
Windows, /proc on Linux) and probe only those with ``GET /config``, over http and https.
Only if the OS refuses to list sockets do we fall back to a bounded sweep of the range Chat with
RTX draws its port from.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp

from rtxrelay.backends.chatrtx.backend import find_chat_function
from rtxrelay.backends.chatrtx.gradio_client import GradioQueueClient, Timeouts
from rtxrelay.core.errors import BackendError

CHATRTX_PORT_RANGE = range(1024, 49001)


@dataclass(frozen=True)
class Found:
    base_url: str
    gradio_version: str
    protocol: str
    is_chatrtx: bool
    detail: str


def listening_loopback_ports() -> list[int] | None:
    """TCP ports listening on loopback or all interfaces; None if the OS won't tell."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError, OSError):
        return None
    ports: set[int] = set()
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr:
            continue
        try:
            address = ipaddress.ip_address(conn.laddr.ip)
        except ValueError:
            continue
        if address.is_loopback or address.is_unspecified:
            ports.add(int(conn.laddr.port))
    return sorted(ports)


async def discover(
    ports: Iterable[int] | None = None,
    *,
    host: str = "127.0.0.1",
    timeout: float = 1.5,
    concurrency: int = 64,
) -> list[Found]:
    """Probe ``ports`` (default: the listening ones) and return every Gradio app found."""
    candidates = list(ports) if ports is not None else listening_loopback_ports()
    if candidates is None:
        candidates = list(CHATRTX_PORT_RANGE)
    limit = asyncio.Semaphore(concurrency)
    found: list[Found] = []
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=False)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as http:

        async def probe(port: int) -> None:
            async with limit:
                for scheme in ("http", "https"):
                    result = await _probe(http, f"{scheme}://{host}:{port}", timeout)
                    if result is not None:
                        found.append(result)
                        return

        await asyncio.gather(*(probe(p) for p in candidates))
    found.sort(key=lambda f: (not f.is_chatrtx, f.base_url))
    return found


async def _probe(http: aiohttp.ClientSession, base_url: str, timeout: float) -> Found | None:
    client = GradioQueueClient(
        http,
        base_url,
        # Probing loopback only; certificates are checked when rtxrelay really connects.
        ssl_context=False,
        timeouts=Timeouts(connect=timeout, first_event=timeout),
    )
    with contextlib.suppress(BackendError, aiohttp.ClientError, TimeoutError, OSError):
        app = await client.fetch_config()
        try:
            chat = find_chat_function(app)
        except BackendError:
            return Found(base_url, app.version, app.protocol, False, "Gradio app without a chat")
        return Found(base_url, app.version, app.protocol, True, chat.label)
    return None
