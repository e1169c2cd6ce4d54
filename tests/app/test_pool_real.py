"""A pool of real backends (issue 15): two Chat with RTX replicas and the llama.cpp server in
one line, from backends.toml through ``open_relay``; a replica killed mid-line; doctor and
/health listing every backend."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from pathlib import Path

import aiohttp
import pytest

from rtxrelay.app.doctor import run_doctor
from rtxrelay.app.serve import ApiSettings, serve
from rtxrelay.app.settings import Settings, load_settings
from rtxrelay.app.wiring import open_relay
from rtxrelay.core.backend import Queued, TextSoFar
from rtxrelay.core.conversation import ConversationService, Finished
from rtxrelay.core.errors import BackendErrorKind
from rtxrelay.core.pool import MemberState
from rtxrelay.core.store import ConversationKey, TurnStatus
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.llama.server import LlamaServer
from tests.replica.launcher import Replica, free_port
from tests.support.backends_toml import backends_toml, replicas

WAIT = 60.0
SLOW = "[delay=0.03] [len=500] "  # a replica answer of a few seconds: a line forms behind it


def key(user: str) -> ConversationKey:
    return ConversationKey("test", "pool", user)


def pool_settings(tmp_path: Path, toml: str) -> Settings:
    (tmp_path / "backends.toml").write_text(toml, encoding="utf-8")
    env_file = tmp_path / ".env"
    env_file.write_text(f"RTXRELAY_DB={tmp_path / 'pool.db'}\n", encoding="utf-8")
    settings = load_settings({}, env_file)
    # Probe a backend taken out every 0.2 s rather than 15 s: the test waits for it.
    return dataclasses.replace(settings, limits=dataclasses.replace(
        settings.limits, recovery_probe_interval=0.2))


class Asked:
    """One question's stream, drained in a task; ``texted`` is set at its first text."""

    def __init__(self, service: ConversationService, user: str, question: str) -> None:
        self.updates: list[object] = []
        self.texted = asyncio.Event()
        self.task = asyncio.create_task(self._drain(service, key(user), question))

    async def _drain(self, service: ConversationService, who: ConversationKey,
                     question: str) -> Finished:
        async for update in service.ask(who, question):
            self.updates.append(update)
            if isinstance(update, TextSoFar):
                self.texted.set()
        last = self.updates[-1]
        assert isinstance(last, Finished), self.updates
        return last

    @property
    def positions(self) -> list[int]:
        return [u.position for u in self.updates if isinstance(u, Queued)]


async def test_two_replicas_and_llama_cpp_answer_at_once_and_the_rest_wait_in_one_line(
        tmp_path: Path, llama: LlamaServer, rtx_pair: tuple[Replica, Replica]) -> None:
    desk, laptop = rtx_pair
    settings = pool_settings(tmp_path, replicas(desk=desk.url, laptop=laptop.url) + "\n" +
                             backends_toml({"name": "llama",
                                            "OPENAI_BASE_URL": llama.base_url,
                                            "MAX_CONCURRENT_JOBS": 1,
                                            "OPENAI_MAX_TOKENS": 48}))
    async with open_relay(settings) as relay:
        pool = relay.service.pool
        assert [(m.name, m.capacity, m.state) for m in pool.members] == [
            ("desk", 1, MemberState.UP), ("laptop", 1, MemberState.UP),
            ("llama", 1, MemberState.UP)]
        # Watched from before the first question: every backend busy at one moment.
        all_busy = asyncio.create_task(pool.until(lambda: pool.line[0] == 3))
        asked = [Asked(relay.service, f"u{i}", f"{SLOW}question {i}") for i in range(5)]
        finals = await asyncio.wait_for(asyncio.gather(*(a.task for a in asked)), WAIT)
        await asyncio.wait_for(all_busy, WAIT)
        assert [f.status for f in finals] == [TurnStatus.COMPLETE] * 5
        # The first three started at once, one per backend; the other two waited in the
        # pool's one line, told their places.
        assert [a.positions for a in asked[:3]] == [[], [], []]
        assert all(a.positions and a.positions[-1] == 1 for a in asked[3:])
        assert asked[4].positions[0] in (1, 2)
        replica_answers = [f for f in finals if "You asked: question" in f.text]
        assert 2 <= len(replica_answers) <= 4  # both replicas answered, llama the rest


