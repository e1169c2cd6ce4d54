"""A protocol-faithful fake of Discord's gateway and REST API, for running the real discord.py.

The fake is an aiohttp app on 127.0.0.1 (ephemeral port): REST under ``/api/v10`` and the gateway
websocket at ``/``. discord.py is pointed at it by patching two class attributes
(``point_discord_py_at``), so its real HTTP client, rate-limit buckets, webhook adapter, gateway
parser and zlib-stream decompressor all run. The facts it models: docs/platforms.md (the
Discord sections, limits and 429 shapes included). Behaviour not checked against discord.py
source or Discord docs is marked "guess" in comments.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import ssl
import time
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import pytest
import yarl
from aiohttp import WSMsgType, web

from tests.fakes import discord_payloads as p
from tests.fakes.discord_payloads import Json

T = TypeVar("T")
Handler = Callable[[web.Request, Any], Awaitable[tuple[int, Any]]]
API = "/api/v10"
HEARTBEAT_INTERVAL_MS = 41250  # real value; tests end long before the client's second beat
# Gateway intents that gate MESSAGE_* dispatches (GUILD_MESSAGES, DIRECT_MESSAGES).
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
# Names in the fixed world (readable in tests); their ids are snowflakes made at construction.
USERNAMES = ("alice", "bob")
CHANNEL_NAMES = ("general", "rtx-help", "off-topic")


class ManualClock:
    """Injectable clock for ack deadlines, token expiry and bucket windows: tests advance it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ApiError(Exception):
    """Raised by handlers; rendered as Discord's JSON error body with the given status."""

    def __init__(self, status: int, code: int, message: str, errors: Json | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.body = status, p.error_body(code, message, errors)


def _unknown_message() -> ApiError:
    return ApiError(404, 10008, "Unknown Message")


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else ""


def _invalid_webhook_token() -> ApiError:
    return ApiError(401, 50027, "Invalid Webhook Token")


@dataclass
class RecordedRequest:
    """One REST call as the fake saw it. `route` is discord.py's Route.key, e.g.
    "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original"."""

    method: str
    route: str
    path: str
    query: dict[str, str]
    json: Any
    headers: dict[str, str]
    time: float
    peer: str = ""  # the client's host:port: one per TCP connection
    status: int = 0
    response: Any = None
    response_headers: dict[str, str] = field(default_factory=dict)

    @property
    def allowed_mentions(self) -> Any:
        body = self.json.get("data", self.json) if isinstance(self.json, dict) else None
        return body.get("allowed_mentions") if isinstance(body, dict) else None


@dataclass
class StoredMessage:
    """Current state of a message plus every revision (creation first) and the allowed_mentions
    sent with each write, exactly as sent (None when a write carried none)."""

    id: str
    channel_id: str
    payload: Json
    revisions: list[Json] = field(default_factory=list)
    allowed_mentions: list[Any] = field(default_factory=list)
    interaction_id: str | None = None
    deleted: bool = False

    @property
    def content(self) -> str:
        return str(self.payload.get("content") or "")

    @property
    def author_id(self) -> str:
        return str(self.payload["author"]["id"])

    @property
    def edits(self) -> int:
        return len(self.revisions) - 1


@dataclass
class InteractionRecord:
    id: str
    token: str
    type: int  # 2 application command, 3 component
    channel_id: str
    guild_id: str | None
    user_id: str
    created_at: float
    payload: Json
    response_type: int | None = None
    acked_at: float | None = None
    callback_statuses: list[int] = field(default_factory=list)
    original_message_id: str | None = None
    followup_ids: list[str] = field(default_factory=list)
    _fake: FakeDiscord | None = field(default=None, repr=False)

    @property
    def acked(self) -> bool:
        return self.response_type is not None

    async def wait_acked(self, timeout: float = 5.0) -> InteractionRecord:
        assert self._fake is not None
        return await self._fake._wait(lambda: self if self.acked else None, timeout, "ack")


class _GatewayConn:
    """One websocket. Transport compression is one zlib stream per connection (discord.py keeps
    one decompressor per socket and waits for the 00 00 ff ff sync-flush suffix)."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, zlib_stream: bool) -> None:
        self.ws, self.request = ws, request
        self.compressor = zlib.compressobj() if zlib_stream else None
        self.lock = asyncio.Lock()  # compressor state must see frames in send order

    async def send(self, payload: Json) -> bool:
        raw = json.dumps(payload, separators=(",", ":"))
        async with self.lock:
            if self.ws.closed:
                return False
            try:
                if self.compressor is None:
                    await self.ws.send_str(raw)
                else:
                    data = self.compressor.compress(raw.encode()) + self.compressor.flush(
                        zlib.Z_SYNC_FLUSH
                    )
                    await self.ws.send_bytes(data)
            except ConnectionError:
                return False
        return True


class FakeDiscord:
    GLOBAL_LIMIT = (50, 1.0)  # requests per second per bot, interaction endpoints exempt

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        bucket_limit: tuple[int, float] | None = None,
        global_limit: tuple[int, float] | None = GLOBAL_LIMIT,
        ack_deadline: float = 3.0,
        token_lifetime: float = 900.0,
        allow_privileged: int = 0,
        echo_own_messages: bool = True,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
        port: int = 0,
        guild_locale: str = "en-US",
    ) -> None:
        self.token = token
        # The server's language (its "preferred_locale", an admin's choice): GUILD_CREATE
        # carries it, and every interaction in the server as "guild_locale".
        self.guild_locale = guild_locale
        # Real Discord is HTTPS and WSS only; with a context the fake is too (the benches use
        # it: every new connection then costs the client a TLS handshake, as it would).
        self.ssl_context = ssl_context
        self.bucket_limit = bucket_limit
        # Discord: 50 requests/s per bot across all routes; interaction endpoints (the callback,
        # and @original and follow-ups through the interaction's webhook) are not bound by it.
        self.global_limit = global_limit
        self._global_hits: deque[float] = deque()
        self.ack_deadline = ack_deadline
        self.token_lifetime = token_lifetime
        self.allow_privileged = allow_privileged
        # Discord sends the bot its own messages over the gateway; real bots must ignore them.
        self.echo_own_messages = echo_own_messages
        self.clock = clock
        self._ids = p.Snowflakes()
        self._build_world()
        self.requests: list[RecordedRequest] = []
        self.interactions: dict[str, InteractionRecord] = {}
        self._interactions_by_token: dict[str, InteractionRecord] = {}
        self.commands: dict[tuple[str | None, str], Json] = {}  # (guild_id|None, name) -> cmd
        self.gateway_received: list[tuple[int, Any]] = []  # (op, d) from the client
        self.gateway_connections: list[dict[str, str]] = []  # query string of each connect
        self.replayed: list[tuple[int, str]] = []  # (s, event) re-sent on RESUME
        self._messages: dict[str, StoredMessage] = {}
        self.internal_errors: list[Exception] = []
        self._windows: dict[str, list[float]] = {}
        self._scripted_429: list[tuple[Callable[[RecordedRequest], bool], float, bool]] = []
        self._conns: set[_GatewayConn] = set()
        self._live: _GatewayConn | None = None
        self._session_id: str | None = None
        self._seq = 0
        self._backlog: list[Json] = []  # dispatched frames, replayed on RESUME
        self._intents = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = port  # 0: any free port

    # ----- world -----------------------------------------------------------------------------
    def _build_world(self) -> None:
        nid = self._ids.next
        self.application_id = nid()
        self.bot_user = p.bot_user(self.application_id, "rtx_relay")  # bot id == app id, as usual
        self.bot_id = self.application_id
        self.guild_id = nid()
        self.users: dict[str, Json] = {
            n: p.user(nid(), n, global_name=n.title()) for n in USERNAMES
        }
        self.channels: dict[str, str] = {n: nid() for n in CHANNEL_NAMES}
        self._channel_payloads: dict[str, Json] = {
            cid: p.text_channel(cid, self.guild_id, name, i)
            for i, (name, cid) in enumerate(self.channels.items())
        }
        self.dm_channels: dict[str, str] = {}  # user id -> DM channel id
        members_role, mods_role, bot_role = nid(), nid(), nid()
        self.roles = [
            p.role(self.guild_id, "@everyone", permissions=p.MEMBER_PERMISSIONS, position=0),
            p.role(members_role, "Members", permissions=p.MEMBER_PERMISSIONS, position=1),
            p.role(mods_role, "Mods", permissions=p.PERM_ADMINISTRATOR, position=2),
            p.role(
                bot_role, "rtx_relay", permissions=p.MEMBER_PERMISSIONS, position=1, managed=True
            ),
        ]
        joined = p.iso_now()
        self._member_roles = {
            self.bot_id: [bot_role],
            self.users["alice"]["id"]: [members_role, mods_role],
            self.users["bob"]["id"]: [members_role],
        }
        self._users_by_id = {u["id"]: u for u in (self.bot_user, *self.users.values())}
        self._members = {
            uid: p.member(self._users_by_id[uid], roles, joined_at=joined)
            for uid, roles in self._member_roles.items()
        }

    def add_member(self, name: str) -> Json:
        """A new server member with no role; returns its user (pass it as ``user=``)."""
        user = p.user(self._ids.next(), name, global_name=name.title())
        self._users_by_id[user["id"]] = user
        self._members[user["id"]] = p.member(user, [], joined_at=p.iso_now())
        return user

    def _member(self, uid: str, *, with_user: bool) -> Json:
        m = dict(self._members[uid])
        if not with_user:
            m.pop("user")
        return m

    def _guild_payload(self) -> Json:
        # Without GUILD_MEMBERS, GUILD_CREATE lists only the bot itself (plus voice members, not
        # modelled); discord.py's default member cache expects exactly that.
        members = [
            m
            for uid, m in self._members.items()
            if uid == self.bot_id or self._intents & p.INTENT_GUILD_MEMBERS
        ]
        return p.guild(
            self.guild_id,
            "RTX fans",
            owner_id=self.users["alice"]["id"],
            roles=self.roles,
            channels=list(self._channel_payloads.values()),
            members=members,
            preferred_locale=self.guild_locale,
        )

    def _dm_channel_id(self, uid: str) -> str:
        if uid not in self.dm_channels:
            cid = self._ids.next()
            self.dm_channels[uid] = cid
            self._channel_payloads[cid] = p.dm_channel(cid, self._users_by_id[uid])
        return self.dm_channels[uid]

    def _resolve_user(self, user: str | Json | None) -> Json:
        if user is None:
            return self.users["alice"]
        if isinstance(user, dict):
            self._users_by_id.setdefault(user["id"], user)
            return user
        return self.users.get(user) or self._users_by_id[user]

    def _resolve_channel(self, channel: str | None) -> str:
        if channel is None:
            return self.channels["general"]
        return self.channels.get(channel, channel)

    # ----- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        self._add_routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        sockets = self._runner.addresses
        self.port = int(sockets[0][1])
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for conn in list(self._conns):
            await conn.ws.close(code=1001, message=b"fake shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
        if self.internal_errors and et is None:
            raise self.internal_errors[0]

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}{API}"

    @property
    def gateway_url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://127.0.0.1:{self.port}/"

    # ----- waiting ---------------------------------------------------------------------------
    def _notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    # The driver API takes explicit timeouts (ASYNC109) so every wait is bounded by default and a
    # broken test fails with a list of what the fake did see instead of hanging.
    async def _wait(
        self,
        check: Callable[[], T | None],
        timeout: float,
        what: str,
    ) -> T:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    ev = self._changed  # capture before checking so no change is missed
                    found = check()
                    if found is not None:
                        return found
                    await ev.wait()
        except TimeoutError:
            seen = [f"{r.route} -> {r.status}" for r in self.requests[-15:]]
            raise TimeoutError(f"timed out waiting for {what}; last requests: {seen}") from None

    async def wait_for_request(
        self,
        pred: Callable[[RecordedRequest], bool],
        timeout: float = 5.0,
    ) -> RecordedRequest:
        """First completed request (status known) matching pred, past or future."""
        return await self._wait(
            lambda: next((r for r in self.requests if r.status and pred(r)), None),
            timeout,
            "request",
        )

    async def wait_for_gateway(
        self,
        op: int,
        timeout: float = 5.0,
        after: int = 0,
    ) -> Json:
        """First client gateway frame {"op", "d"} with this opcode at index >= after (pass
        len(fake.gateway_received) to wait for a future one)."""
        return await self._wait(
            lambda: next(
                ({"op": o, "d": d} for o, d in self.gateway_received[after:] if o == op), None
            ),
            timeout,
            f"gateway op {op}",
        )

    async def wait_until_ready(self, timeout: float = 5.0) -> None:
        """Client identified and was sent READY + GUILD_CREATE."""
        await self._wait(lambda: self._live if self._session_id else None, timeout, "IDENTIFY")

    # ----- records -----------------------------------------------------------------------------
    @property
    def messages(self) -> dict[str, list[StoredMessage]]:
        """Per channel id, in creation order (deleted ones kept with deleted=True)."""
        out: dict[str, list[StoredMessage]] = {}
        for m in self._messages.values():
            out.setdefault(m.channel_id, []).append(m)
        return out

    def message(self, message_id: str | int) -> StoredMessage:
        return self._messages[str(message_id)]

    def requests_to(self, route: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route == route]

    # ----- gateway ---------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        q = request.query
        self.gateway_connections.append(dict(q))
        # zstd-stream (discord.py on 3.14 / with `zstandard`) is not modelled: text frames are
        # accepted by every client because received_message() only decompresses bytes.
        conn = _GatewayConn(ws, request, q.get("compress") == "zlib-stream")
        if q.get("v") != "10" or q.get("encoding") != "json":
            # Real: 4012 "Invalid API version"; a bad encoding is folded into it here (guess).
            await ws.close(code=4012, message=b"Invalid API version")
            return ws
        self._conns.add(conn)
        try:
            await conn.send({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                frame = json.loads(msg.data)
                self.gateway_received.append((frame.get("op"), frame.get("d")))
                self._notify()
                try:
                    await self._on_gateway_frame(conn, frame)
                except Exception as exc:  # a bug in the fake: fail the test from __aexit__
                    self.internal_errors.append(exc)
                    await ws.close(code=4000, message=b"fake internal error")
        finally:
            self._conns.discard(conn)
            if self._live is conn:
                self._live = None
        return ws

    async def _on_gateway_frame(self, conn: _GatewayConn, frame: Json) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == 1:
            await conn.send({"op": 11})
        elif op == 2:
            await self._identify(conn, d)
        elif op == 6:
            await self._resume(conn, d)
        elif op == 8:  # request guild members (only with the members intent); one chunk
            members = list(self._members.values())
            chunk = {
                "guild_id": self.guild_id,
                "members": members,
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
                "nonce": d.get("nonce"),
            }
            await self.dispatch("GUILD_MEMBERS_CHUNK", chunk)
        elif conn is not self._live and op != 3:
            await conn.ws.close(code=4003, message=b"Not authenticated.")

    async def _identify(self, conn: _GatewayConn, d: Json) -> None:
        if d.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(d.get("intents", 0))
        if intents & p.PRIVILEGED_INTENTS & ~self.allow_privileged:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        self._intents, self._session_id = intents, uuid.uuid4().hex
        self._seq, self._backlog, self._live = 0, [], conn
        ready = {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": self.guild_id, "unavailable": True}],
            "session_id": self._session_id,
            # discord.py RESUMEs at this URL, so it must point back at the fake.
            "resume_gateway_url": self.gateway_url,
            "shard": [0, 1],
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "geo_ordered_rtc_regions": [],
        }
        await self.dispatch("READY", ready)
        await self.dispatch("GUILD_CREATE", self._guild_payload())
        self._notify()

    async def _resume(self, conn: _GatewayConn, d: Json) -> None:
        if d.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        if self._session_id is None or d.get("session_id") != self._session_id:
            await conn.send({"op": 9, "d": False})
            return
        self._live = conn
        last = int(d.get("seq") or 0)
        for frame in [f for f in self._backlog if f["s"] > last]:
            self.replayed.append((frame["s"], frame["t"]))
            await conn.send(frame)
        await self.dispatch("RESUMED", {})
        self._notify()

    async def dispatch(self, event: str, data: Json) -> int:
        """Send a DISPATCH with the next sequence number. Buffered for RESUME replay if the
        client is between connections. Returns the sequence number."""
        if self._session_id is None:
            raise RuntimeError("no identified gateway session; await wait_until_ready() first")
        if event.startswith("MESSAGE_") and "guild_id" in data:
            if not self._intents & INTENT_GUILD_MESSAGES:
                return self._seq
        elif event.startswith("MESSAGE_") and not self._intents & INTENT_DIRECT_MESSAGES:
            return self._seq
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
            data = self._apply_message_content_intent(data)
        self._seq += 1
        frame = {"op": 0, "t": event, "s": self._seq, "d": data}
        self._backlog.append(frame)
        if self._live is not None:
            await self._live.send(frame)
        return self._seq

    def _apply_message_content_intent(self, data: Json) -> Json:
        """Without MESSAGE_CONTENT, Discord blanks content/embeds/attachments/components except in
        DMs, messages that mention the app, and the app's own messages."""
        if self._intents & p.INTENT_MESSAGE_CONTENT or "guild_id" not in data:
            return data
        if data.get("author", {}).get("id") == self.bot_id:
            return data
        if any(u.get("id") == self.bot_id for u in data.get("mentions", [])):
            return data
        return {**data, "content": "", "embeds": [], "attachments": [], "components": []}

    async def request_reconnect(self) -> None:
        """op 7: discord.py closes and RESUMEs at resume_gateway_url."""
        assert self._live is not None, "no live gateway connection"
        await self._live.send({"op": 7, "d": None})

    async def invalidate_session(self, resumable: bool = False) -> None:
        """op 9: with d=false discord.py drops its session and IDENTIFYs again."""
        assert self._live is not None, "no live gateway connection"
        if not resumable:
            self._session_id = None
        await self._live.send({"op": 9, "d": resumable})

    def drop_connection(self) -> None:
        """Abort the TCP connection without a close frame; discord.py reconnects and RESUMEs."""
        assert self._live is not None, "no live gateway connection"
        transport = self._live.request.transport
        assert transport is not None
        transport.abort()

    # ----- driver: inbound events ------------------------------------------------------------
    def _new_interaction(
        self,
        itype: int,
        channel_id: str,
        u: Json,
        data: Json,
        guild: bool,
        message: Json | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        iid, token = self._ids.next(), f"aW50ZXJhY3Rpb24.{uuid.uuid4().hex}"
        payload: Json = {
            "id": iid,
            "application_id": self.application_id,
            "type": itype,
            "token": token,
            "version": 1,
            "data": data,
            "channel_id": channel_id,
            "locale": locale,  # the language the user set in their Discord client
            "entitlements": [],
            "attachment_size_limit": 10_485_760,
            "app_permissions": str(p.MEMBER_PERMISSIONS),
        }
        if guild:
            chan = dict(self._channel_payloads[channel_id])
            chan["permissions"] = str(p.MEMBER_PERMISSIONS)
            member = {
                **self._member(u["id"], with_user=True),
                "permissions": str(p.MEMBER_PERMISSIONS),
            }
            payload.update(
                guild_id=self.guild_id,
                guild_locale=self.guild_locale,
                context=0,
                guild={"id": self.guild_id, "locale": self.guild_locale, "features": []},
                channel=chan,
                member=member,
                authorizing_integration_owners={"0": self.guild_id},
            )
        else:
            payload.update(
                channel=self._channel_payloads[channel_id],
                user=u,
                context=1,
                authorizing_integration_owners={"1": u["id"]},
            )
        if message is not None:
            payload["message"] = message
        rec = InteractionRecord(
            iid,
            token,
            itype,
            channel_id,
            self.guild_id if guild else None,
            u["id"],
            self.clock(),
            payload,
            _fake=self,
        )
        self.interactions[iid] = rec
        self._interactions_by_token[token] = rec
        return rec

    async def dispatch_slash_command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: str | Json | None = None,
        channel: str | None = None,
        guild: bool = True,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """INTERACTION_CREATE type 2 for a command the client synced (its real id is used).
        ``locale``: the user's Discord client language ("zh-CN", "zh-TW", "en-GB"...)."""
        cmd = (self.commands.get((self.guild_id, name)) if guild else None) or self.commands.get(
            (None, name)
        )
        if cmd is None:
            raise KeyError(f"command {name!r} was never synced; synced: {list(self.commands)}")
        u = self._resolve_user(user)
        opt_types = {bool: 5, int: 4, float: 10, str: 3}
        data: Json = {
            "id": cmd["id"],
            "name": name,
            "type": 1,
            "options": [
                {"name": k, "type": opt_types.get(type(v), 3), "value": v}
                for k, v in (options or {}).items()
            ],
        }
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]  # discord.py looks up guild commands by this
        cid = self._resolve_channel(channel) if guild else self._dm_channel_id(u["id"])
        rec = self._new_interaction(2, cid, u, data, guild, locale=locale)
        await self.dispatch("INTERACTION_CREATE", rec.payload)
        return rec

    async def dispatch_component_click(
        self,
        message: StoredMessage | str | int,
        custom_id: str,
        user: str | Json | None = None,
        component_type: int = 2,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """INTERACTION_CREATE type 3 (button click) on a stored message carrying that custom_id."""
        msg = message if isinstance(message, StoredMessage) else self.message(message)
        ids = [
            c.get("custom_id")
            for row in msg.payload.get("components", [])
            for c in row.get("components", [])
        ]
        if custom_id not in ids:
            raise KeyError(f"message {msg.id} has no component {custom_id!r}; has {ids}")
        u = self._resolve_user(user)
        data = {"custom_id": custom_id, "component_type": component_type}
        rec = self._new_interaction(
            3, msg.channel_id, u, data, "guild_id" in msg.payload, message=msg.payload,
            locale=locale,
        )
        await self.dispatch("INTERACTION_CREATE", rec.payload)
        return rec

    async def _inbound_message(
        self,
        channel_id: str,
        u: Json,
        content: str,
        *,
        guild: bool,
        mentions: list[Json] | None = None,
        reply_to: StoredMessage | str | int | None = None,
    ) -> StoredMessage:
        mid = self._ids.next()
        payload = p.message(
            mid,
            channel_id,
            u,
            content,
            guild_id=self.guild_id if guild else None,
            member_payload=self._member(u["id"], with_user=False) if guild else None,
            mentions=mentions,
        )
        if reply_to is not None:
            ref = reply_to if isinstance(reply_to, StoredMessage) else self.message(reply_to)
            payload.update(
                type=19, referenced_message=ref.payload, message_reference=self._reference(ref)
            )
        stored = self._store(StoredMessage(mid, channel_id, payload), None)
        await self.dispatch("MESSAGE_CREATE", payload)
        return stored

    async def dispatch_mention(
        self,
        text: str,
        *,
        user: str | Json | None = None,
        channel: str | None = None,
        reply_to: StoredMessage | str | int | None = None,
    ) -> StoredMessage:
        bot_mention = {**self.bot_user, "member": self._member(self.bot_id, with_user=False)}
        return await self._inbound_message(
            self._resolve_channel(channel),
            self._resolve_user(user),
            f"<@{self.bot_id}> {text}",
            guild=True,
            mentions=[bot_mention],
            reply_to=reply_to,
        )

    async def dispatch_dm(self, text: str, user: str | Json | None = None) -> StoredMessage:
        # No CHANNEL_CREATE first: discord.py builds a DMChannel from a guild-less MESSAGE_CREATE.
        u = self._resolve_user(user)
        return await self._inbound_message(self._dm_channel_id(u["id"]), u, text, guild=False)

    async def dispatch_guild_text(
        self, text: str, *, user: str | Json | None = None, channel: str | None = None
    ) -> StoredMessage:
        return await self._inbound_message(
            self._resolve_channel(channel), self._resolve_user(user), text, guild=True
        )

    # ----- REST plumbing ---------------------------------------------------------------------
    def rate_limit_next(
        self,
        route: str | Callable[[RecordedRequest], bool],
        retry_after: float,
        is_global: bool = False,
    ) -> None:
        """Answer the next matching request (route key or predicate) with a scripted 429."""
        pred = route if callable(route) else (lambda r, key=route: r.route == key)
        self._scripted_429.append((pred, retry_after, is_global))

    def _bucket(self, request: web.Request, route: str) -> tuple[str, str]:
        bucket_hash = hashlib.sha1(route.encode()).hexdigest()[:16]
        mi = request.match_info
        major = "+".join(
            mi[k] for k in ("channel_id", "guild_id", "webhook_id", "webhook_token") if k in mi
        )
        return bucket_hash, f"{bucket_hash}:{major}"

    def _global_retry(self, route: str, now: float) -> float | None:
        """The bot-wide window: None if admitted (and counted), else seconds to wait."""
        if self.global_limit is None or route.split(" ", 1)[1].startswith(
                ("/interactions/", "/webhooks/")):
            return None
        limit, window = self.global_limit
        hits = self._global_hits
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            return hits[0] + window - now
        hits.append(now)
        return None

    def _rate_headers(
        self, bucket_hash: str, key: str, now: float, admit: bool
    ) -> tuple[dict[str, str], float | None]:
        """Sliding window per bucket. Returns headers and, when over the limit, retry_after."""
        limit, window = self.bucket_limit or (50, 1.0)
        hits = [t for t in self._windows.get(key, []) if t > now - window]
        retry: float | None = None
        if self.bucket_limit is not None and len(hits) >= limit:
            retry = hits[0] + window - now
        elif admit:
            hits.append(now)
        self._windows[key] = hits
        remaining = limit - len(hits)
        if self.bucket_limit is None:
            remaining = max(remaining, 1)  # no limit configured: never make the client wait
        # Reset-After = until the window is fully clear, because discord.py assumes the whole
        # limit is available again after it; a sliding window frees one slot at a time.
        reset_after = math.ceil(((hits[-1] + window - now) if hits else window) * 1000) / 1000
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": bucket_hash,
        }
        return headers, retry

    async def _rest(self, handler: Handler, request: web.Request) -> web.Response:
        """Shared REST wrapper: record, rate-limit, authenticate, run the handler, add headers."""
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else request.path
        route = f"{request.method} {canonical.removeprefix(API)}"
        body = await self._read_body(request)
        rec = RecordedRequest(
            request.method,
            route,
            request.path.removeprefix(API),
            dict(request.query),
            body,
            dict(request.headers),
            self.clock(),
            _peer(request),
        )
        bucket_hash, key = self._bucket(request, route)
        status, payload = 200, None
        extra: dict[str, str] = {}
        scripted = next((s for s in self._scripted_429 if s[0](rec)), None)
        global_retry = self._global_retry(route, rec.time) if scripted is None else None
        headers, retry = self._rate_headers(
            bucket_hash, key, rec.time, admit=scripted is None and global_retry is None)
        if scripted is not None:
            self._scripted_429.remove(scripted)
            retry, is_global = scripted[1], scripted[2]
        elif global_retry is not None:
            retry, is_global = global_retry, True
        else:
            is_global = False
        if retry is not None:
            status = 429
            payload = {
                "message": "You are being rate limited.",
                "retry_after": round(retry, 3),
                "global": is_global,
            }
            extra = {
                "Retry-After": str(max(1, math.ceil(retry))),
                "X-RateLimit-Scope": "global" if is_global else "user",
            }
            if is_global:
                extra["X-RateLimit-Global"] = "true"
        else:
            try:
                self._check_auth(request, route)
                status, payload = await handler(request, body)
            except ApiError as exc:
                status, payload = exc.status, exc.body
            except Exception as exc:
                # A bug in the fake. A 500 would make discord.py retry with 1 s, 3 s… sleeps, so
                # answer 400 now and re-raise from __aexit__ so the test fails loudly.
                self.internal_errors.append(exc)
                status, payload = 400, p.error_body(0, f"fake internal error: {exc!r}")
        headers = {**headers, **extra, "Via": "1.1 google"}
        rec.status, rec.response, rec.response_headers = status, payload, headers
        self.requests.append(rec)
        self._notify()
        if payload is None:
            return web.Response(status=status if status != 200 else 204, headers=headers)
        # Exactly "application/json": discord.py compares the header verbatim (gotcha 1).
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            headers={**headers, "Content-Type": "application/json"},
        )

    @staticmethod
    async def _read_body(request: web.Request) -> Any:
        if not request.can_read_body:
            return {} if request.method in ("POST", "PATCH") else None
        if request.content_type == "multipart/form-data":
            # Uploads: discord.py puts the JSON part in a `payload_json` field (files not kept).
            form = await request.post()
            return json.loads(str(form.get("payload_json") or "{}"))
        raw = await request.read()
        return json.loads(raw) if raw and request.content_type == "application/json" else {}

    def _check_auth(self, request: web.Request, route: str) -> None:
        # Webhook and interaction routes authenticate with the token in the URL instead.
        if route.split(" ", 1)[1].startswith(("/webhooks/", "/interactions/")):
            return
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise ApiError(401, 0, "401: Unauthorized")

    def _add_routes(self, app: web.Application) -> None:
        def add(method: str, path: str, fn: Handler) -> None:
            app.router.add_route(method, API + path, functools.partial(self._rest, fn))

        app.router.add_get("/", self._gateway)
        add("GET", "/users/@me", self._me)
        add("GET", "/oauth2/applications/@me", self._application)
        add("GET", "/gateway", self._gateway_bot)
        add("GET", "/gateway/bot", self._gateway_bot)  # only AutoShardedClient calls these
        add("POST", "/users/@me/channels", self._open_dm)
        add("PUT", "/applications/{application_id}/commands", self._sync_commands)
        add("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self._sync_commands)
        add("POST", "/interactions/{webhook_id}/{webhook_token}/callback", self._callback)
        wh = "/webhooks/{webhook_id}/{webhook_token}"
        # @original before {message_id}: aiohttp matches in registration order.
        for method in ("GET", "PATCH", "DELETE"):
            add(method, wh + "/messages/@original", self._webhook_message)
            add(method, wh + "/messages/{message_id}", self._webhook_message)
        add("POST", wh, self._followup)
        add("GET", "/channels/{channel_id}", self._get_channel)
        add("POST", "/channels/{channel_id}/messages", self._create_message)
        for method in ("GET", "PATCH", "DELETE"):
            add(method, "/channels/{channel_id}/messages/{message_id}", self._channel_message)
        add("POST", "/channels/{channel_id}/typing", self._typing)
        add("*", "/{tail:.*}", self._not_found)  # Discord's JSON 404, not aiohttp's text one

    # ----- REST handlers ---------------------------------------------------------------------
    async def _me(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self.bot_user

    async def _typing(self, request: web.Request, body: Any) -> tuple[int, Any]:
        if request.match_info["channel_id"] not in self._channel_payloads:
            raise ApiError(404, 10003, "Unknown Channel")
        return 204, None

    async def _not_found(self, request: web.Request, body: Any) -> tuple[int, Any]:
        raise ApiError(404, 0, "404: Not Found")

    async def _application(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, {
            "id": self.application_id,
            "name": "rtx_relay",
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.users["alice"],
            "verify_key": "0" * 64,
            "team": None,
            "flags": 0,
            "bot": self.bot_user,
            "interactions_endpoint_url": None,
            "summary": "",
            "rpc_origins": [],
        }

    async def _gateway_bot(self, request: web.Request, body: Any) -> tuple[int, Any]:
        if request.path.endswith("/gateway"):
            return 200, {"url": self.gateway_url}  # the unauthenticated variant has only the URL
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limit}

    async def _open_dm(self, request: web.Request, body: Json) -> tuple[int, Any]:
        uid = str(body.get("recipient_id"))
        if uid not in self._users_by_id:
            raise ApiError(400, 50007, "Cannot send messages to this user")  # guess
        return 200, self._channel_payloads[self._dm_channel_id(uid)]

    async def _get_channel(self, request: web.Request, body: Any) -> tuple[int, Any]:
        cid = request.match_info["channel_id"]
        if cid not in self._channel_payloads:
            raise ApiError(404, 10003, "Unknown Channel")
        return 200, self._channel_payloads[cid]

    async def _sync_commands(self, request: web.Request, body: list[Json]) -> tuple[int, Any]:
        if request.match_info["application_id"] != self.application_id:
            raise ApiError(403, 50001, "Missing Access")
        guild_id = request.match_info.get("guild_id")
        errors: Json = {}
        for i, cmd in enumerate(body):
            errors.update(self._command_errors(str(i), cmd))
        if errors:
            raise ApiError(400, 50035, "Invalid Form Body", errors)
        for key in [k for k in self.commands if k[0] == guild_id]:
            del self.commands[key]  # PUT is a bulk overwrite
        out = []
        for cmd in body:
            echoed = {
                **cmd,
                "id": self._ids.next(),
                "application_id": self.application_id,
                "version": self._ids.next(),
                "type": cmd.get("type", 1),
            }
            echoed.setdefault("description", "")
            if guild_id:
                echoed["guild_id"] = guild_id
            self.commands[(guild_id, cmd["name"])] = echoed
            out.append(echoed)
        return 200, out

    @staticmethod
    def _command_errors(prefix: str, cmd: Json) -> Json:
        # Simplified: real names allow any lowercase letter/number in many scripts; codes as seen
        # in public client code handling these errors (guess for the exact wording).
        name, desc = str(cmd.get("name", "")), cmd.get("description", "")
        errs: Json = {}
        if (
            not (1 <= len(name) <= 32)
            or not all(c.isalnum() or c in "-_" for c in name)
            or (cmd.get("type", 1) == 1 and name != name.lower())
        ):
            errs["name"] = {
                "_errors": [
                    {
                        "code": "APPLICATION_COMMAND_INVALID_NAME",
                        "message": "Command name is invalid",
                    }
                ]
            }
        if cmd.get("type", 1) == 1 and not (1 <= len(desc or "") <= 100):
            errs["description"] = {
                "_errors": [
                    {
                        "code": "BASE_TYPE_BAD_LENGTH",
                        "message": "Must be between 1 and 100 in length.",
                    }
                ]
            }
        errs.update(FakeDiscord._localization_errors(cmd))
        for j, opt in enumerate(cmd.get("options") or []):
            sub = FakeDiscord._command_errors(str(j), {**opt, "type": 1})
            if sub:
                errs.setdefault("options", {}).update(sub)
        return {prefix: errs} if errs else {}

    @staticmethod
    def _localization_errors(cmd: Json) -> Json:
        """``name_localizations``/``description_localizations``: keys are Discord's locales
        (an unknown one: BASE_TYPE_CHOICES under that key, kordlib/kord#594); a translated
        name follows the name rules (APPLICATION_COMMAND_INVALID_NAME on the field as a
        whole, discord/discord-api-docs#7712); a translated description the length rule."""
        errs: Json = {}
        for localized in ("name_localizations", "description_localizations"):
            for locale, value in (cmd.get(localized) or {}).items():
                if locale not in DISCORD_LOCALES:
                    choices = ", ".join(repr(known) for known in sorted(DISCORD_LOCALES))
                    errs.setdefault(localized, {})[locale] = {"_errors": [{
                        "code": "BASE_TYPE_CHOICES",
                        "message": f"Value must be one of ({choices}).",
                    }]}
                elif localized == "name_localizations" and not _valid_name(str(value)):
                    errs[localized] = {"_errors": [{"code": "APPLICATION_COMMAND_INVALID_NAME",
                                                    "message": "Command name is invalid"}]}
                elif localized == "description_localizations" and not 1 <= len(str(value)) <= 100:
                    errs.setdefault(localized, {})[locale] = {"_errors": [{  # GUESS: as description
                        "code": "BASE_TYPE_BAD_LENGTH",
                        "message": "Must be between 1 and 100 in length.",
                    }]}
        return errs

    def _validate_write(self, body: Json) -> None:
        errors = p.message_form_errors(body)
        if errors:
            raise ApiError(400, 50035, "Invalid Form Body", errors)

    def _store(self, msg: StoredMessage, allowed_mentions: Any) -> StoredMessage:
        msg.revisions.append(json.loads(json.dumps(msg.payload)))
        msg.allowed_mentions.append(allowed_mentions)
        self._messages[msg.id] = msg
        self._notify()
        return msg

    def _reference(self, ref: StoredMessage) -> Json:
        out = {"type": 0, "message_id": ref.id, "channel_id": ref.channel_id}
        if "guild_id" in ref.payload:
            out["guild_id"] = ref.payload["guild_id"]
        return out

    def _bot_message(
        self,
        channel_id: str,
        body: Json,
        *,
        msg_type: int = 0,
        interaction: InteractionRecord | None = None,
        flags: int = 0,
    ) -> StoredMessage:
        if channel_id not in self._channel_payloads:
            raise ApiError(404, 10003, "Unknown Channel")
        guild_id = self.guild_id if channel_id in self.channels.values() else None
        payload = p.message(
            self._ids.next(),
            channel_id,
            self.bot_user,
            str(body.get("content") or ""),
            guild_id=guild_id,
            member_payload=self._member(self.bot_id, with_user=False),
            embeds=body.get("embeds"),
            components=body.get("components"),
            flags=flags | int(body.get("flags") or 0),
            msg_type=msg_type,
        )
        if interaction is not None:
            payload.update(
                webhook_id=self.application_id,
                application_id=self.application_id,
                interaction_metadata={
                    "id": interaction.id,
                    "type": interaction.type,
                    "user": self._users_by_id[interaction.user_id],
                    "authorizing_integration_owners": interaction.payload[
                        "authorizing_integration_owners"
                    ],
                },
            )
        return StoredMessage(
            payload["id"],
            channel_id,
            payload,
            interaction_id=interaction.id if interaction else None,
        )

    async def _announce(self, event: str, msg: StoredMessage) -> None:
        if not self.echo_own_messages or msg.payload["flags"] & p.FLAG_EPHEMERAL:
            return
        if self._session_id is None:
            return
        if event == "MESSAGE_DELETE":
            data = {"id": msg.id, "channel_id": msg.channel_id}
            if "guild_id" in msg.payload:
                data["guild_id"] = msg.payload["guild_id"]
            await self.dispatch(event, data)
        else:
            await self.dispatch(event, msg.payload)

    def _apply_edit(self, msg: StoredMessage, body: Json, *, clear_loading: bool = False) -> None:
        self._validate_write(body)
        new = dict(msg.payload)
        for key in ("embeds", "components", "attachments"):
            if key in body and body[key] is not None:
                new[key] = body[key]
        if "content" in body:
            new["content"] = body["content"] or ""
        if "flags" in body and body["flags"] is not None:  # only SUPPRESS_EMBEDS is editable
            new["flags"] = (new["flags"] & ~4) | (int(body["flags"]) & 4)
        if clear_loading:
            new["flags"] = new["flags"] & ~p.FLAG_LOADING
        if p.is_empty_message(new):
            raise ApiError(400, 50006, "Cannot send an empty message")
        new["edited_timestamp"] = p.iso_now()
        msg.payload = new
        self._store(msg, body.get("allowed_mentions"))

    async def _create_message(self, request: web.Request, body: Json) -> tuple[int, Any]:
        cid = request.match_info["channel_id"]
        self._validate_write(body)
        if p.is_empty_message(body):
            raise ApiError(400, 50006, "Cannot send an empty message")
        ref_data = body.get("message_reference")
        ref: StoredMessage | None = None
        if ref_data:
            # discord.py sends message_id as an int; Discord returns snowflakes as strings.
            ref = self._messages.get(str(ref_data.get("message_id")))
            if ref is None and ref_data.get("fail_if_not_exists", True):
                raise ApiError(
                    400,
                    50035,
                    "Invalid Form Body",
                    p.form_error(
                        ["message_reference"],
                        "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                        "Unknown message",
                    ),
                )  # guess: wording
        msg = self._bot_message(cid, body, msg_type=19 if ref else 0)
        if ref is not None:
            msg.payload.update(
                message_reference=self._reference(ref), referenced_message=ref.payload
            )
        self._store(msg, body.get("allowed_mentions"))
        await self._announce("MESSAGE_CREATE", msg)
        return 200, msg.payload

    async def _channel_message(self, request: web.Request, body: Any) -> tuple[int, Any]:
        cid, mid = request.match_info["channel_id"], request.match_info["message_id"]
        if cid not in self._channel_payloads:
            raise ApiError(404, 10003, "Unknown Channel")
        msg = self._messages.get(mid)
        if msg is None or msg.deleted or msg.channel_id != cid:
            raise _unknown_message()
        if request.method == "GET":
            return 200, msg.payload
        if msg.author_id != self.bot_id:
            if request.method == "PATCH":
                raise ApiError(403, 50005, "Cannot edit a message authored by another user")
            raise ApiError(403, 50013, "Missing Permissions")  # no MANAGE_MESSAGES modelled
        if request.method == "DELETE":
            msg.deleted = True
            self._notify()
            await self._announce("MESSAGE_DELETE", msg)
            return 204, None
        self._apply_edit(msg, body or {})
        await self._announce("MESSAGE_UPDATE", msg)
        return 200, msg.payload

    def _interaction_for_webhook(self, request: web.Request) -> InteractionRecord:
        mi = request.match_info
        rec = self._interactions_by_token.get(mi["webhook_token"])
        if rec is None or mi["webhook_id"] != self.application_id:
            raise _invalid_webhook_token()  # guess: unknown token answered like an expired one
        if self.clock() - rec.created_at > self.token_lifetime:
            raise _invalid_webhook_token()
        return rec

    async def _callback(self, request: web.Request, body: Json) -> tuple[int, Any]:
        mi = request.match_info
        rec = self.interactions.get(mi["webhook_id"])
        try:
            if rec is None or rec.token != mi["webhook_token"]:
                raise ApiError(404, 10062, "Unknown interaction")
            if rec.acked:
                raise ApiError(400, 40060, "Interaction has already been acknowledged.")
            if self.clock() - rec.created_at > self.ack_deadline:
                raise ApiError(404, 10062, "Unknown interaction")
            result = await self._respond(rec, int(body.get("type", 0)), body.get("data") or {})
        except ApiError as exc:
            if rec is not None:
                rec.callback_statuses.append(exc.status)
            raise
        rec.callback_statuses.append(200)
        return 200, result if request.query.get("with_response") in ("1", "true") else None

    async def _respond(self, rec: InteractionRecord, rtype: int, data: Json) -> Json:
        """Callback types: 4 message, 5 deferred message, 6 deferred update, 7 update, 9 modal."""
        allowed = {4, 5, 9} if rec.type == 2 else {4, 5, 6, 7, 9}
        if rtype not in allowed:
            raise ApiError(
                400,
                50035,
                "Invalid Form Body",
                p.form_error(
                    ["type"],
                    "INTERACTION_RESPONSE_TYPE_INVALID",
                    "Invalid interaction response type",
                ),
            )
        resource: Json = {"type": rtype}
        loading = False
        if rtype in (4, 5):
            if rtype == 4:
                self._validate_write(data)
                if p.is_empty_message(data):
                    raise ApiError(400, 50006, "Cannot send an empty message")
            loading = rtype == 5
            flags = int(data.get("flags") or 0) & p.FLAG_EPHEMERAL
            body = data if rtype == 4 else {}
            msg = self._bot_message(
                rec.channel_id,
                body,
                msg_type=20,
                interaction=rec,
                flags=flags | (p.FLAG_LOADING if loading else 0),
            )
            self._store(msg, data.get("allowed_mentions"))
            rec.original_message_id = msg.id
            resource["message"] = msg.payload
            await self._announce("MESSAGE_CREATE", msg)
        elif rtype in (6, 7):
            target = self.message(rec.payload["message"]["id"])
            rec.original_message_id = target.id  # @original now means the component's message
            if rtype == 7:
                self._apply_edit(target, data)
                resource["message"] = target.payload
                await self._announce("MESSAGE_UPDATE", target)
        rec.response_type, rec.acked_at = rtype, self.clock()
        self._notify()
        original = self._messages.get(rec.original_message_id or "")
        interaction: Json = {
            "id": rec.id,
            "type": rec.type,
            "response_message_loading": loading,
            "response_message_ephemeral": bool(
                original and original.payload["flags"] & p.FLAG_EPHEMERAL
            ),
        }
        if original is not None:
            interaction["response_message_id"] = original.id
        # guess: the resource for type 6 carries no message.
        return {"interaction": interaction, "resource": resource}

    async def _webhook_message(self, request: web.Request, body: Any) -> tuple[int, Any]:
        rec = self._interaction_for_webhook(request)
        mid = request.match_info.get("message_id") or rec.original_message_id
        if mid is None or (mid != rec.original_message_id and mid not in rec.followup_ids):
            raise _unknown_message()  # guess: @original before any response
        msg = self._messages.get(mid)
        if msg is None or msg.deleted:
            raise _unknown_message()
        if request.method == "GET":
            return 200, msg.payload
        if request.method == "DELETE":
            msg.deleted = True
            self._notify()
            await self._announce("MESSAGE_DELETE", msg)
            return 204, None
        self._apply_edit(msg, body or {}, clear_loading=True)
        await self._announce("MESSAGE_UPDATE", msg)
        return 200, msg.payload

    async def _followup(self, request: web.Request, body: Json) -> tuple[int, Any]:
        rec = self._interaction_for_webhook(request)
        if not rec.acked:
            raise ApiError(404, 10015, "Unknown Webhook")  # guess: follow-up before any ack
        self._validate_write(body)
        if p.is_empty_message(body):
            raise ApiError(400, 50006, "Cannot send an empty message")
        flags = int(body.get("flags") or 0) & p.FLAG_EPHEMERAL
        # guess: follow-ups to a slash command are typed like the response (20), not DEFAULT.
        msg = self._bot_message(
            rec.channel_id, body, msg_type=20 if rec.type == 2 else 0, interaction=rec, flags=flags
        )
        self._store(msg, body.get("allowed_mentions"))
        rec.followup_ids.append(msg.id)
        await self._announce("MESSAGE_CREATE", msg)
        wait = request.query.get("wait", "0").lower() in ("1", "true")
        return (200, msg.payload) if wait else (204, None)


# Discord's locales (developer docs, "Locales"): the keys of name/description localizations.
DISCORD_LOCALES = frozenset({
    "id", "da", "de", "en-GB", "en-US", "es-ES", "es-419", "fr", "hr", "it", "lt", "hu", "nl",
    "no", "pl", "pt-BR", "ro", "fi", "sv-SE", "vi", "tr", "cs", "el", "bg", "ru", "uk", "hi",
    "th", "zh-CN", "ja", "zh-TW", "ko",
})


def _valid_name(name: str) -> bool:
    """A command or option name: 1-32 letters, digits, "-" or "_", in any script, lowercase
    where the script has case (simplified, as in ``_command_errors``)."""
    return (1 <= len(name) <= 32 and all(c.isalnum() or c in "-_" for c in name)
            and name == name.lower())


def point_discord_py_at(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    """discord.py has no base-URL option, so patch the two class attributes every REST Route
    and every fresh gateway connection read."""
    import discord.gateway
    import discord.http

    monkeypatch.setattr(discord.http.Route, "BASE", fake.base_url)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
    )
