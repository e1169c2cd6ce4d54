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
import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp

from rtxrelay.backends.chatrtx.backend import ChatFunction, find_chat_function
from rtxrelay.backends.chatrtx.gradio_client import GradioApp, GradioQueueClient
from rtxrelay.backends.chatrtx.timeouts import Timeouts
from rtxrelay.core.errors import BackendError, BackendErrorKind

CHATRTX_PORT_RANGE = range(1024, 49001)


class Evidence(enum.IntEnum):
    """How sure we are that a Gradio app is Chat with RTX; candidates are ranked by it."""

    OTHER_APP = 0  # a Gradio app with no streaming chat function
    CHAT_FUNCTION = 1  # a chat function, but none of Chat with RTX's session checks
    SESSION_CHECK = 2  # Chat with RTX's shape: a chat function behind session checks
    REJECTS_NO_COOKIE = 3  # and the check refuses a request without the launch cookie


@dataclass(frozen=True)
class Found:
    base_url: str
    gradio_version: str
    protocol: str
    evidence: Evidence
    detail: str  # what was seen, for the operator

    @property
    def is_chatrtx(self) -> bool:
        return self.evidence >= Evidence.CHAT_FUNCTION


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
    found.sort(key=lambda f: (-f.evidence, f.base_url))
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
            return Found(base_url, app.version, app.protocol, Evidence.OTHER_APP,
                         "a Gradio app without a chat")
        evidence, seen = await _session_check(client, app, chat, timeout)
        return Found(base_url, app.version, app.protocol, evidence, f"{chat.label}; {seen}")
    return None


async def _session_check(client: GradioQueueClient, app: GradioApp, chat: ChatFunction,
                         timeout: float) -> tuple[Evidence, str]:
    """Run the app's first session check without a cookie: Chat with RTX refuses it."""
    if not chat.validators:
        return Evidence.CHAT_FUNCTION, "no session check, unlike Chat with RTX"
    try:
        async with asyncio.timeout(2 * timeout):
            async for _ in client.run(app, chat.validators[0], [],
                                      session_hash="rtxrelay-discover",
                                      trigger_id=chat.trigger_id):
                pass
    except BackendError as exc:
        if exc.kind is BackendErrorKind.SESSION_REJECTED:
            return Evidence.REJECTS_NO_COOKIE, "refuses a request without its launch cookie"
    except TimeoutError:
        pass
    return Evidence.SESSION_CHECK, "has Chat with RTX's session check"
