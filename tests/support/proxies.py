"""Loopback proxies for tests: an HTTP CONNECT proxy, a SOCKS5 proxy, and a TLS front.

Both proxies are small asyncio servers on 127.0.0.1 that record every tunnel they carried
(the address the client asked for, and both ends of the connections), so a test can assert
that traffic really went through them. ``hosts`` maps names to addresses the way a proxy's
own resolver would: point a bot at a name under ``.invalid`` (RFC 2606: never resolves) that
only the proxy can map to the fake, and any request that bypasses the proxy fails instead of
passing unnoticed.

Each proxy takes optional ``credentials``: HTTP Basic in ``Proxy-Authorization`` (RFC 9110),
SOCKS5 username/password (RFC 1929). Clients read them from the proxy URL, so ``url`` carries
them. A client turned away (wrong credentials, an unsupported request) is listed in
``refused`` with the reason; so is anything else on the machine that probes a listening port
(``rtxrelay discover`` does), which is why tests assert on tunnels, not on ``refused``.

``TlsFront`` terminates TLS in front of a plain-HTTP fake: the real Bot API is HTTPS only, so
through an HTTP proxy its traffic is a CONNECT tunnel carrying TLS; an ``http://`` base URL
would make HTTP clients forward plain requests to the proxy instead (no tunnel at all).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import ssl
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Self

Address = tuple[str, int]
HANDSHAKE_TIMEOUT = 10.0  # a client that stalls mid-handshake is dropped, not waited for


@dataclass(frozen=True)
class Tunnel:
    """One connection a proxy carried to its destination."""

    host: str  # as the client asked for it: a name or an address
    port: int
    client: Address  # the client's end of its connection to the proxy
    upstream: Address  # the proxy's end of its connection onward


class _Refused(Exception):
    """The handshake ended with a refusal (already answered on the wire)."""


class Relay:
    """An asyncio server on 127.0.0.1 that pipes each accepted connection somewhere."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ssl: ssl.SSLContext | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        # Tunnels may still be open (keep-alive, a long poll): end them rather than wait. A
        # closed transport feeds EOF to its reader, so every handler returns on its own.
        for writer in list(self._writers):
            writer.close()
        if self._handlers:
            _done, stuck = await asyncio.wait(self._handlers, timeout=5.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, ssl.SSLError):
            pass  # a client that went away mid-tunnel
        except asyncio.CancelledError:
            # Only __aexit__ cancels a handler, and nothing awaits it but __aexit__. Returning
            # keeps Python 3.11's start_server callback from logging the cancellation as an
            # error (it calls task.exception() on a cancelled task; fixed in 3.12).
            pass
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _pipe(self, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    passing: Callable[[bytes, bool], bytes] | None = None) -> None:
        """Copy bytes both ways until either side closes, then close both. ``passing(data,
        outbound)`` sees each read (``outbound``: client to upstream) and returns what to
        pass on: a relay that watches or rewrites the traffic gives it."""
        self._writers.add(upstream[1])

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       outbound: bool) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while data := await source.read(65536):
                    sink.write(data if passing is None else passing(data, outbound))
                    await sink.drain()

        directions = [asyncio.create_task(copy(client[0], upstream[1], True)),
                      asyncio.create_task(copy(upstream[0], client[1], False))]
        try:
            await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for direction in directions:
                direction.cancel()
            await asyncio.gather(*directions, return_exceptions=True)
            self._writers.discard(upstream[1])
            upstream[1].close()


