"""Discord ``/ask``: time from INTERACTION_CREATE to the deferral, with 1,000 asks open at once.

    .venv/bin/python bench/bench_discord_ack.py            # full: ~7 min
    .venv/bin/python bench/bench_discord_ack.py --quick    # smoke: 20 asks, 2 scenarios (~13 s)

Discord drops an interaction that is not acknowledged within 3 s (a late callback is a 404,
code 10062). The issue's goal: the deferral goes out < 100 ms after INTERACTION_CREATE, at
1,000 concurrent asks. Two ways to get 1,000 asks open at once:

- **at once** (N = 1, 100, 1,000): every INTERACTION_CREATE back to back, the worst case;
- **paced** (1,000 at 500, 250 and 100 asks/s): asks keep arriving while the earlier ones are
  still open, in line behind the one job Chat with RTX runs at a time (each answer takes ~5 s),
  so the last arrivals meet ~1,000 open asks, their queue-position edits and a streaming answer.

Latency is measured at both ends: **sent** = the bot wrote its deferral to the socket (an
aiohttp trace; both processes read the same system-wide monotonic clock), the bot's own part;
**accepted** = the fake answered it, which adds the fake's own work (real Discord's is network
and its servers). The fake Discord (tests/fakes/discord_api.py: gateway and REST, HTTPS and
WSS with a throwaway CA like the real one's TLS; ``--plain`` for HTTP) runs in a child process
of its own (this file with ``--serve-fake``, driven through a few JSON control routes), so the
measuring process holds only what a user's machine runs: the real discord.py and one of
three bots:

- **rtxrelay**: ``bots/discord_bot.DiscordBot`` as shipped: ``_on_ask`` defers first, then
  persists the question, queues the job and streams through ``StreamingReply``; its REST pool
  is bounded (``REST_CONNECTIONS`` keep-alive connections);
- **unbounded pool**: the same bot on discord.py's default pool (``TCPConnector(limit=0)``):
  a burst opens a connection, and a TLS handshake, per concurrent request;
- **work-first**: the common mistake, a ``DiscordBot`` subclass whose ``_on_ask`` does its own
  work before deferring: it writes the question to SQLite and waits for the conversation's
  first update (the queue position, or "started") — only then ``defer()``. This is the mildest
  form of the mistake: a bot that waited for the first *text* would miss every queued ask.

All share everything else: a synthetic backend that streams ~600 chars at ~30 tokens/s,
``max_concurrent_jobs`` = 1 like Chat with RTX, SQLite on disk, and the process set-up of
``rtxrelay run`` (``freeze_startup_objects``). Per (bot, scenario, run): a fresh fake process,
store and bot; one uncounted warm-up ask; then the asks of N distinct members. Once every ask
has had its callback (or Discord's deadline has passed for all) and every ask is in line, the
bot is stopped and its shutdown timed (``--stop-at-once`` skips the wait for "in line"). The
bots take turns going first. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import logging
import math
import os
import platform
import pstats
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

THIS_FILE = Path(__file__).resolve()
BENCH_DIR = THIS_FILE.parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:  # the fake Discord lives in tests/fakes
    sys.path.insert(0, str(REPO_DIR))

import aiohttp  # noqa: E402
import discord  # noqa: E402
import discord.gateway  # noqa: E402
import discord.http  # noqa: E402
import trustme  # noqa: E402
import yarl  # noqa: E402
from _table import fmt, percentile, print_table, ratio  # noqa: E402
from aiohttp import web  # noqa: E402

from rtxrelay.app.runner import freeze_startup_objects  # noqa: E402
from rtxrelay.bots.discord_bot import (  # noqa: E402
    PROFILE,
    DiscordBot,
    DiscordSettings,
    rest_connector,
)
from rtxrelay.core.backend import (  # noqa: E402
    BackendInfo,
    BackendUpdate,
    Done,
    Exchange,
    Started,
    TextSoFar,
)
from rtxrelay.core.conversation import (  # noqa: E402
    ConversationLimits,
    ConversationService,
    ReplyUpdate,
)
from rtxrelay.core.store import ConversationKey  # noqa: E402
from rtxrelay.core.streaming import StreamingReply  # noqa: E402
from rtxrelay.storage.sqlite_store import SqliteStore  # noqa: E402
from tests.fakes import discord_payloads as payloads  # noqa: E402
from tests.fakes.discord_api import FakeDiscord, InteractionRecord  # noqa: E402

OURS = "rtxrelay"
UNBOUNDED = "unbounded pool"
WORK_FIRST = "work-first"
VARIANTS = (OURS, UNBOUNDED, WORK_FIRST)
HEADER = ("metric", OURS, UNBOUNDED, WORK_FIRST, "unbounded / rtxrelay",
          "work-first / rtxrelay")
DEFAULT_SIZES = (1, 100, 1_000)
DEFAULT_RATES = (500.0, 250.0, 100.0)  # asks/s, for the paced runs at the largest size
BURST = 0.0  # rate of a burst: every INTERACTION_CREATE back to back
QUICK_SIZE = 20
QUICK_RATE = 200.0
GOAL_MS = 100.0
TOKEN = "bench-discord-token"
DEFERRED = 5  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "rtx_relay is thinking…"
QUESTION = "How do tensor cores speed up inference?"
ANSWER_TOKEN = "GPU "  # ~4 chars a token, as Chat with RTX's models stream


# -- the synthetic Chat with RTX -----------------------------------------------------------------


class SyntheticBackend:
    """A local model's pace: ``chars`` of text at ``tokens_per_second``, one token a step.

    Only its pace matters here: it keeps the one job slot busy and streams edits for the
    answer being written while the burst is acknowledged."""

    def __init__(self, chars: int, tokens_per_second: float) -> None:
        self._tokens = [ANSWER_TOKEN] * max(1, chars // len(ANSWER_TOKEN))
        self._step = 1.0 / tokens_per_second

    async def stream_answer(
        self, question: str, history: Sequence[Exchange], *, session: str,
        read_window: float = 0.0,
    ) -> AsyncIterator[BackendUpdate]:
        yield Started()
        text = ""
        for token in self._tokens:
            await asyncio.sleep(self._step)
            text += token
            yield TextSoFar(text, token)
        yield Done(text.strip(), raw=text)

    async def probe(self) -> BackendInfo:
        return BackendInfo("bench://synthetic", "-", "-", "synthetic")


# -- the alternative: work first, acknowledge after ------------------------------------------------


class WorkFirstBot(DiscordBot):
    """``/ask`` that persists and queues before deferring; the rest is rtxrelay's own code."""

    async def _on_ask(self, interaction: discord.Interaction, question: str) -> None:
        key = self._key(interaction.user, interaction.guild, interaction.channel_id)
        # Same admission as rtxrelay (every asker here is a new member, so none is refused).
        if await self._refused(interaction, key, interaction.user.id):
            return
        # Reaches into Replies (bench only) to stream an answer whose first update it already
        # consumed, tracked and budgeted like the shipped bot's.
        replies = self._replies
        with replies._inflight.track() as stop:
            updates = self._service.ask(key, question, stop=stop)
            # The mistake: SQLite reads and writes and the job queue run before the deferral.
            first = await anext(updates)
            deferred = True
            try:
                await interaction.response.defer(thinking=True)
            except discord.NotFound:
                deferred = False  # missed Discord's 3 s: answer in the channel, like rtxrelay
            channel = interaction.channel
            if channel is None or not isinstance(channel, discord.abc.Messageable):
                await updates.aclose()
                return
            sink = self._sink(channel, interaction if deferred else None,
                              original_pending=deferred, reply_to=None,
                              asker=interaction.user.id)
            reply = StreamingReply(sink, PROFILE, clock=self._clock, placeholder_shown=deferred,
                                   shared_budget=replies.bot_wide_budget)
            await reply.run(_prepend(first, updates))