async def test_a_replica_killed_mid_line_loses_nothing_and_is_probed_back_in(
        tmp_path: Path, rtx_pair: tuple[Replica, Replica]) -> None:
    laptop = rtx_pair[1]
    # desk is killed and restarted on its port: its own replica, the new process started
    # beside it in advance (warm_restarts) so the restart does not wait for Gradio's imports.
    async with Replica("4.26", token_delay=0.001, port=free_port(), cookie="desk",
                       warm_restarts=1) as desk:
        settings = pool_settings(tmp_path, replicas(desk=desk.url, laptop=laptop.url))
        async with open_relay(settings) as relay:
            service, pool = relay.service, relay.service.pool
            first = Asked(service, "ada", "hello")
            assert (await asyncio.wait_for(first.task, WAIT)).status is TurnStatus.COMPLETE
            # ada's next question goes to her last backend (desk); bob's to laptop; two more
            # wait behind them.
            on_desk = Asked(service, "ada", f"{SLOW}long on desk")
            await asyncio.wait_for(on_desk.texted.wait(), WAIT)
            on_laptop = Asked(service, "bob", f"{SLOW}long on laptop")
            await asyncio.wait_for(pool.until(lambda: pool.line == (2, 0)), WAIT)
            waiting = [Asked(service, f"w{i}", f"waiting {i}") for i in range(2)]
            await asyncio.wait_for(pool.until(lambda: pool.line == (2, 2)), WAIT)

            await desk.kill()  # the PC goes away mid-answer
            broken = await asyncio.wait_for(on_desk.task, WAIT)
            assert broken.status is TurnStatus.FAILED and broken.text  # told, partial kept
            assert broken.error is not None
            # The head of the line tried desk, found it gone, moved to laptop keeping its
            # place; desk is out and nobody else is sent there.
            finals = await asyncio.wait_for(asyncio.gather(
                on_laptop.task, *(w.task for w in waiting)), WAIT)
            assert [f.status for f in finals] == [TurnStatus.COMPLETE] * 3
            assert [f.text.split("You asked: ")[1][:9] for f in finals[1:]] == [
                "waiting 0", "waiting 1"]
            desk_member = pool.member("desk")
            assert desk_member is not None and desk_member.state is MemberState.DOWN
            assert desk_member.error is not None
            assert desk_member.error.kind is BackendErrorKind.UNREACHABLE

            # The conversation moves to laptop with its history (the failed turn is not
            # history; "hello" is).
            moved = Asked(service, "ada", "and now?")
            assert "[turns=1]" in (await asyncio.wait_for(moved.task, WAIT)).text

            # doctor and /health list every backend and say which one is down.
            out = io.StringIO()
            assert await run_doctor(settings, out) == 1
            report = out.getvalue()
            assert "OK    2 backends from" in report and "desk, laptop" in report
            assert "FIX   [desk] Chat with RTX" in report and "OK    [laptop]" in report
            health = await _health(service)
            assert health["status"] == "ok"
            assert [(b["name"], b["state"], b["reachable"]) for b in health["backends"]] == [
                ("desk", "down", False), ("laptop", "up", True)]
            assert health["queue"] == {"running": 0, "waiting": 0}

            await desk.restart()  # same port and cookie: its probe brings it back in
            await asyncio.wait_for(pool.until(
                lambda: desk_member.state is MemberState.UP), WAIT)
            back = Asked(service, "cy", "desk again?")
            assert (await asyncio.wait_for(back.task, WAIT)).status is TurnStatus.COMPLETE

    # Nothing lost: every question stored, every turn finished.
    async with SqliteStore(tmp_path / "pool.db") as store:
        assert await store.recover_pending(lambda owner: False) == 0


async def test_another_pc_joins_by_running_rtxrelay_serve_with_a_key(
        tmp_path: Path, rtx_pair: tuple[Replica, Replica]) -> None:
    """The remote PC: a replica behind its own `rtxrelay serve` with RTXRELAY_API_KEY. The hub
    lists it as an OpenAI-compatible backend beside its own replica, finds it is rtxrelay and
    how many it answers at once (1: never more sent to wait in its line), and uses both."""
    remote_rtx, local_rtx = rtx_pair
    async with aiohttp.ClientSession(trust_env=False) as http, \
            SqliteStore(tmp_path / "remote.db") as remote_store:
        from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
        from rtxrelay.backends.chatrtx.launch_url import parse_launch_url

        remote = ConversationService(ChatRtxBackend(http, parse_launch_url(remote_rtx.url)),
                                     remote_store)
        stop = asyncio.Event()
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        serving = asyncio.create_task(serve(remote, ApiSettings(port=0, api_key="office-key"),
                                            stop, ready=listening.set_result))
        try:
            url = await asyncio.wait_for(asyncio.shield(listening), WAIT)
            settings = pool_settings(tmp_path, backends_toml(
                {"name": "office", "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "office-key"},
                {"name": "desk", "RTX_URL": local_rtx.url}))
            async with open_relay(settings) as relay:
                pool = relay.service.pool
                assert [(m.name, m.capacity, m.state) for m in pool.members] == [
                    ("office", 1, MemberState.UP), ("desk", 1, MemberState.UP)]
                both = asyncio.create_task(pool.until(lambda: pool.line[0] == 2))
                # q0 and q1 keep both busy; q2 only has to wait, not to be long itself.
                asked = [Asked(relay.service, f"u{i}", f"{SLOW}q{i}" if i < 2 else f"q{i}")
                         for i in range(3)]
                finals = await asyncio.wait_for(asyncio.gather(*(a.task for a in asked)), WAIT)
                await asyncio.wait_for(both, WAIT)
                assert [f.status for f in finals] == [TurnStatus.COMPLETE] * 3
                assert all("You asked: q" in f.text for f in finals)
                assert asked[2].positions  # the third waited here, not in the office's line
        finally:
            stop.set()
            await asyncio.wait_for(serving, WAIT)
            await remote.close()


async def _health(service: ConversationService) -> dict:  # type: ignore[type-arg]
    stop = asyncio.Event()
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(service, ApiSettings(port=0), stop,
                                     ready=listening.set_result))
    try:
        url = await asyncio.wait_for(asyncio.shield(listening), WAIT)
        async with aiohttp.ClientSession(trust_env=False) as http, \
                http.get(url.removesuffix("/v1") + "/health") as response:
            return await response.json()  # type: ignore[no-any-return]
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


pytestmark = pytest.mark.timeout(240)
