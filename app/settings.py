"""Settings from the environment and an optional ``.env`` file, validated up front.

Every setting is documented in ``.env.example`` and the README table. A malformed value fails
at start-up with the setting's name and what it should look like — never later, mid-answer.
Real environment variables win over ``.env`` (so a service manager can override the file).
Each part reads its own settings from the same ``Env``: the backend here, the bots when they
start (``bots.PLATFORMS``).
"""

from __future__ import annotations

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


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> Settings:
    """Read settings; ``environ`` defaults to ``os.environ``; a missing env_file is fine."""
    values: dict[str, str] = {}
    used_file: Path | None = None
    if env_file is not None:
        path = Path(env_file)
        if path.is_file():
            try:
                loaded = dotenv_values(path)
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"Cannot read {path}: {exc}.", hint="Fix or remove it.") from exc
            values.update({k: v for k, v in loaded.items() if v is not None})
            used_file = path
    values.update(os.environ if environ is None else environ)
    env = Env(values)
    limits = ConversationLimits(
        history_turns=env.int("HISTORY_TURNS", 8, minimum=0, maximum=100),
        history_chars=env.int("HISTORY_CHARS", 6000, minimum=0, maximum=1_000_000),
        max_question_chars=env.int("MAX_QUESTION_CHARS", 4000, minimum=1, maximum=100_000),
        max_concurrent_jobs=env.int("MAX_CONCURRENT_JOBS", 1, minimum=1, maximum=64),
        user_rate=env.rate("USER_RATE_LIMIT", Rate(10, 60.0)),
    )
    level = (env.str("LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"LOG_LEVEL={level!r} is not a log level.", hint="Use DEBUG, INFO, WARNING or ERROR."
        )
    return Settings(
        backend=ChatRtxSettings.from_env(env),
        database=Path(env.str("RTXRELAY_DB") or "rtxrelay.db"),
        limits=limits,
        log_level=level,
        env=env,
        env_file=used_file,
        wire_logs=env.bool("LOG_WIRE", False),
    )


def secrets(settings: Settings) -> list[str]:
    """The values that must never reach a log line: each platform's token, and the session
    cookie in RTX_URL (a credential for Chat with RTX)."""
    from rtxrelay.bots import PLATFORMS

    found = [secret for platform in PLATFORMS for secret in platform.secrets(settings.env)]
    cookie = settings.backend.cookie()
    return found + ([cookie] if cookie else [])
