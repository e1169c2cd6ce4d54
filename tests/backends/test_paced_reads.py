"""Reads on the consumer's clock (backends/paced_reads.py) over a real loopback socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from rtxrelay.backends.paced_reads import BACKLOG_READ, READ_SIZE, PacedReads


class Feed:
    """A streamed response whose writes the test makes, one at a time."""

    def __init__(self) -> None:
        self.parts: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.written = asyncio.Event()  # set after each write has been handed to the socket

    async def handler(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while (part := await self.parts.get()) is not None:
            await response.write(part)
            self.written.set()
        await response.write_eof()
        return response

    async def write(self, part: bytes) -> None:
        self.written.clear()
        await self.parts.put(part)
        await asyncio.wait_for(self.written.wait(), 10)


@pytest.fixture
async def feed() -> AsyncIterator[tuple[Feed, str]]:
    source = Feed()
    app = web.Application()
    app.router.add_get("/stream", source.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield source, f"http://127.0.0.1:{port}/stream"
    finally:
        await source.parts.put(None)
        await runner.cleanup()


def reading(paced: PacedReads) -> bool:
    transport = paced._transport
    assert isinstance(transport, asyncio.Transport)
    return transport.is_reading()


async def test_a_hold_stops_reading_the_socket_until_its_window_ends(
        feed: tuple[Feed, str]) -> None:
    source, url = feed
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        paced = PacedReads(response, 30.0)
        await source.write(b"first ")
        assert await asyncio.wait_for(response.content.readany(), 10) == b"first "
        paced.hold(6, events=2)
        assert not reading(paced), "held: the socket is not read, the kernel keeps what comes"
        await source.write(b"second ")
        await source.write(b"third")
        assert not response.content.is_eof() and response.content.total_bytes == 6
        paced.close()  # what the end of a stream does: never leave the socket paused
        assert reading(paced)
        taken = b""
        while len(taken) < len(b"second third"):
            taken += await asyncio.wait_for(response.content.readany(), 10)
        assert taken == b"second third"


async def test_the_read_after_a_hold_waits_out_the_window(feed: tuple[Feed, str]) -> None:
    source, url = feed
    window = 0.3
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        paced = PacedReads(response, window)
        await source.write(b"a")
        await asyncio.wait_for(response.content.readany(), 10)
        held_at = loop.time()
        paced.hold(1, events=2)
        await source.write(b"b")
        await source.write(b"c")
        both_in_socket_while_held = not reading(paced)
        taken = await asyncio.wait_for(response.content.readany(), 10)
        waited = loop.time() - held_at
        if both_in_socket_while_held:  # (always, unless this process stalled for a window)
            assert taken == b"bc", "what came during the window is taken in one read"
        else:
            while len(taken) < 2:
                taken += await asyncio.wait_for(response.content.readany(), 10)
            assert taken == b"bc"
        # A timer may fire up to one clock tick early (about 16 ms on Windows).
        assert waited >= window - 0.02
        assert reading(paced), "the window ended: reading resumed by itself"
        paced.close()


async def test_no_hold_without_a_window_or_after_a_backlog(feed: tuple[Feed, str]) -> None:
    source, url = feed
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        await source.write(b"x")
        await asyncio.wait_for(response.content.readany(), 10)
        unpaced = PacedReads(response, 0.0)
        unpaced.hold(1, events=5)
        assert reading(unpaced) and unpaced.holds == 0
        paced = PacedReads(response, 30.0)
        paced.hold(BACKLOG_READ, events=5)  # a big read means more is waiting: take it at once
        assert reading(paced) and paced.holds == 0
        paced.hold(10, events=2)
        paced.hold(10, events=2)  # already held: one window, not two
        assert not reading(paced) and paced.holds == 1
        paced.close()
        paced.close()
        assert reading(paced)


async def test_a_hold_is_taken_only_while_a_window_gathers_tokens(
        feed: tuple[Feed, str]) -> None:
    """A hold costs a wake-up at its end: it is taken while the stream's pace since its first
    text fits more than one event in a window, not when tokens come slower than that."""
    source, url = feed
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        await source.write(b"x")
        await asyncio.wait_for(response.content.readany(), 10)
        slow = PacedReads(response, 0.01)
        slow.hold(10, events=1)  # the first text: its pace is not known, so held
        assert slow.holds == 1
        slow.close()
        await asyncio.sleep(0.05)  # one event in (at least) five windows: too slow to gather
        slow.hold(10, events=1)
        assert reading(slow) and slow.holds == 1
        fast = PacedReads(response, 30.0)
        fast.hold(10, events=1)
        fast.close()
        fast.hold(10, events=3)  # three events in no time: a window gathers plenty
        assert not reading(fast) and fast.holds == 2
        fast.close()


async def test_a_read_takes_at_most_read_size_and_loses_nothing(feed: tuple[Feed, str]) -> None:
    """asyncio's selector transports would recv up to 256 KiB into a new object at every read,
    paid in fresh pages; a paced response's reads take at most READ_SIZE."""
    source, url = feed
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        paced = PacedReads(response, 0.0)
        transport = paced._transport
        if not hasattr(transport, "max_size"):
            pytest.skip("this event loop's transport reads into a buffer of its own")
        assert transport.max_size == READ_SIZE  # type: ignore[union-attr]
        assert response.connection is not None and response.connection.protocol is not None
        protocol = response.connection.protocol
        received = protocol.data_received
        sizes: list[int] = []

        def recording(data: bytes) -> None:
            sizes.append(len(data))
            received(data)

        protocol.data_received = recording  # type: ignore[method-assign]
        part = bytes(range(256)) * 1024  # 256 KiB in one write
        await source.write(part)
        taken = b""
        while len(taken) < len(part):
            taken += await asyncio.wait_for(response.content.readany(), 10)
        assert taken == part
        assert sizes and max(sizes) <= READ_SIZE and len(sizes) >= len(part) // READ_SIZE
        paced.close()
