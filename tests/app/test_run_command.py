"""``rtxrelay run`` as an operator runs it: the installed command in a subprocess, Telegram
through the fake Bot API (served from this test process), answers from a real replica.

The child gets a clean environment (no proxies, no stray settings) and runs in ``tmp_path``,
so no ``.env`` from the checkout or the developer's machine is read. Its output goes to files,
so a chatty child can never block on a full pipe; every wait is bounded and the child is
killed on the way out whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from rtxrelay.backends.chatrtx.answer_html import convert_answer
from rtxrelay.core.store import TurnStatus
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.fakes.telegram_api import FakeTelegram
from tests.replica import fake_model
from tests.replica.launcher import Replica, free_port

START_TIMEOUT = 30.0  # interpreter start, imports, getMe, setMyCommands, first getUpdates
ANSWER_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0  # the bot gives answers in flight up to 30 s; none are in flight here
EXIT_INTERRUPTED = 130  # cli.main turns KeyboardInterrupt (Ctrl+C) into 128 + SIGINT
WRONG_TOKEN = "7000001234:AAWrongTokenRevokedInBotFather000000"
# What a Python program needs from the parent environment, on POSIX and Windows; everything
# else (proxies, RTX_URL, tokens, PYTHON* flags) stays out.
PASSED_THROUGH = ("PATH", "HOME", "USERPROFILE", "SYSTEMROOT", "SYSTEMDRIVE", "WINDIR",
                  "COMSPEC", "TEMP", "TMP", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE")


def rtxrelay_command() -> list[str]:
    """The ``rtxrelay`` console script next to this interpreter (what a user types), or the
    module when the package was installed without its scripts."""
    script = shutil.which("rtxrelay", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "rtxrelay.app.cli"]


def clean_env(**settings: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONIOENCODING"] = "utf-8"  # the output is read back as UTF-8 on every platform
    env.update(settings)
    return env


@dataclass
class RunningCli:
    proc: asyncio.subprocess.Process
    stdout: Path
    stderr: Path

    def output(self) -> str:
        """Everything the child printed so far (the log goes to stderr)."""
        out = self.stdout.read_text(encoding="utf-8", errors="replace")
        err = self.stderr.read_text(encoding="utf-8", errors="replace")
        return f"--- stdout ---\n{out}--- stderr ---\n{err}"

    async def wait_for(self, fake: FakeTelegram, predicate: Callable[[], bool], what: str,
                       timeout: float) -> None:
        """Until ``predicate`` holds over the fake's state; fails at once if the child exits."""
        state = asyncio.ensure_future(fake.wait_until(predicate, timeout=timeout))
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            await asyncio.wait({state, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (state, exited):
                if not task.done():
                    task.cancel()
            await asyncio.gather(state, exited, return_exceptions=True)
        if state.cancelled():
            pytest.fail(f"rtxrelay exited ({self.proc.returncode}) before {what}:\n"
                        f"{self.output()}")
        if state.exception() is not None:
            pytest.fail(f"no {what} within {timeout}s ({state.exception()}):\n{self.output()}")

    async def wait_exit(self, timeout: float) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            pytest.fail(f"rtxrelay still running {timeout}s later:\n{self.output()}")

    async def interrupt(self) -> int:
        """Ctrl+C, as at the operator's terminal; returns the exit code."""
        if sys.platform == "win32":
            # A console Ctrl+C reaches the whole process group, this test runner included.
            pytest.skip("Ctrl+C cannot be sent to a single child process on Windows")
        self.proc.send_signal(signal.SIGINT)
        return await self.wait_exit(EXIT_TIMEOUT)


@contextlib.asynccontextmanager
async def rtxrelay_run(tmp_path: Path, env: dict[str, str]) -> AsyncIterator[RunningCli]:
    """``rtxrelay run`` in ``tmp_path``; killed on the way out if it is still running."""
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *rtxrelay_command(), "run",
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, cwd=tmp_path, env=env,
        )
    try:
        yield RunningCli(proc, stdout, stderr)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 15)


def bot_env(fake: FakeTelegram, rtx_url: str, tmp_path: Path, *, token: str) -> dict[str, str]:
    # TELEGRAM_API_URL is a Bot API server's ".../bot" prefix (the file URL is derived from it).
    return clean_env(TELEGRAM_TOKEN=token, TELEGRAM_API_URL=fake.base_url, RTX_URL=rtx_url,
                     RTXRELAY_DB=str(tmp_path / "relay.db"))