async def _prepend(
    first: ReplyUpdate, rest: AsyncIterator[ReplyUpdate]
) -> AsyncIterator[ReplyUpdate]:
    yield first
    async with contextlib.aclosing(rest):  # type: ignore[type-var]
        async for update in rest:
            yield update


BOTS: dict[str, type[DiscordBot]] = {OURS: DiscordBot, UNBOUNDED: DiscordBot,
                                     WORK_FIRST: WorkFirstBot}


# -- what one run measures ---------------------------------------------------------------------


@dataclass
class Run:
    variant: str
    size: int  # asks in the run (pooled: summed over the runs)
    rate: float = BURST  # asks/s dispatched; BURST: all back to back
    rep: int = 0
    # INTERACTION_CREATE -> the bot wrote its deferral to the socket (both clocks are the
    # system-wide monotonic one): the bot's own part. inf = no callback before the stop.
    sent_ms: list[float] = field(default_factory=list)
    # INTERACTION_CREATE -> the fake accepted the deferral: adds the fake's own time.
    latencies_ms: list[float] = field(default_factory=list)
    deferred_in_time: int = 0  # callback 200 with type 5
    missed: int = 0  # callback 404 (10062): after Discord's 3 s
    no_callback: int = 0
    other: int = 0  # any other outcome (wrong type, 400, ...)
    dispatch_wall: float = math.nan  # INTERACTION_CREATE for all N, s
    last_callback: float = math.nan  # first dispatch -> last callback, s
    cpu_s: float = math.nan  # the bot process's CPU over the same window
    fake_cpu_s: float = math.nan  # the fake Discord process's CPU over the same window
    rest_calls: int = 0  # REST requests the fake served in that window, callbacks included
    connections: int = 0  # new client connections (TLS handshakes) the fake saw in that window
    in_line: int = 0  # asks whose conversation had started when the bot was stopped
    all_in_line: float = math.nan  # first dispatch -> every ask in line, s
    shutdown_s: float = math.nan
    left_running: int = 0  # replies still tracked after shutdown
    warnings: Counter[str] = field(default_factory=Counter)
    error: str | None = None

    @property
    def all_deferred(self) -> bool:
        return self.error is None and self.deferred_in_time == self.size


