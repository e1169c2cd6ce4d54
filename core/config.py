"""Settings from the environment and an optional ``.env`` file, validated up front.

Every setting is documented in ``.env.example`` and the README table. A malformed value fails
at start-up with the setting's name and what it should look like — never later, mid-answer.
Real environment variables win over ``.env`` (so a service manager can override the file).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from .conversation import ConversationLimits
from .errors import ConfigError
from .gradio_client import Timeouts
from .launch_url import LaunchUrl, parse_launch_url

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class BackendSettings:
    url: str | None  # raw RTX_URL; parsed lazily so commands that don't need it still run
    ca_file: Path | None
    insecure_localhost: bool
    chat_fn: str | None
    timeouts: Timeouts

    def launch_url(self) -> LaunchUrl:
        if not self.url:
            raise ConfigError(
                "RTX_URL is not set.",
                hint="Start Chat with RTX, copy the 'http://127.0.0.1:PORT?cookie=…' URL it "
                "prints into RTX_URL (in .env or the environment). `rtxrelay discover` finds "
                "the port.",
            )
        return parse_launch_url(self.url)

    def ssl_context(self, launch: LaunchUrl) -> ssl.SSLContext | bool:
        """TLS policy: verify by default; a CA file, or an explicit loopback-only opt-out."""
        if launch.scheme != "https":
            return True
        if self.ca_file is not None:
            if not self.ca_file.is_file():
                raise ConfigError(
                    f"RTX_CA_FILE={self.ca_file} does not exist.",
                    hint="Point it at Chat with RTX's certificate (.pem) or unset it.",
                )
            context = ssl.create_default_context(cafile=str(self.ca_file))
            return context
        if self.insecure_localhost:
            if not launch.is_loopback:
                raise ConfigError(
                    "RTX_INSECURE_LOCALHOST=1 only applies to Chat with RTX on this PC "
                    f"(127.0.0.1/localhost), not {launch.host}.",
                    hint="Set RTX_CA_FILE to its certificate instead.",
                )
            # Chat with RTX 0.3 generates its own self-signed certificate at install time.
            # Skipping verification is safe only because the traffic never leaves the machine.
            return False
        return True


@dataclass(frozen=True)
class Settings:
    backend: BackendSettings
    database: Path
    limits: ConversationLimits
    log_level: str
    env_file: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # raw values for platform adapters


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
    env = _Env(values)
    limits = ConversationLimits(
        history_turns=env.int("HISTORY_TURNS", 8, minimum=0, maximum=100),
        history_chars=env.int("HISTORY_CHARS", 6000, minimum=0, maximum=1_000_000),
        max_question_chars=env.int("MAX_QUESTION_CHARS", 4000, minimum=1, maximum=100_000),
        max_concurrent_jobs=env.int("MAX_CONCURRENT_JOBS", 1, minimum=1, maximum=64),
    )
    backend = BackendSettings(
        url=env.str("RTX_URL"),
        ca_file=Path(ca) if (ca := env.str("RTX_CA_FILE")) else None,
        insecure_localhost=env.bool("RTX_INSECURE_LOCALHOST", False),
        chat_fn=env.str("RTX_CHAT_FN"),
        timeouts=Timeouts(
            connect=env.float("RTX_CONNECT_TIMEOUT", 10.0),
            first_event=env.float("RTX_FIRST_EVENT_TIMEOUT", 30.0),
            idle=env.float("RTX_IDLE_TIMEOUT", 120.0),
            total=env.float("RTX_TOTAL_TIMEOUT", 900.0),
        ),
    )
    level = (env.str("LOG_LEVEL") or "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(
            f"LOG_LEVEL={level!r} is not a log level.", hint="Use DEBUG, INFO, WARNING or ERROR."
        )
    return Settings(
        backend=backend,
        database=Path(env.str("RTXRELAY_DB") or "rtxrelay.db"),
        limits=limits,
        log_level=level,
        env_file=used_file,
        extra=values,
    )


class _Env:
    """Typed getters whose errors name the variable and the expected form."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    def str(self, name: str) -> str | None:
        value = self._values.get(name)
        return value.strip() if value and value.strip() else None

    def int(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r} is not a whole number.",
                hint=f"Use a number from {minimum} to {maximum}.",
            ) from None
        if not minimum <= value <= maximum:
            raise ConfigError(
                f"{name}={value} is out of range.",
                hint=f"Use a number from {minimum} to {maximum}.",
            )
        return value

    def float(self, name: str, default: float) -> float:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r} is not a number of seconds.", hint="Use e.g. 30 or 2.5."
            ) from None
        if not 0 < value <= 86_400:
            raise ConfigError(
                f"{name}={raw} is out of range.",
                hint="Use a positive number of seconds (at most 86400).",
            )
        return value

    def bool(self, name: str, default: bool) -> bool:
        raw = self._values.get(name)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r} is not a yes/no value.", hint="Use 1 or 0.")

    def choice(self, name: str, options: tuple[str, ...]) -> str:
        """One of ``options`` (case-insensitive); the first is the default."""
        value = (self.str(name) or options[0]).lower()
        if value not in options:
            allowed = " or ".join(repr(o) for o in options)
            raise ConfigError(f"{name}={value!r} is not {allowed}.")
        return value

    def ids(self, name: str) -> frozenset[int]:
        """A comma-separated list of numeric ids (empty = no restriction)."""
        raw = self.str(name)
        if raw is None:
            return frozenset()
        result: set[int] = set()
        for part in raw.replace(";", ",").split(","):
            part = part.strip()
            if not part:
                continue
            try:
                result.add(int(part))
            except ValueError:
                raise ConfigError(
                    f"{name} contains {part!r}, which is not a numeric id.",
                    hint="Use comma-separated numbers, e.g. 12345,67890.",
                ) from None
        return frozenset(result)


def env_reader(settings: Settings) -> _Env:
    """Typed access to the raw values, for platform adapters' own settings."""
    return _Env(settings.extra)