def expected(question: str, history: list[list[str | None]] | None = None) -> str:
    return convert_answer(fake_model.answer_text(question, history or [])).text


async def ask(cli: RunningCli, fake: FakeTelegram, user: dict[str, object], question: str) -> str:
    """Send a private message; the bot's next message in that chat (its final answer: private
    chats stream through drafts, then send the finished text as one message)."""
    chat = int(str(user["id"]))
    before = len(fake.bot_messages(chat))
    fake.inject_private_text(user, question)
    await cli.wait_for(fake, lambda: len(fake.bot_messages(chat)) > before,
                       f"an answer to {question!r}", ANSWER_TIMEOUT)
    return fake.bot_messages(chat)[before].text


async def test_run_answers_a_telegram_conversation_and_stops_on_ctrl_c(
    rtx_426: Replica, tmp_path: Path
) -> None:
    async with FakeTelegram() as fake:
        env = bot_env(fake, rtx_426.url, tmp_path, token=fake.token)
        async with rtxrelay_run(tmp_path, env) as cli:
            await cli.wait_for(fake, lambda: fake.parked_polls >= 1, "getUpdates polling",
                               START_TIMEOUT)
            assert fake.calls_to("getMe") and fake.calls_to("setMyCommands")
            # One menu by default and one per language it speaks (Telegram: "en", "zh").
            assert len(fake.commands) == 3
            for commands in fake.commands.values():
                assert {c["command"] for c in commands} == {
                    "ask", "reset", "cancel", "retry", "language", "help"}

            user = fake.make_user("Alice")
            first = "what is RTX? [len=600]"
            assert await ask(cli, fake, user, first) == expected(first)
            assert fake.calls_to("sendMessageDraft"), "private chats stream through drafts"

            # [recall] lists the earlier questions the relay sent as history: the conversation
            # continues. Telegram shows the Markdown list with bullets.
            second = "and before that? [recall]"
            history: list[list[str | None]] = [[first, fake_model.answer_text(first, [])]]
            want = expected(second, history).replace("\n- ", "\n• ")
            assert await ask(cli, fake, user, second) == want
            assert "[turns=1]" in want and "• what is RTX?" in want

            code = await cli.interrupt()
            output = cli.output()
            assert code == EXIT_INTERRUPTED, output
            assert "Traceback" not in output, output
            # No secret in the log: the Chat with RTX cookie, the token or its secret half.
            assert rtx_426.cookie is not None and rtx_426.cookie not in output
            assert fake.token.split(":", 1)[1] not in output, output

    async with SqliteStore(tmp_path / "relay.db") as store:
        turns = await store.turns_for_key(f"telegram:{user['id']}:{user['id']}")
    assert [(t.question, t.status) for t in turns] == [
        (first, TurnStatus.COMPLETE), (second, TurnStatus.COMPLETE)]
    assert not (tmp_path / "rtxrelay.db").exists(), "RTXRELAY_DB must be honoured"


async def test_run_with_a_rejected_token_fails_clearly_without_showing_it(
    tmp_path: Path,
) -> None:
    async with FakeTelegram() as fake:  # it answers 401 Unauthorized to any other token
        env = bot_env(fake, f"http://127.0.0.1:{free_port()}?cookie=unused", tmp_path,
                      token=WRONG_TOKEN)
        async with rtxrelay_run(tmp_path, env) as cli:
            code = await cli.wait_exit(EXIT_TIMEOUT)  # stops instead of hanging
            output = cli.output()
    assert [(c.method, c.status) for c in fake.calls] == [("getMe", 401)]
    assert code != 0, "a service manager must see that the bot did not start"
    assert "TELEGRAM_TOKEN" in output and "rejected" in output, "name the setting to fix"
    assert WRONG_TOKEN.split(":", 1)[1] not in output, output
    assert "Traceback" not in output, output