class LogTally(logging.Handler):
    """Counts warnings per message template instead of printing 1,000 identical lines."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if "voice will NOT be supported" in str(record.msg):
            return  # discord.py's note about optional voice packages: not about this bench
        self.counts[f"{record.name}: {record.msg}"[:140]] += 1


# -- the fake Discord, in a process of its own ----------------------------------------------------
# Real Discord is not on the user's machine: the fake runs in a child process (this file with
# --serve-fake), with its own event loop and GIL, so the measuring process holds only the bot.
# Next to the fake's own port, the child serves a few control routes for the bench (JSON):
#   GET  /bench/state        identified (READY sent), synced command names
#   POST /bench/members?n=N  N new server members -> their user ids
#   POST /bench/burst        INTERACTION_CREATE for each given user, back to back; answers once
#                            every ask had its callback or Discord's deadline (+ grace) passed
#   POST /bench/close        closes the fake -> its internal errors, if any
# The child exits when its stdin closes (the bench closes it; so does the bench's death).

SERVE_FAKE = "--serve-fake"
CHILD_START_TIMEOUT = 30.0  # the child's imports and both listening sockets
CONTROL_TIMEOUT = 15.0  # any control request but the burst
BURST_DISPATCH_TIMEOUT = 120.0  # the fake sending N INTERACTION_CREATE frames


def callback_arrivals(fake: FakeDiscord) -> dict[str, float]:
    """Interaction id -> when its first callback request reached the fake (404s included)."""
    arrivals: dict[str, float] = {}
    for request in fake.requests:
        if request.route.endswith("/callback"):
            iid = request.path.split("/")[2]
            arrivals.setdefault(iid, request.time)
    return arrivals


async def _wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            # Polling: what we wait on is the bot's and the fake's state, which has no event.
            while not check():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}") from None


class FakeControl:
    """The child's side: the fake Discord (HTTPS and WSS, like Discord, unless ``plain``) and
    the bench's control routes."""

    def __init__(self, plain: bool) -> None:
        self.ca_pem: str | None = None
        server_ssl = None
        if not plain:  # a throwaway CA the bot trusts; trustme is the well-kept tool for it
            ca = trustme.CA()
            server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
            self.ca_pem = ca.cert_pem.bytes().decode()
        self.fake = FakeDiscord(token=TOKEN, clock=time.monotonic, ssl_context=server_ssl)
        self.users: dict[str, payloads.Json] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/bench/state", self.state)
        app.router.add_post("/bench/members", self.members)
        app.router.add_post("/bench/burst", self.burst)
        app.router.add_post("/bench/close", self.close)

    async def state(self, request: web.Request) -> web.Response:
        fake = self.fake
        return web.json_response({
            "identified": fake._session_id is not None and fake._live is not None,
            "commands": sorted({name for _guild, name in fake.commands}),
        })

    async def members(self, request: web.Request) -> web.Response:
        users = [self.fake.add_member(f"asker{len(self.users) + i}")
                 for i in range(int(request.query["n"]))]
        self.users.update((u["id"], u) for u in users)
        return web.json_response({"users": [u["id"] for u in users]})

    async def burst(self, request: web.Request) -> web.Response:
        """Body: users (ids), question, numbered (append " #i"), grace (s past the deadline),
        rate (asks/s on a fixed schedule; 0: back to back)."""
        body = await request.json()
        fake, users = self.fake, [self.users[uid] for uid in body["users"]]
        channels = list(fake.channels)
        gc.collect()
        requests_before = len(fake.requests)
        cpu0, started = time.process_time(), time.monotonic()
        records: list[InteractionRecord] = []
        rate = float(body.get("rate", BURST))
        async with asyncio.timeout(BURST_DISPATCH_TIMEOUT):
            for i, user in enumerate(users):  # no await between them but the websocket send
                if rate > 0:  # on schedule from the start: a late dispatch does not shift the rest
                    await asyncio.sleep(started + i / rate - time.monotonic())
                question = f"{body['question']} #{i}" if body["numbered"] else body["question"]
                records.append(await fake.dispatch_slash_command(
                    "ask", {"question": question}, user=user,
                    channel=channels[i % len(channels)]))
        dispatched = time.monotonic()
        # Until every ask had its callback, or Discord's deadline (+ grace) passed for all.
        give_up = (max(r.created_at for r in records) + fake.ack_deadline + float(body["grace"])
                   - time.monotonic())
        with contextlib.suppress(TimeoutError):  # the asks without a callback are counted
            await _wait_for(lambda: all(r.callback_statuses for r in records), give_up,
                            "callbacks")
        cpu_s = time.process_time() - cpu0
        rest_calls = len(fake.requests) - requests_before
        known = {r.peer for r in fake.requests[:requests_before]}
        connections = len({r.peer for r in fake.requests[requests_before:]} - known)
        arrivals = callback_arrivals(fake)
        return web.json_response({
            "started": started, "dispatched": dispatched, "cpu_s": cpu_s,
            "rest_calls": rest_calls, "connections": connections,
            "records": [{"id": r.id, "created_at": r.created_at, "acked_at": r.acked_at,
                         "response_type": r.response_type,
                         "callback_statuses": r.callback_statuses,
                         "first_callback": arrivals.get(r.id)} for r in records],
        })

    async def close(self, request: web.Request) -> web.Response:
        errors: list[str] = []
        try:  # re-raises the fake's own internal errors, if any
            await asyncio.wait_for(self.fake.__aexit__(None, None, None), 10)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        return web.json_response({"errors": errors})


