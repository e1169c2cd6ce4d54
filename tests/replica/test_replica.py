"""Checks of the Chat with RTX replica itself, over the raw Gradio queue protocol.

No gradio import here: the replica runs from its own venv (tests/replica/envs.py) and these
tests talk to it with aiohttp, as rtxrelay's client will. One server per variant for the
whole session; the first run builds the venvs (seconds with a warm uv cache).
"""

from __future__ import annotations

import itertools
import json
import re
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.replica import fake_model
from tests.replica.launcher import LAUNCH_RE, Replica
from tests.replica.variants import REQUIRED_VARIANTS, get_variant

pytestmark = pytest.mark.asyncio(loop_scope="session")

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)
# The send chain sits behind the model/dataset chains (40 here, 40 in one 0.2 capture).
CHAT_FN_MIN_INDEX = 30
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest_asyncio.fixture(scope="session", loop_scope="session", params=REQUIRED_VARIANTS)
async def rtx(request: pytest.FixtureRequest) -> AsyncIterator[Replica]:
    async with Replica(request.param, token_delay=0.001) as replica:
        yield replica


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def rtx_https() -> AsyncIterator[Replica]:
    # ChatRTX 0.3 (gradio 4.26) serves https with a certificate it generates itself.
    async with Replica("4.26", https=True, token_delay=0.001) as replica:
        yield replica


# ---- a minimal raw queue client (the real one lives in core/) ----------------------------


def _ssl(replica: Replica) -> ssl.SSLContext | None:
    if replica.ca_file is None:
        return None
    return ssl.create_default_context(cafile=str(replica.ca_file))


async def _config(session: aiohttp.ClientSession, replica: Replica) -> dict[str, Any]:
    async with session.get(f"{replica.base_url}/config", ssl=_ssl(replica)) as resp:
        assert resp.status == 200
        return await resp.json()


def _chat_chain(config: dict[str, Any]) -> tuple[int, list[int]]:
    """The streamed chat fn_index and its trigger chain (first dependency first)."""
    components = {c["id"]: c for c in config["components"]}
    chatbot = next(
        c["id"] for c in config["components"]
        if c.get("props", {}).get("elem_id") == "main-chatbot-window"
    )
    deps = config["dependencies"]
    for fn_index, dep in enumerate(deps):
        generator = dep.get("types", {}).get("generator", dep.get("generator"))
        io = dep["inputs"]
        if (generator and io == dep["outputs"] and len(io) == 2 and io[0] == chatbot
                and components[io[1]]["type"] == "state"):
            chain = [fn_index]
            while deps[chain[0]].get("trigger_after") is not None:
                chain.insert(0, deps[chain[0]]["trigger_after"])
            return fn_index, chain
    raise AssertionError("no generator dependency over [chatbot, state]")


def _apply(value: Any, ops: list[list[Any]]) -> Any:
    """Apply sse_v2+ edit operations ([op, path, value]) to the previous output value."""
    for op, path, new in ops:
        if not path:
            value = new if op == "replace" else value + new
            continue
        target = value
        for key in path[:-1]:
            target = target[key]
        last = path[-1]
        if op == "replace":
            target[last] = new
        elif op == "append":
            target[last] += new
        elif op == "add":
            target.insert(last, new)
        elif op == "delete":
            del target[last]
        else:
            raise AssertionError(f"unknown edit op {op!r}")
    return value


async def _call(
    session: aiohttp.ClientSession, replica: Replica, config: dict[str, Any], fn_index: int,
    data: list[Any], *, cookie: str | None,
) -> tuple[list[Any], dict[str, Any]]:
    """join + stream one call; returns the successive chatbot values and the final message."""
    prefix = config.get("api_prefix") or ""
    session_hash = uuid.uuid4().hex[:11]
    headers = {"Cookie": f"_s_chat_={cookie}"} if cookie else {}
    body = {"data": data, "event_data": None, "fn_index": fn_index, "trigger_id": None,
            "session_hash": session_hash}
    base = replica.base_url + prefix
    async with session.post(f"{base}/queue/join", json=body, headers=headers,
                            ssl=_ssl(replica)) as resp:
        assert resp.status == 200, await resp.text()
        event_id = (await resp.json())["event_id"]
    values: list[Any] = []
    async with session.get(f"{base}/queue/data", params={"session_hash": session_hash},
                           headers=headers, ssl=_ssl(replica)) as resp:
        assert resp.status == 200
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("event_id") not in (event_id, None):
                continue
            if msg["msg"] == "process_generating":
                out = msg["output"]["data"][0]
                diffs = replica.variant.diffs and values
                values.append(_apply(json.loads(json.dumps(values[-1])), out) if diffs else out)
            elif msg["msg"] == "process_completed":
                if msg.get("success") and msg["output"]["data"]:
                    values.append(msg["output"]["data"][0])
                return values, msg
    raise AssertionError("stream ended without process_completed")


