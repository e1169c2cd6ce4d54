"""A real PostgreSQL server for the tests: ``initdb`` into a temporary folder, ``pg_ctl`` to
start, stop and restart it, a fresh database per test.

    async with PostgresServer(find_bindir()) as server:
        dsn = await server.create_database()   # a PostgresDsn for a new, empty database
        await server.restart()                  # stop, then start again on the same port
        await server.stop(); await server.start()

The fixtures below give every test folder the same server (tests/conftest.py imports them):
``postgres`` (the server, one per run) and ``postgres_dsn`` (a new database per test, so tests
never see each other's rows; CREATE DATABASE takes milliseconds). A test that stops the server
restarts it in a ``finally``; ``postgres_dsn`` starts it again if one did not.

The server programs come from the machine: ``PG_BINDIR``, else ``pg_config --bindir``, else
the newest ``/usr/lib/postgresql/*/bin`` (Debian and Ubuntu), else PATH. Missing, the fixture
FAILS and says how to install them: a run without PostgreSQL must not pass by skipping.

initdb refuses to run as root (CI and the developers' machines are root): then every server
program runs as the unprivileged ``postgres`` user Debian's package creates (``PG_TEST_USER``
names another), as ``runuser -u postgres --`` would, through subprocess's own ``user=``, and
the temporary folder is handed to that user.

The server listens on 127.0.0.1 only, on a free port, with its socket in the temporary folder
(never /run/postgresql: a system server may be there), and with test-only speed settings:
nothing is flushed to disk (fsync, synchronous_commit and full_page_writes off), which is fine
for data thrown away at the end. Ready means a real connection succeeds (polled until a
deadline). It is stopped at the end of the run, and at interpreter exit if a run is cut short.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from rtxrelay.storage.dsn import PostgresDsn
from tests.llama.server import free_port

SUPERUSER = "rtxrelay"
# The superuser's password: tests check that no error text or log line ever shows it.
PASSWORD = "pg-test-secret-4b7c1e"
PROGRAMS = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = (
    "PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found: the storage tests "
    "run against a real PostgreSQL server. Install them (Debian/Ubuntu: apt-get install -y "
    "postgresql), or set PG_BINDIR to the folder that holds them (pg_config --bindir tells "
    "where).")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
# For tests only: no flushing to disk, no full-page images. The data is thrown away.
TEST_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "60",  # stores take up to 4 each; tests open a few at once
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


class PostgresServerError(RuntimeError):
    """initdb or the server failed; carries what they printed."""


def find_bindir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder with initdb, pg_ctl and postgres (see the module's docstring for the
    order), or None."""
    candidates: list[Path] = []
    if environ.get("PG_BINDIR"):
        candidates.append(Path(environ["PG_BINDIR"]))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                   timeout=10, check=True).stdout.strip()
            candidates.append(Path(found))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=_version_key, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for folder in candidates:
        if all((folder / program).is_file() for program in PROGRAMS):
            return folder
    return None


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name)) or (0,)