async def _serve_fake(plain: bool) -> None:
    loop = asyncio.get_running_loop()
    control = FakeControl(plain)
    await control.fake.__aenter__()
    app = web.Application()
    control.routes(app)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        stdin_closed = asyncio.Event()

        def watch_stdin() -> None:  # a thread: reading a pipe is not portable in asyncio
            with contextlib.suppress(Exception):
                sys.stdin.buffer.read()
            with contextlib.suppress(RuntimeError):  # the loop is already gone
                loop.call_soon_threadsafe(stdin_closed.set)

        threading.Thread(target=watch_stdin, daemon=True).start()
        print(json.dumps({"fake_port": control.fake.port, "control_port": runner.addresses[0][1],
                          "guild_id": control.fake.guild_id, "ca_pem": control.ca_pem}),
              flush=True)
        await stdin_closed.wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(control.fake.__aexit__(None, None, None), 10)  # idempotent
        await runner.cleanup()


def serve_fake(plain: bool) -> int:
    """The child's entry point (``--serve-fake``): prints its ports as one JSON line."""
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_serve_fake(plain))
    return 0


class FakeProcess:
    """The bench's side: starts the child, talks to its control routes, always ends it."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.fake_port = 0
        self.guild_id = ""
        self.client_ssl: ssl.SSLContext | None = None  # trusts the fake's throwaway CA

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(THIS_FILE), SERVE_FAKE, *(["--plain"] if self.plain else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), CHILD_START_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"the fake Discord process did not start within "
                               f"{CHILD_START_TIMEOUT:g} s") from None
        if not line:
            raise RuntimeError(f"the fake Discord process exited at start "
                               f"(status {await self.proc.wait()})")
        hello = json.loads(line)
        self.fake_port, self.guild_id = int(hello["fake_port"]), str(hello["guild_id"])
        if hello["ca_pem"]:
            self.client_ssl = ssl.create_default_context(cadata=hello["ca_pem"])
        self.session = aiohttp.ClientSession(f"http://127.0.0.1:{hello['control_port']}")

    @property
    def base_url(self) -> str:
        scheme = "http" if self.client_ssl is None else "https"
        return f"{scheme}://127.0.0.1:{self.fake_port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"{'ws' if self.client_ssl is None else 'wss'}://127.0.0.1:{self.fake_port}/"

    async def _call(self, method: str, path: str, timeout: float = CONTROL_TIMEOUT,
                    **kwargs: Any) -> bytes:
        assert self.session is not None
        async with self.session.request(method, path, timeout=aiohttp.ClientTimeout(timeout),
                                        **kwargs) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"fake Discord control {path}: {resp.status} "
                                   f"{body[:300]!r}")
            return body

    async def state(self) -> dict[str, Any]:
        return json.loads(await self._call("GET", "/bench/state"))

    async def add_members(self, count: int) -> list[str]:
        body = await self._call("POST", "/bench/members", params={"n": str(count)})
        return json.loads(body)["users"]

    async def burst_raw(self, users: list[str], question: str, *, numbered: bool,
                        grace: float, rate: float = BURST) -> bytes:
        """The burst's answer, unparsed (the caller stops its CPU clock before parsing)."""
        timeout = BURST_DISPATCH_TIMEOUT + 3.0 + grace + 30.0  # the child bounds it first
        return await self._call("POST", "/bench/burst", timeout, json={
            "users": users, "question": question, "numbered": numbered, "grace": grace,
            "rate": rate})

    async def close(self) -> list[str]:
        """Close the fake (its internal errors, if any), then end the child."""
        try:
            return json.loads(await self._call("POST", "/bench/close"))["errors"]
        finally:
            await self.end()

    async def end(self, timeout: float = 10.0) -> None:
        """Idempotent: closes stdin (the child exits), kills it if it lingers."""
        if self.session is not None:
            await self.session.close()
            self.session = None
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except BaseException:  # it lingers (or we are cancelled): kill it, never leave it
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout)
            if not isinstance(sys.exc_info()[1], TimeoutError):
                raise


# -- one run: fresh fake (process), store and bot ------------------------------------------------


def point_discord_py_at(fake: FakeProcess) -> None:
    # As tests/fakes/discord_api.point_discord_py_at, without pytest's monkeypatch.
    discord.http.Route.BASE = fake.base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)


class SentTimes:
    """When the bot wrote each interaction callback to its socket, by interaction id: an
    aiohttp trace (discord.py's ``http_trace``) on the first body chunk, which aiohttp sends
    together with the buffered headers."""

    def __init__(self) -> None:
        self.by_interaction: dict[str, float] = {}
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_chunk_sent.append(self._chunk_sent)

    async def _chunk_sent(self, session: aiohttp.ClientSession, context: Any,
                          params: aiohttp.TraceRequestChunkSentParams) -> None:
        parts = params.url.path.split("/")  # /api/v10/interactions/{id}/{token}/callback
        if parts[-1] == "callback":
            self.by_interaction.setdefault(parts[-3], time.monotonic())


def connector_for(variant: str, fake: FakeProcess) -> aiohttp.TCPConnector:
    """rtxrelay's bounded pool, or discord.py's own default (``TCPConnector(limit=0)``,
    discord/http.py), both trusting the fake's CA."""
    tls: ssl.SSLContext | bool = fake.client_ssl or True
    if variant == UNBOUNDED:
        return aiohttp.TCPConnector(limit=0, ssl=tls)
    return rest_connector(ssl=tls)


