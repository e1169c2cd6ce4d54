"""Settings from the environment and an optional ``.env`` file, validated up front.

Every setting is documented in ``.env.example`` and the README table. A malformed value fails
at start-up with the setting's name and what it should look like — never later, mid-answer.
Real environment variables win over ``.env`` (so a service manager can override the file).
Each part reads its own settings from the same ``Env``: the backend here, the bots when they
start (``bots.PLATFORMS``).
"""

from __future__ import annotations

import codecs
import enum
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from rtxrelay.backends.chatrtx.settings import ChatRtxSettings
from rtxrelay.backends.openai.settings import OpenAiSettings
from rtxrelay.core.conversation import ConversationLimits
from rtxrelay.core.env import Env
from rtxrelay.core.errors import ConfigError
from rtxrelay.core.i18n import Language, negotiate
from rtxrelay.core.ratelimit import Rate
from rtxrelay.storage.dsn import PostgresDsn, is_url

from .backends_file import IDENTITY, BackendEntry, read_backends_file

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class BackendFamily(enum.Enum):
    CHATRTX = "Chat with RTX"  # RTX_URL or RTX_LAUNCH: the Gradio builds 0.2/0.3
    OPENAI = "an OpenAI-compatible server"  # OPENAI_BASE_URL

    @property
    def default_jobs(self) -> int:
        """MAX_CONCURRENT_JOBS when unset: Chat with RTX answers one question at a time; an
        OpenAI-compatible server that does not tell its parallelism (llama.cpp's /props
        does) gets a few at once, as Ollama, LM Studio and vLLM handle."""
        return 1 if self is BackendFamily.CHATRTX else 4


@dataclass(frozen=True)
class BackendSettings:
    """One backend: the one ``.env`` names, or an entry of ``backends.toml``."""

    name: str
    family: BackendFamily
    chatrtx: ChatRtxSettings
    openai: OpenAiSettings
    jobs: int | None  # MAX_CONCURRENT_JOBS when given (else Chat with RTX 1, a server's own)
    origin: str = ""  # "backends.toml, backend 2 (office)"; "" for .env

    def check(self) -> None:
        """Fail now on a malformed address, naming the entry it is in."""
        try:
            if self.family is BackendFamily.OPENAI:
                self.openai.endpoint()
            elif self.chatrtx.launch_command is None:
                self.chatrtx.target()
        except ConfigError as exc:
            raise self.located(exc) from None

    def located(self, exc: ConfigError) -> ConfigError:
        if not self.origin:
            return exc
        return ConfigError(f"{self.origin}: {exc.message}", hint=exc.hint, setting=exc.setting)


