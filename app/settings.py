"""Settings from the environment and an optional ``.env`` file, validated up front.

Every setting is documented in ``.env.example`` and the README table. A malformed value fails
at start-up with the setting's name and what it should look like — never later, mid-answer.
Real environment variables win over ``.env`` (so a service manager can override the file).
Each part reads its own settings from the same ``Env``: the backend here, the bots when they
start (``bots.PLATFORMS``).
"""

from __future__ import annotations

import codecs
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from rtxrelay.backends.chatrtx.settings import ChatRtxSettings
from rtxrelay.core.conversation import ConversationLimits
from rtxrelay.core.env import Env
from rtxrelay.core.errors import ConfigError
from rtxrelay.core.ratelimit import Rate

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    backend: ChatRtxSettings
    database: Path
    limits: ConversationLimits
    log_level: str
    env: Env  # every raw value, for the parts that read their own settings
    env_file: Path | None = None
    wire_logs: bool = False  # LOG_WIRE=1: the libraries' DEBUG lines too (they hold messages)
    log_level_set: bool = False  # LOG_LEVEL given: every command logs at it
    log_file: Path | None = None  # LOG_FILE: also log there, rotated (a service has no console)


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env", *,
    required: bool = False,
) -> Settings:
    """Read settings; ``environ`` defaults to ``os.environ``. A missing ``env_file`` is fine
    unless ``required`` (the operator named it). A relative RTXRELAY_DB is resolved against
    the settings file's folder: services start in another folder (Task Scheduler's is
    C:\\Windows\\System32) and must find the same database."""
    values: dict[str, str] = {}
    used_file: Path | None = None
    if env_file is not None:
        path = Path(env_file)
        if path.is_file():
            values.update(_read_env_file(path))
            used_file = path.resolve()
        elif required:
            raise ConfigError(f"The settings file {path} does not exist.",
                              hint="Check the path given to --env-file.")
    values.update(os.environ if environ is None else environ)
    env = Env(values)
    limits = ConversationLimits(
        history_turns=env.int("HISTORY_TURNS", 8, minimum=0, maximum=100),
        history_chars=env.int("HISTORY_CHARS", 6000, minimum=0, maximum=1_000_000),
        max_question_chars=env.int("MAX_QUESTION_CHARS", 4000, minimum=1, maximum=100_000),
        max_concurrent_jobs=env.int("MAX_CONCURRENT_JOBS", 1, minimum=1, maximum=64),
        user_rate=env.rate("USER_RATE_LIMIT", Rate(10, 60.0)),
    )
    here = used_file.parent if used_file else Path.cwd()
    database = Path(env.str("RTXRELAY_DB") or "rtxrelay.db")
    if not database.is_absolute() and str(database) != ":memory:":
        database = here / database
    log_file = Path(raw_log) if (raw_log := env.str("LOG_FILE")) else None
    if log_file is not None and not log_file.is_absolute():
        log_file = here / log_file
    level = (env.str("LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"LOG_LEVEL={level!r} is not a log level.", hint="Use DEBUG, INFO, WARNING or ERROR."
        )
    return Settings(
        backend=ChatRtxSettings.from_env(env),
        database=database,
        limits=limits,
        log_level=level,
        log_level_set=env.str("LOG_LEVEL") is not None,
        log_file=log_file,
        env=env,
        env_file=used_file,
        wire_logs=env.bool("LOG_WIRE", False),
    )


def _read_env_file(path: Path) -> dict[str, str]:
    """The file's settings. PowerShell 5.1 writes UTF-16 with a byte-order mark and Notepad
    may add a UTF-8 one: both are read; anything else must be UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.",
                          hint="Check the file's permissions.") from exc
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = raw.decode("utf-16")
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError(
                f"{path} is not UTF-8 text.",
                hint="Open it in Notepad and save it as UTF-8 (PowerShell: "
                "Set-Content -Encoding utf8).",
            ) from None
    loaded = dotenv_values(stream=io.StringIO(text))
    return {name: value for name, value in loaded.items() if value is not None}


def secrets(settings: Settings) -> list[str]:
    """The values that must never reach a log line: each platform's token, and the session
    cookie in RTX_URL (a credential for Chat with RTX)."""
    from rtxrelay.bots import PLATFORMS

    found = [secret for platform in PLATFORMS for secret in platform.secrets(settings.env)]
    cookie = settings.backend.cookie()
    return found + ([cookie] if cookie else [])