def _server_user(environ: Mapping[str, str] = os.environ) -> pwd.struct_passwd | None:
    """The user the server programs run as: None (ourselves) unless we are root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    name = environ.get("PG_TEST_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresServerError(
            f"The tests run as root, which initdb refuses, and there is no user {name!r} to "
            "run PostgreSQL as. `apt-get install -y postgresql` creates the postgres user; "
            "or set PG_TEST_USER to an unprivileged user.") from None


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, as an async context manager."""

    def __init__(self, bindir: Path, *, port: int | None = None) -> None:
        self.bindir = bindir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.running = False
        self._user = _server_user()
        self._root: Path | None = None
        self._databases = itertools.count(1)

    async def __aenter__(self) -> PostgresServer:
        await self.init()
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def data(self) -> Path:
        assert self._root is not None, "init() first"
        return self._root / "data"

    @property
    def log_file(self) -> Path:
        assert self._root is not None, "init() first"
        return self._root / "server.log"

    def dsn(self, database: str = "postgres", *, password: str = PASSWORD,
            port: int | None = None) -> PostgresDsn:
        return PostgresDsn(f"postgresql://{SUPERUSER}:{password}@{self.host}:"
                           f"{port or self.port}/{database}")

    async def init(self) -> None:
        """initdb into a new temporary folder (owned by the server's user when we are
        root); the cluster is removed at close() or interpreter exit."""
        self._root = root = Path(tempfile.mkdtemp(prefix="rtxrelay-pg-"))
        atexit.register(self._cleanup_at_exit)
        (root / "socket").mkdir()
        pwfile = root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._user is not None:
            for path in (root, root / "socket", pwfile):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        await self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
            "--no-sync", "--no-instructions")
        pwfile.unlink()
        settings = {**TEST_SETTINGS, "unix_socket_directories": f"'{root / 'socket'}'"}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# rtxrelay's tests (tests/support/postgres.py)\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    async def start(self) -> None:
        """Start on ``self.port``; returns once a real connection succeeds."""
        await self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_file),
                        "-o", f"-p {self.port}", "-w", "-t", str(int(START_TIMEOUT)), "start")
        self.running = True
        await self.wait_ready()

    async def stop(self) -> None:
        """A fast shutdown (clients are disconnected); returns once the server is gone."""
        await self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w",
                        "-t", str(int(STOP_TIMEOUT)), "stop")
        self.running = False

    async def restart(self) -> None:
        """Stop, then start again on the same port: what an operator's restart does."""
        await self.stop()
        await self.start()

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll a real connection until it succeeds; fail with the server's log at the
        deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                connection = await self.connect(timeout=max(0.1, deadline - loop.time()))
            except (OSError, asyncpg.PostgresError) as exc:
                if loop.time() >= deadline:
                    raise PostgresServerError(
                        f"PostgreSQL did not accept a connection in {timeout:.0f} s ({exc!r})."
                        f"\n{self.log_tail()}") from exc
                await asyncio.sleep(0.05)
            else:
                await connection.close()
                return

    async def connect(self, database: str = "postgres", *,
                      timeout: float = 10.0) -> asyncpg.Connection[Any]:
        """A superuser connection, for what tests do behind a store's back."""
        return await asyncpg.connect(host=self.host, port=self.port, user=SUPERUSER,
                                     password=PASSWORD, database=database, timeout=timeout)

    async def create_database(self) -> PostgresDsn:
        """A new, empty database (its name unique in this run)."""
        name = f"test_{next(self._databases)}"
        connection = await self.connect()
        try:
            await connection.execute(f"CREATE DATABASE {name}")
        finally:
            await connection.close()
        return self.dsn(name)

    async def close(self) -> None:
        if self._root is None:
            return
        if self.running:
            await self.stop()
        shutil.rmtree(self._root, ignore_errors=True)
        self._root = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    async def _run(self, program: str, *args: str) -> None:
        """Run one of the server's programs (as the server's user when we are root)."""
        command: Sequence[str] = [str(self.bindir / program), *args]
        user = self._user
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=self._root,
            **({} if user is None else
               {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}))
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise PostgresServerError(
                f"{program} {' '.join(args)} failed ({process.returncode}):\n"
                f"{output.decode(errors='replace')}\n{self.log_tail()}")

    def _cleanup_at_exit(self) -> None:
        """A run cut short (Ctrl+C, a crash): no server may outlive it."""
        root = self._root
        if root is None:
            return
        if self.running:
            user = self._user
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [str(self.bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate",
                     "-w", "stop"], capture_output=True, timeout=STOP_TIMEOUT, cwd=root,
                    **({} if user is None else
                       {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}))
        shutil.rmtree(root, ignore_errors=True)


# -- fixtures (tests/conftest.py imports them) --------------------------------------------------


@pytest_asyncio.fixture(scope="session")
async def postgres() -> AsyncIterator[PostgresServer]:
    """The run's PostgreSQL server. A test that stops it starts it again before it ends."""
    bindir = find_bindir()
    if bindir is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    try:
        server = PostgresServer(bindir)
    except PostgresServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    async with server:
        yield server


@pytest_asyncio.fixture
async def postgres_dsn(postgres: PostgresServer) -> PostgresDsn:
    """A new, empty database on the run's server."""
    if not postgres.running:  # a test before this one stopped it and failed to start it
        await postgres.start()
    return await postgres.create_database()