@dataclass(frozen=True)
class Settings:
    chatrtx: ChatRtxSettings  # .env's backend settings (with backends.toml: what entries inherit)
    openai: OpenAiSettings
    family: BackendFamily
    database: Path | PostgresDsn  # a SQLite file, or a PostgreSQL database (app/stores.py)
    limits: ConversationLimits
    log_level: str
    env: Env  # every raw value, for the parts that read their own settings
    env_file: Path | None = None
    wire_logs: bool = False  # LOG_WIRE=1: the libraries' DEBUG lines too (they hold messages)
    log_level_set: bool = False  # LOG_LEVEL given: every command logs at it
    log_file: Path | None = None  # LOG_FILE: also log there, rotated (a service has no console)
    jobs_set: bool = False  # MAX_CONCURRENT_JOBS given (else the backend's own figure)
    # DEFAULT_LANGUAGE: for chat users whose language rtxrelay does not speak or know
    default_language: Language = Language.EN
    # Who answers: .env's one backend, or the entries of backends.toml (a pool).
    backends: tuple[BackendSettings, ...] = ()
    backends_file: Path | None = None
    # LINE_LEASE: with PostgreSQL, how long a silent process keeps its place in the line
    line_lease: float = 20.0

    @property
    def pool(self) -> bool:
        return self.backends_file is not None


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env", *,
    required: bool = False,
) -> Settings:
    """Read settings; ``environ`` defaults to ``os.environ``. A missing ``env_file`` is fine
    unless ``required`` (the operator named it). A relative RTXRELAY_DB is resolved against
    the settings file's folder: services start in another folder (Task Scheduler's is
    C:\\Windows\\System32) and must find the same database. RTXRELAY_DB may instead be a
    ``postgresql://`` URL (checked here, connected to later)."""
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
    family = _family(env)
    limits = ConversationLimits(
        history_turns=env.int("HISTORY_TURNS", 8, minimum=0, maximum=100),
        history_chars=env.int("HISTORY_CHARS", 6000, minimum=0, maximum=1_000_000),
        max_question_chars=env.int("MAX_QUESTION_CHARS", 4000, minimum=1, maximum=100_000),
        max_concurrent_jobs=env.int("MAX_CONCURRENT_JOBS", family.default_jobs, minimum=1,
                                    maximum=64),
        user_rate=env.rate("USER_RATE_LIMIT", Rate(10, 60.0)),
    )
    here = used_file.parent if used_file else Path.cwd()
    backends_file = _backends_file(env, here)
    if backends_file is None:
        backends: tuple[BackendSettings, ...] = (BackendSettings(
            family.name.lower(), family, ChatRtxSettings.from_env(env),
            OpenAiSettings.from_env(env),
            limits.max_concurrent_jobs if env.str("MAX_CONCURRENT_JOBS") else None),)
    else:
        backends = _pool(env, backends_file)
    database = _database(env, here)
    log_file = Path(raw_log) if (raw_log := env.str("LOG_FILE")) else None
    if log_file is not None and not log_file.is_absolute():
        log_file = here / log_file
    level = (env.str("LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"LOG_LEVEL={level!r} is not a log level.", hint="Use DEBUG, INFO, WARNING or ERROR."
        )
    return Settings(
        chatrtx=ChatRtxSettings.from_env(env),
        openai=OpenAiSettings.from_env(env),
        family=family,
        jobs_set=env.str("MAX_CONCURRENT_JOBS") is not None,
        database=database,
        limits=limits,
        log_level=level,
        log_level_set=env.str("LOG_LEVEL") is not None,
        log_file=log_file,
        env=env,
        env_file=used_file,
        wire_logs=env.bool("LOG_WIRE", False),
        default_language=_default_language(env),
        backends=backends,
        backends_file=backends_file,
        line_lease=env.seconds("LINE_LEASE", 20.0),
    )


def _backends_file(env: Env, here: Path) -> Path | None:
    """BACKENDS_FILE, or backends.toml beside the settings file when there is one."""
    named = env.str("BACKENDS_FILE")
    path = Path(named or "backends.toml")
    if not path.is_absolute():
        path = here / path
    if path.is_file():
        return path
    if named:
        raise ConfigError(f"BACKENDS_FILE names {path}, which does not exist.",
                          setting="BACKENDS_FILE",
                          hint="Check the path, or remove BACKENDS_FILE to use .env's backend.")
    return None


def _pool(env: Env, path: Path) -> tuple[BackendSettings, ...]:
    """The backends listed in ``path``; .env must not name one of its own as well."""
    if doubled := [name for name in ("RTX_URL", "RTX_LAUNCH", "OPENAI_BASE_URL")
                   if env.str(name)]:
        raise ConfigError(
            f"{path.name} lists the backends, and {' and '.join(doubled)} is set as well.",
            setting=doubled[0], hint=f"Move it into {path.name} as a [[backend]] entry (with "
            "a name), or remove it from .env.")
    return tuple(_entry_settings(env, entry) for entry in read_backends_file(path))


def _entry_settings(env: Env, entry: BackendEntry) -> BackendSettings:
    values = {name: value for name, value in env.values.items() if name not in IDENTITY}
    values.update(entry.values)
    own = Env(values)
    family = BackendFamily.OPENAI if own.str("OPENAI_BASE_URL") else BackendFamily.CHATRTX
    try:
        jobs = own.int("MAX_CONCURRENT_JOBS", 0, minimum=1, maximum=64) \
            if own.str("MAX_CONCURRENT_JOBS") else None
        return BackendSettings(entry.name, family, ChatRtxSettings.from_env(own),
                               OpenAiSettings.from_env(own), jobs, entry.origin)
    except ConfigError as exc:
        raise ConfigError(f"{entry.origin}: {exc.message}", hint=exc.hint,
                          setting=exc.setting) from None


def _database(env: Env, here: Path) -> Path | PostgresDsn:
    """RTXRELAY_DB: a SQLite file (relative to ``here``), or a PostgreSQL URL."""
    raw = env.str("RTXRELAY_DB") or "rtxrelay.db"
    if is_url(raw):
        return PostgresDsn.parse(raw)  # ConfigError, the password masked, if malformed
    database = Path(raw)
    if not database.is_absolute() and str(database) != ":memory:":
        database = here / database
    return database


def _default_language(env: Env) -> Language:
    """DEFAULT_LANGUAGE: a tag as users write it (en, zh-CN, zh_TW, zh-Hant...)."""
    raw = env.str("DEFAULT_LANGUAGE")
    if raw is None:
        return Language.EN
    language = negotiate(raw)
    if language is None:
        raise ConfigError(f"DEFAULT_LANGUAGE={raw!r} is not a language rtxrelay speaks.",
                          hint="Use en (English), zh-CN (Simplified Chinese) or zh-TW "
                          "(Traditional Chinese).", setting="DEFAULT_LANGUAGE")
    return language


def _family(env: Env) -> BackendFamily:
    """Which backend answers: one of them, until a pool of several is built."""
    chatrtx = [name for name in ("RTX_URL", "RTX_LAUNCH") if env.str(name)]
    if env.str("OPENAI_BASE_URL"):
        if chatrtx:
            raise ConfigError(
                f"Both {' and '.join(chatrtx)} and OPENAI_BASE_URL are set; rtxrelay talks to "
                "one backend.", setting="OPENAI_BASE_URL",
                hint="Keep RTX_URL for Chat with RTX 0.2/0.3, or OPENAI_BASE_URL for an "
                "OpenAI-compatible server (ChatRTX 0.5's model, Ollama, LM Studio, llama.cpp), "
                "and remove the other.")
        return BackendFamily.OPENAI
    return BackendFamily.CHATRTX


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
    """The values that must never reach a log line: each platform's token, the session
    cookie in RTX_URL (a credential for Chat with RTX), OPENAI_API_KEY, RTXRELAY_API_KEY and
    the password in a PostgreSQL RTXRELAY_DB — of .env and of every backend in backends.toml."""
    from rtxrelay.bots import PLATFORMS

    found = [secret for platform in PLATFORMS for secret in platform.secrets(settings.env)]
    values = [settings.chatrtx.cookie(), settings.openai.api_key,
              settings.env.str("RTXRELAY_API_KEY")]
    for backend in settings.backends:
        values += [backend.chatrtx.cookie(), backend.openai.api_key]
    database = settings.database
    values += database.secrets if isinstance(database, PostgresDsn) else ()
    return found + list(dict.fromkeys(value for value in values if value))