async def start_bot(variant: str, fake: FakeProcess, service: ConversationService,
                    sent: SentTimes) -> tuple[DiscordBot, asyncio.Event, asyncio.Task[None]]:
    bot = BOTS[variant](service, DiscordSettings(token=TOKEN), clock=time.monotonic,
                        client_options={"guild_ready_timeout": 0.05,
                                        "connector": connector_for(variant, fake),
                                        "http_trace": sent.trace})

    async def no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
        return None  # discord.py waits 5 s before a re-IDENTIFY; not what is measured

    bot.client.before_identify_hook = no_identify_delay  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(bot.run(stop))
    try:
        async with asyncio.timeout(10):
            while not task.done():
                if bot.client.is_ready():
                    state = await fake.state()
                    if state["identified"] and "ask" in state["commands"]:
                        break
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError("timed out after 10 s waiting for the bot to connect and sync /ask"
                           ) from None
    if task.done():
        task.result()  # it died: say why
        raise RuntimeError("the bot stopped before the burst")
    return bot, stop, task


async def warm_up(fake: FakeProcess, bot: DiscordBot, service: ConversationService) -> None:
    """One uncounted ask (first-use costs: imports, SQLite pages, connections), then stop its
    answer so the burst meets an idle bot."""
    (uid,) = await fake.add_members(1)
    (rec,) = json.loads(await fake.burst_raw([uid], "warm-up", numbered=False,
                                             grace=1.0))["records"]
    if rec["acked_at"] is None:
        raise RuntimeError(f"the warm-up ask was not acknowledged: {rec['callback_statuses']}")
    key = ConversationKey("discord", f"guild-{fake.guild_id}", uid)
    await _wait_for(lambda: service.is_busy(key), 10, "the warm-up answer to start")
    service.cancel(key)
    await _wait_for(lambda: not bot.answers_in_flight, 10, "the warm-up answer to stop")


async def settle(service: ConversationService, store: SqliteStore,
                 keys: list[ConversationKey], timeout: float) -> int:
    """Until every ask's conversation has started (it is in line: its queue position shows)
    or already ended; return how many had. Before that, ``finish_replies`` cannot stop a reply:
    it cancels through ``ConversationService.cancel``, which only knows conversations already
    running."""
    seen: set[ConversationKey] = set()
    stored: set[ConversationKey] = set()  # paced runs: the first answers end before we look

    async def look() -> bool:
        seen.update(k for k in keys if k not in seen and service.is_busy(k))
        for key in [k for k in keys if k not in seen and k not in stored][:20]:
            if await store.turns_for_key(str(key)):  # asked, and maybe answered already
                stored.add(key)
        return len(seen | stored) == len(keys)

    deadline = time.monotonic() + timeout
    # Polling: what we wait on is the bot's state, which has no event.
    while not await look() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return len(seen | stored)


def score(run: Run, records: list[dict[str, Any]], sent: dict[str, float]) -> float:
    """Fill in the outcomes; return when the last callback arrived (fake's clock, nan if none).
    Times are ``time.monotonic`` of the fake's process and (``sent``) of the bot's: the same
    system-wide clock on Linux, Windows and macOS."""
    last = math.nan
    for rec in records:
        run.sent_ms.append((sent.get(rec["id"], math.inf) - rec["created_at"]) * 1000)
        # When Discord accepted the acknowledgement; else when a late one (404) came, if any.
        arrived = rec["acked_at"] if rec["acked_at"] is not None else rec["first_callback"]
        arrived = math.inf if arrived is None else float(arrived)
        run.latencies_ms.append((arrived - rec["created_at"]) * 1000)
        if math.isfinite(arrived):
            last = arrived if math.isnan(last) else max(last, arrived)
        statuses: list[int] = rec["callback_statuses"]
        if not statuses:
            run.no_callback += 1
        elif statuses[0] == 200 and rec["response_type"] == DEFERRED:
            run.deferred_in_time += 1
        elif statuses[0] == 404:
            run.missed += 1
        else:
            run.other += 1
    return last


async def stop_bot(run: Run, bot: DiscordBot, stop: asyncio.Event, task: asyncio.Task[None],
                   timeout: float) -> None:
    """Stop with every queued reply still in line: finish_replies ends each as 'Stopped'."""
    started = time.monotonic()
    stop.set()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        run.error = f"shutdown took longer than {timeout:g} s"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 10)
    except Exception as exc:  # the bot died: report it, keep the other runs
        run.error = f"bot failed: {exc!r}"
    run.shutdown_s = time.monotonic() - started
    run.left_running = bot.answers_in_flight


async def cancel_leftovers(timeout: float = 10.0) -> None:
    """Tasks the bot left (a work-first handler still waiting for its first update)."""
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=timeout)