# ---- the tests -------------------------------------------------------------------------


async def test_launch_line(rtx: Replica) -> None:
    line = next(x for x in rtx.output if x.startswith("Open "))
    assert line == f"Open {rtx.url} in browser to start Chat with RTX"
    match = LAUNCH_RE.match(line)
    assert match and match.group("scheme") == "http"
    assert rtx.url == f"http://127.0.0.1:{rtx.port}?cookie={rtx.cookie}&__theme=dark"
    assert rtx.port is not None and 1024 <= rtx.port <= 49000
    assert UUID_RE.match(rtx.cookie or "")


async def test_config_exposes_chat_generator(rtx: Replica) -> None:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        config = await _config(session, rtx)
    variant = get_variant(rtx.variant)
    assert config["protocol"] == variant.protocol
    assert (config.get("api_prefix") or "") == variant.api_prefix
    fn_index, chain = _chat_chain(config)
    # Not at a fixed, small index: other chains of the ChatRTX graph come first.
    assert fn_index >= CHAT_FN_MIN_INDEX
    first = config["dependencies"][chain[0]]
    assert sorted(t[1] for t in first["targets"]) == ["click", "submit"]
    assert len(chain) == 6  # validate, raise, before, show/hide, process_input, output


@pytest.mark.parametrize(
    ("query", "history"),
    [
        ("What is DLSS?", []),
        ("and before? [recall] [refs]", [["first question", "first answer"],
                                         ["<b>second</b> & more", "second answer"]]),
    ],
    ids=["plain", "recall-refs"],
)
async def test_stream_is_cumulative(rtx: Replica, query: str, history: list[list[str]]
                                    ) -> None:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        config = await _config(session, rtx)
        fn_index, _ = _chat_chain(config)
        values, final = await _call(session, rtx, config, fn_index,
                                    [[*history, [query, None]], None], cookie=rtx.cookie)
    assert final["success"] is True
    answers = [v[-1][1] for v in values]
    expected = fake_model.answer_text(query, history)
    assert answers[-1] == expected
    assert len(answers) > 5  # streamed, not one piece
    for earlier, later in itertools.pairwise(answers):
        assert later.startswith(earlier)
    assert values[-1][:-1] == history
    if "[recall]" in query:
        assert "- first question\n- <b>second</b> & more" in expected


async def test_missing_cookie_is_invalid_session(rtx: Replica) -> None:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        config = await _config(session, rtx)
        _, chain = _chat_chain(config)
        validate_and_raise = chain[1]
        _, final = await _call(session, rtx, config, validate_and_raise, [], cookie=None)
        assert final["success"] is False
        assert "Invalid session" in final["output"]["error"]
        _, wrong = await _call(session, rtx, config, validate_and_raise, [],
                               cookie=str(uuid.uuid4()))
        assert wrong["success"] is False
        _, good = await _call(session, rtx, config, validate_and_raise, [], cookie=rtx.cookie)
        assert good["success"] is True


async def test_https_serves_its_own_certificate(rtx_https: Replica) -> None:
    assert rtx_https.url and rtx_https.url.startswith("https://127.0.0.1:")
    assert rtx_https.ca_file is not None and rtx_https.ca_file.is_file()
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        config = await _config(session, rtx_https)  # verified against ca_file
        fn_index, _ = _chat_chain(config)
        values, _ = await _call(session, rtx_https, config, fn_index,
                                [[["over tls", None]], None], cookie=rtx_https.cookie)
        assert values[-1][-1][1] == fake_model.answer_text("over tls", [])
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            # The system trust store does not know the self-signed certificate.
            await session.get(f"{rtx_https.base_url}/config")


async def test_die_then_restart_moves_port_and_cookie() -> None:
    async with Replica("4.26", token_delay=0.001) as replica, aiohttp.ClientSession(
        timeout=HTTP_TIMEOUT
    ) as session:
        config = await _config(session, replica)
        fn_index, _ = _chat_chain(config)
        with pytest.raises(aiohttp.ClientError):
            # The server exits mid-answer: the event stream breaks off.
            await _call(session, replica, config, fn_index, [[["bye [die]", None]], None],
                        cookie=replica.cookie)
        assert await replica.wait(limit=10) == 3
        old_port, old_cookie = replica.port, replica.cookie
        await replica.restart()
        assert (replica.port, replica.cookie) != (old_port, old_cookie)
        assert replica.returncode is None
        assert (await _config(session, replica))["protocol"] == "sse_v3"