@pytest.mark.fault('4', "SIGTERM mid-answer: 'Stopped', turn interrupted, exit 0")
async def test_sigterm_stops_like_ctrl_c_and_lands_the_answer_as_stopped(fault,
    rtx_426: Replica, tmp_path: Path
) -> None:
    """A service manager (systemd, Docker, `kill`) stops with SIGTERM: the answer being
    written ends as '⏹ Stopped.' in the chat and 'interrupted' in the database, and the
    exit code says a clean stop."""
    if sys.platform == "win32":
        pytest.skip("SIGTERM cannot be sent to a child process on Windows")
    async with FakeTelegram() as fake:
        env = bot_env(fake, rtx_426.url, tmp_path, token=fake.token)
        env["TELEGRAM_PRIVATE_STREAMING"] = "edit"  # a message to look at while it streams
        async with rtxrelay_run(tmp_path, env) as cli:
            await cli.wait_for(fake, lambda: fake.parked_polls >= 1, "getUpdates polling",
                               START_TIMEOUT)
            user = fake.make_user("Alice")
            chat = int(str(user["id"]))
            fake.inject_private_text(user, "a long one [len=20000] [delay=0.02]")
            await cli.wait_for(fake, lambda: "▍" in fake.chat_text(chat), "a streaming answer",
                               ANSWER_TIMEOUT)
            cli.proc.send_signal(signal.SIGTERM)
            code = await cli.wait_exit(EXIT_TIMEOUT)
            output = cli.output()
            text = fake.chat_text(chat)
    assert code == 0, output
    assert "Traceback" not in output, output
    assert text.rstrip().endswith("⏹ Stopped.") and "▍" not in text, text
    async with SqliteStore(tmp_path / "relay.db") as store:
        (turn,) = await store.turns_for_key(f"telegram:{chat}:{chat}")
    assert turn.status is TurnStatus.INTERRUPTED and turn.answer
    fault(kept=1, stale=text.count("▍"))


@pytest.mark.fault('14', 'LOG_LEVEL=DEBUG: no question or answer in the log')
async def test_debug_logging_never_writes_questions_or_answers(fault,
    rtx_426: Replica, tmp_path: Path
) -> None:
    async with FakeTelegram() as fake:
        env = bot_env(fake, rtx_426.url, tmp_path, token=fake.token)
        env["LOG_LEVEL"] = "DEBUG"
        async with rtxrelay_run(tmp_path, env) as cli:
            await cli.wait_for(fake, lambda: fake.parked_polls >= 1, "getUpdates polling",
                               START_TIMEOUT)
            user = fake.make_user("Alice")
            secret = "what does quokkazebra mean"
            assert "quokkazebra" in await ask(cli, fake, user, secret)  # echoed in the answer
            code = await cli.interrupt()
            output = cli.output()
    assert code == EXIT_INTERRUPTED, output
    assert " DEBUG " in output, "LOG_LEVEL=DEBUG shows rtxrelay's own debug lines"
    assert "quokkazebra" not in output, "no question or answer text in the log"
    fault(kept=1)


@pytest.mark.fault('5', 'SIGKILL mid-answer: the next start edits the frozen message')
async def test_after_a_crash_the_stale_answer_says_it_was_interrupted(fault,
    rtx_426: Replica, tmp_path: Path
) -> None:
    """Killed mid-answer (a crash, a power cut), the next start edits the frozen message: its
    text as last saved, no cursor, and what happened."""
    import contextlib as _contextlib
    import sqlite3

    async with FakeTelegram() as fake:
        env = bot_env(fake, rtx_426.url, tmp_path, token=fake.token)
        env["TELEGRAM_PRIVATE_STREAMING"] = "edit"
        user = fake.make_user("Alice")
        chat = int(str(user["id"]))
        async with rtxrelay_run(tmp_path, env) as cli:
            await cli.wait_for(fake, lambda: fake.parked_polls >= 1, "getUpdates polling",
                               START_TIMEOUT)
            fake.inject_private_text(user, "a long one [len=20000] [delay=0.02]")
            await cli.wait_for(fake, lambda: "▍" in fake.chat_text(chat), "a streaming answer",
                               ANSWER_TIMEOUT)

            def saved() -> str:
                with _contextlib.closing(sqlite3.connect(tmp_path / "relay.db")) as db:
                    row = db.execute("SELECT answer FROM turns").fetchone()
                return str(row[0] or "") if row else ""

            async with asyncio.timeout(30):
                while not saved():  # noqa: ASYNC110 - a row in another process's database
                    await asyncio.sleep(0.1)
            cli.proc.kill()  # no goodbye: the message keeps its cursor
            await cli.wait_exit(EXIT_TIMEOUT)
        assert "▍" in fake.chat_text(chat)
        partial = saved()
        async with rtxrelay_run(tmp_path, env) as cli:
            await cli.wait_for(fake, lambda: "Interrupted" in fake.chat_text(chat),
                               "the stale answer told", START_TIMEOUT)
            text = fake.chat_text(chat)
            code = await cli.interrupt()
    assert "▍" not in text and "/retry" in text, text
    assert text.startswith(partial.strip()), (partial, text)
    assert code == EXIT_INTERRUPTED
    fault(kept=1, stale=text.count("▍"))