async def one_run(variant: str, size: int, rate: float, args: argparse.Namespace,
                  db_path: Path, profile: cProfile.Profile | None = None, *,
                  warmup: bool = True) -> Run:
    run = Run(variant, size, rate)
    tally = LogTally()
    logging.getLogger().addHandler(tally)
    fake = FakeProcess(args.plain)
    sent = SentTimes()
    store = SqliteStore(db_path)
    try:
        await fake.start()
        point_discord_py_at(fake)
        await store.open()
        backend = SyntheticBackend(args.answer_chars, args.tokens_per_second)
        service = ConversationService(
            backend, store, ConversationLimits(max_concurrent_jobs=args.max_jobs))
        bot, stop, task = await start_bot(variant, fake, service, sent)
        if args.warmup and warmup:
            await warm_up(fake, bot, service)
        users = await fake.add_members(size)
        gc.collect()
        cpu0, t0 = time.process_time(), time.monotonic()
        if profile is not None:
            profile.enable()
        # One request: the child dispatches the burst and answers when the callbacks are in.
        raw = await fake.burst_raw(users, QUESTION, numbered=True, grace=args.grace, rate=rate)
        if profile is not None:
            profile.disable()
        run.cpu_s = time.process_time() - cpu0
        result = json.loads(raw)
        run.fake_cpu_s = result["cpu_s"]
        run.dispatch_wall = result["dispatched"] - result["started"]
        run.rest_calls, run.connections = result["rest_calls"], result["connections"]
        run.last_callback = score(run, result["records"], sent.by_interaction
                                  ) - result["started"]
        keys = [ConversationKey("discord", f"guild-{fake.guild_id}", uid) for uid in users]
        run.in_line = await settle(service, store, keys,
                                   0 if args.stop_at_once else args.settle_timeout)
        if run.in_line == size:
            run.all_in_line = time.monotonic() - t0
        await stop_bot(run, bot, stop, task, args.shutdown_timeout)
    except Exception as exc:  # one broken run must not hide the others' figures
        run.error = run.error or f"{type(exc).__name__}: {exc}"
    finally:
        await cancel_leftovers()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(store.close(), 10)
        try:  # the fake's own internal errors, if any: a broken fake voids the run
            errors = await fake.close()
            if errors:
                run.error = run.error or f"fake Discord: {errors[0]}"
        except Exception as exc:
            run.error = run.error or f"fake Discord: {type(exc).__name__}: {exc}"
        finally:
            await fake.end()  # no-op if closed; kills the child if it lingers
        logging.getLogger().removeHandler(tally)
        run.warnings = tally.counts
    return run


# -- the report ----------------------------------------------------------------------------------


def count(n: int, size: int) -> str:
    return f"{n:,}/{size:,}"


# Per-run figures that are reported as the median over the repeats (the rest are pooled).
MEDIANS = ("dispatch_wall", "last_callback", "cpu_s", "fake_cpu_s", "rest_calls", "connections",
           "all_in_line", "shutdown_s")
SUMS = ("deferred_in_time", "missed", "no_callback", "other", "in_line", "left_running")
Scenario = tuple[int, float]  # (asks, rate in asks/s or BURST)


def scenario_name(size: int, rate: float) -> str:
    return f"{size:,} /ask at once" if rate == BURST else f"{size:,} /ask at {rate:g}/s"


def pool(runs: list[Run]) -> Run:
    """One row set for R runs of the same (bot, scenario): latencies and counts pooled
    (N x R asks), wall and CPU figures the median run's."""
    merged = Run(runs[0].variant, sum(r.size for r in runs), runs[0].rate, rep=len(runs))
    for run in runs:
        merged.sent_ms += run.sent_ms
        merged.latencies_ms += run.latencies_ms
        merged.warnings.update(run.warnings)
    for name in SUMS:
        setattr(merged, name, sum(getattr(r, name) for r in runs))
    for name in MEDIANS:
        values = [getattr(r, name) for r in runs if not math.isnan(getattr(r, name))]
        setattr(merged, name, statistics.median(values) if values else math.nan)
    merged.error = "; ".join(r.error for r in runs if r.error) or None
    return merged


def rows_for(size: int, pooled: Sequence[Run]) -> list[tuple[str, ...]]:
    """``pooled`` in VARIANTS order; ratios are each alternative's figure over rtxrelay's."""
    ours, others = pooled[0], pooled[1:]
    rows: list[tuple[str, ...]] = [HEADER]

    def figure(name: str, get: Callable[[Run], float]) -> None:
        a = float(get(ours))
        values = [float(get(r)) for r in others]
        rows.append((name, fmt(a), *map(fmt, values), *(ratio(b, a) for b in values)))

    def counted(name: str, get: Callable[[Run], int], with_ratio: bool = False) -> None:
        a = int(get(ours))
        values = [int(get(r)) for r in others]
        rows.append((name, count(a, size), *(count(b, size) for b in values),
                     *((ratio(b, a) if with_ratio else "") for b in values)))

    counted("deferred in time (200, type 5)", lambda r: r.deferred_in_time)
    counted(f"  sent under {GOAL_MS:.0f} ms (goal)",
            lambda r: sum(ms < GOAL_MS for ms in r.sent_ms))
    counted(f"  accepted under {GOAL_MS:.0f} ms",
            lambda r: sum(ms < GOAL_MS for ms in r.latencies_ms))
    counted("missed Discord's 3 s (404 10062)", lambda r: r.missed, with_ratio=True)
    counted("no callback before the stop", lambda r: r.no_callback)
    for q in (50, 95, 99):
        figure(f"deferral sent p{q} ms", lambda r, q=q: percentile(r.sent_ms, q))
    figure("deferral sent max ms", lambda r: max(r.sent_ms, default=math.nan))
    for q in (50, 99):
        figure(f"deferral accepted p{q} ms", lambda r, q=q: percentile(r.latencies_ms, q))
    figure("deferral accepted max ms", lambda r: max(r.latencies_ms, default=math.nan))
    figure("dispatch wall s (N INTERACTION_CREATE)", lambda r: r.dispatch_wall)
    figure("first dispatch -> last callback s", lambda r: r.last_callback)
    figure("bot process CPU s in that window", lambda r: r.cpu_s)
    figure("  CPU % of one core (all threads)", lambda r: r.cpu_s / r.last_callback * 100)
    figure("fake Discord process CPU s (not the bot's)", lambda r: r.fake_cpu_s)
    figure("REST calls served in that window", lambda r: r.rest_calls)
    figure("new connections (TLS handshakes) in it", lambda r: r.connections)
    figure("first dispatch -> all N in line s", lambda r: r.all_in_line)
    counted("asks in line when stopped", lambda r: r.in_line)
    figure("shutdown s (N replies still queued)", lambda r: r.shutdown_s)
    figure("replies still running after shutdown", lambda r: r.left_running)
    return rows