class _Proxy(Relay):
    scheme: ClassVar[str]

    def __init__(self, *, hosts: Mapping[str, str] | None = None,
                 credentials: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.hosts = dict(hosts or {})
        self.credentials = credentials
        self.tunnels: list[Tunnel] = []
        self.refused: list[str] = []

    @property
    def url(self) -> str:
        auth = f"{self.credentials[0]}:{self.credentials[1]}@" if self.credentials else ""
        return f"{self.scheme}://{auth}127.0.0.1:{self.port}"

    def tunnels_to(self, host: str, port: int) -> list[Tunnel]:
        return [t for t in self.tunnels if (t.host, t.port) == (host, port)]

    def _refuse(self, reason: str) -> _Refused:
        self.refused.append(reason)
        return _Refused(reason)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                host, port = await self._request(reader, writer)
                try:
                    upstream = await asyncio.open_connection(self.hosts.get(host, host), port)
                except OSError as exc:
                    await self._answer(writer, ok=False)
                    raise self._refuse(f"{host}:{port} unreachable: {exc}") from exc
        except _Refused:
            return
        except (TimeoutError, ValueError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            self.refused.append(f"handshake failed: {exc!r}")
            return
        tunnel = Tunnel(host, port, writer.get_extra_info("peername")[:2],
                        upstream[1].get_extra_info("sockname")[:2])
        try:
            await self._answer(writer, ok=True)
        except BaseException:
            upstream[1].close()
            raise
        self.tunnels.append(tunnel)
        await self._pipe((reader, writer), upstream)

    async def _request(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> Address:
        """Read the client's handshake up to where it names its destination."""
        raise NotImplementedError

    async def _answer(self, writer: asyncio.StreamWriter, *, ok: bool) -> None:
        """Tell the client whether its destination was reached."""
        raise NotImplementedError


class HttpConnectProxy(_Proxy):
    """An HTTP proxy that tunnels with ``CONNECT host:port`` (RFC 9110 §9.3.6), as clients do
    for ``https://`` and ``wss://`` destinations. It does not forward plain requests
    (``GET http://…``): those are answered 405 and listed in ``refused``."""

    scheme = "http"

    async def _request(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> Address:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in header_lines if line)}
        if method != "CONNECT":
            await _send(writer, b"HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            raise self._refuse(f"{method} {target}: only CONNECT is supported")
        if self.credentials is not None:
            user, password = self.credentials
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if headers.get("proxy-authorization") != expected:
                await _send(writer, b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                    b'Proxy-Authenticate: Basic realm="test"\r\n'
                                    b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                raise self._refuse(f"CONNECT {target}: wrong or missing credentials")
        host, _, port = target.rpartition(":")
        return host.strip("[]"), int(port)

    async def _answer(self, writer: asyncio.StreamWriter, *, ok: bool) -> None:
        await _send(writer, b"HTTP/1.1 200 Connection established\r\n\r\n" if ok else
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class Socks5Proxy(_Proxy):
    """A SOCKS5 proxy (RFC 1928), CONNECT only; destinations may be names (resolved here, via
    ``hosts`` first), IPv4 or IPv6 addresses."""

    scheme = "socks5"
    NO_AUTH, USER_PASSWORD, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
    CONNECT = 0x01
    IPV4, DOMAIN, IPV6 = 0x01, 0x03, 0x04
    SUCCEEDED, CONNECTION_REFUSED, COMMAND_NOT_SUPPORTED = 0x00, 0x05, 0x07

    async def _request(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> Address:
        version, count = await reader.readexactly(2)
        if version != 5:
            raise self._refuse(f"SOCKS version {version}")
        methods = await reader.readexactly(count)
        wanted = self.NO_AUTH if self.credentials is None else self.USER_PASSWORD
        if wanted not in methods:
            await _send(writer, bytes([5, self.NO_ACCEPTABLE]))
            raise self._refuse(f"no acceptable method among {list(methods)}")
        await _send(writer, bytes([5, wanted]))
        if self.credentials is not None:
            await self._authenticate(reader, writer)

        _version, command, _reserved, kind = await reader.readexactly(4)
        if kind == self.IPV4:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif kind == self.IPV6:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif kind == self.DOMAIN:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode("idna")
        else:
            raise self._refuse(f"address type {kind}")
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        if command != self.CONNECT:
            await _send(writer, self._reply(self.COMMAND_NOT_SUPPORTED))
            raise self._refuse(f"command {command} to {host}:{port}")
        return host, port

    async def _authenticate(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        _version, length = await reader.readexactly(2)  # RFC 1929: version 1
        user = (await reader.readexactly(length)).decode()
        password = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        if (user, password) != self.credentials:
            await _send(writer, bytes([1, 1]))
            raise self._refuse(f"wrong credentials for user {user!r}")
        await _send(writer, bytes([1, 0]))

    async def _answer(self, writer: asyncio.StreamWriter, *, ok: bool) -> None:
        await _send(writer, self._reply(self.SUCCEEDED if ok else self.CONNECTION_REFUSED))

    def _reply(self, status: int) -> bytes:
        # The bound address is unused by clients here; 0.0.0.0:0 is what many servers send.
        return bytes([5, status, 0, self.IPV4]) + bytes(4) + struct.pack("!H", 0)


class TlsFront(Relay):
    """TLS outside, plain TCP to ``127.0.0.1:backend_port`` inside: an HTTPS face for a fake
    that speaks plain HTTP."""

    def __init__(self, backend_port: int, server_ssl: ssl.SSLContext) -> None:
        super().__init__()
        self._backend_port = backend_port
        self._ssl = server_ssl

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await asyncio.open_connection("127.0.0.1", self._backend_port)
        await self._pipe((reader, writer), upstream)


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()