def report(runs: list[Run], args: argparse.Namespace) -> int:
    def runs_of(variant: str, scenario: Scenario) -> list[Run]:
        return [r for r in runs if r.variant == variant and (r.size, r.rate) == scenario]

    pooled = {(v, sc): pool(runs_of(v, sc)) for v in VARIANTS for sc in args.scenarios}
    for size, rate in args.scenarios:
        print(f"\n== {scenario_name(size, rate)}, {args.reps} run(s) per bot pooled "
              f"(from INTERACTION_CREATE; {args.max_jobs} job(s) at a time) ==")
        print_table(rows_for(size * args.reps, [pooled[(v, (size, rate))] for v in VARIANTS]))
    print(f"\n== goal: deferral < {GOAL_MS:.0f} ms after INTERACTION_CREATE (rtxrelay; sent = "
          f"written by the bot, accepted = answered by the fake) ==")
    for scenario in args.scenarios:
        run = pooled[(OURS, scenario)]
        worst = percentile(run.sent_ms, 100)
        verdict = "met" if run.all_deferred and worst < GOAL_MS else "NOT met"
        missed = ", ".join(str(r.missed + r.no_callback + r.other)
                           for r in runs_of(OURS, scenario))
        print(f"{scenario_name(*scenario):>22}: sent p50 {fmt(percentile(run.sent_ms, 50))} / "
              f"p99 {fmt(percentile(run.sent_ms, 99))} / max {fmt(worst)} ms; accepted p99 "
              f"{fmt(percentile(run.latencies_ms, 99))} / max "
              f"{fmt(percentile(run.latencies_ms, 100))} ms; not deferred in time, per run: "
              f"{missed} -> {verdict}")
    for run in pooled.values():
        if run.warnings:
            name = scenario_name(run.size // args.reps, run.rate)
            print(f"\nwarnings logged, {run.variant}, {name} ({args.reps} run(s)):")
            for text, n in run.warnings.most_common(5):
                print(f"  {n:>5} x {text}")
    for run in runs:
        if run.error:
            print(f"\nFAILED {run.variant}, {scenario_name(run.size, run.rate)}, run "
                  f"{run.rep + 1}: {run.error}")
    ok = all(pooled[(OURS, sc)].all_deferred for sc in args.scenarios)
    if not ok:
        print("\nnot every rtxrelay /ask was deferred in time: exit status 1")
    return 0 if ok else 1


# Where own time goes, by who pays for it. Only the bot's process is profiled: the fake Discord
# runs in its own (the bench's one control request per burst is the only other work here).
PROFILE_GROUPS: tuple[tuple[str, str], ...] = (
    ("/aiohttp/", "aiohttp client"),
    ("/discord/", "discord.py"),
    ("/aiosqlite/", "aiosqlite"),
    (str(REPO_DIR / "bots"), "rtxrelay"),
    (str(REPO_DIR / "core"), "rtxrelay"),
    (str(REPO_DIR / "storage"), "rtxrelay"),
    ("/asyncio/", "asyncio"),
    ("/json/", "json"),
    ("/yarl/", "yarl / multidict"),
    ("/multidict/", "yarl / multidict"),
)
BUILTIN_GROUPS: tuple[tuple[str, str], ...] = (
    ("poll", "C: waiting in epoll (idle)"),
    ("select", "C: waiting in epoll (idle)"),
    ("zlib", "C: zlib"),
    ("compress", "C: zlib"),
    ("socket", "C: sockets"),
    ("transport", "C: sockets"),
    ("json", "C: json"),
)


def _group(filename: str, funcname: str) -> str:
    if filename == "~":  # a C function: named only by what it is
        return next((g for key, g in BUILTIN_GROUPS if key in funcname), "C: other builtins")
    return next((g for key, g in PROFILE_GROUPS if key in filename), "other Python")


def profile_report(profile: cProfile.Profile, run: Run, lines: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    by_group: Counter[str] = Counter()
    for (filename, _line, funcname), row in stats.stats.items():  # type: ignore[attr-defined]
        by_group[_group(filename, funcname)] += row[2]  # own time
    total = sum(by_group.values()) or 1.0
    text = [f"\n== cProfile: an extra rtxrelay run, {scenario_name(run.size, run.rate)}, "
            f"first dispatch -> last callback, "
            f"the bot's process only "
            f"(profiler on: sent p50 {fmt(percentile(run.sent_ms, 50))} ms, deferred in time "
            f"{count(run.deferred_in_time, run.size)}; not in the tables) ==",
            "own time by who pays for it:"]
    text += [f"  {group:<34} {seconds:7.3f} s  {seconds / total * 100:5.1f} %"
             for group, seconds in by_group.most_common()]
    stats.sort_stats("tottime").print_stats(lines)
    text += [line for line in out.getvalue().splitlines() if line.strip()]
    return "\n".join(text)


# -- main ----------------------------------------------------------------------------------------


def progress(run: Run, label: str = "") -> None:
    status = "ok" if not run.error else f"FAILED: {run.error}"
    p50, worst = percentile(run.sent_ms, 50), max(run.sent_ms, default=math.nan)
    print(f"  {scenario_name(run.size, run.rate):>20} run {run.rep + 1} {run.variant:<14} "
          f"deferred {count(run.deferred_in_time, run.size)}, sent p50 {fmt(p50)} ms, "
          f"max {fmt(worst)} ms, "
          f"shutdown {fmt(run.shutdown_s)} s  {status}{label}", flush=True)


def bench(args: argparse.Namespace) -> tuple[list[Run], str]:
    """Every (bot, N) run, and the profile report if one was asked for."""
    runs: list[Run] = []
    profiled = ""
    with tempfile.TemporaryDirectory(prefix="rtxrelay-ack-bench-") as tmp:
        for i, (size, rate) in enumerate(args.scenarios):
            for rep in range(args.reps):
                # Each bot goes first, middle and last in turn: no order effect in the pool.
                shift = (i + rep) % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    db = Path(tmp) / f"{variant}-{size}-{rate:g}-{rep}.db"
                    # A fresh event loop per run: nothing of one run's tasks reaches the next.
                    # --quick: only the first run warms up (the process's first-use costs,
                    # and the warm-up's own checks, once).
                    run = asyncio.run(one_run(variant, size, rate, args, db,
                                              warmup=not (args.quick and runs)))
                    run.rep = rep
                    runs.append(run)
                    progress(run)
                    gc.collect()
        if args.profile:  # an extra run: the profiler's overhead must not skew the table
            profile = cProfile.Profile()
            size = max(args.sizes)
            run = asyncio.run(one_run(OURS, size, BURST, args, Path(tmp) / "profiled.db",
                                      profile))
            progress(run, " (profiled, not in the tables)")
            profiled = profile_report(profile, run, args.profile_lines)
    return runs, profiled


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: N = {QUICK_SIZE}, both bots, a few seconds; only "
                        "the first run warms up")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(DEFAULT_SIZES), help="burst sizes, comma list")
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",") if x],
                        default=list(DEFAULT_RATES),
                        help="paced runs of the largest size at these asks/s, comma list "
                        "('' for none)")
    parser.add_argument("--plain", action="store_true",
                        help="plain HTTP and WS instead of HTTPS and WSS (Discord is TLS only)")
    parser.add_argument("--reps", type=int, default=3,
                        help="runs per bot and N (fresh fake and bot each), pooled in the table")
    parser.add_argument("--max-jobs", type=int, default=1,
                        help="ConversationLimits.max_concurrent_jobs (Chat with RTX: 1)")
    parser.add_argument("--answer-chars", type=int, default=600,
                        help="length of the synthetic answer")
    parser.add_argument("--tokens-per-second", type=float, default=30.0,
                        help="the synthetic backend's pace (~4 chars a token)")
    parser.add_argument("--grace", type=float, default=1.0,
                        help="wait this long past Discord's 3 s for callbacks (s)")
    parser.add_argument("--settle-timeout", type=float, default=60.0,
                        help="bound on waiting for every ask to be in line before the stop (s)")
    parser.add_argument("--stop-at-once", action="store_true",
                        help="stop right after the last callback, without waiting for every "
                        "ask to be in line (shows replies that finish_replies cannot stop)")
    parser.add_argument("--shutdown-timeout", type=float, default=90.0,
                        help="bound on stopping the bot with N queued replies (s)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the uncounted warm-up ask")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the rtxrelay burst at the largest N and print the top")
    parser.add_argument("--profile-lines", type=int, default=30)
    parser.add_argument(SERVE_FAKE, action="store_true", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rates, args.reps = [QUICK_SIZE], [QUICK_RATE], 1
    args.scenarios = [(n, BURST) for n in args.sizes] + [(max(args.sizes), r)
                                                         for r in args.rates]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_fake:
        return serve_fake(args.plain)
    freeze_startup_objects()  # as `rtxrelay run` does once the bots' libraries are imported
    # Warnings reach the per-run tally (LogTally); only errors are printed as they happen.
    logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.ERROR)
    started = time.monotonic()
    print(f"bench_discord_ack: {', '.join(scenario_name(*sc) for sc in args.scenarios)}; "
          f"{args.reps} run(s) per bot, {'plain HTTP' if args.plain else 'HTTPS/WSS'}, "
          f"{args.max_jobs} job(s) at a time, answer "
          f"{args.answer_chars} chars at {args.tokens_per_second:g} tokens/s; "
          f"discord.py {discord.__version__}; {os.cpu_count()} CPUs, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{platform.system()} {platform.release()}", flush=True)
    runs, profiled = bench(args)
    code = report(runs, args)
    if profiled:
        print(profiled)
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
