"""An OpenAI-compatible server's settings (``OPENAI_*``, named as the openai SDK names them)."""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL

from rtxrelay.core.env import Env
from rtxrelay.core.errors import ConfigError
from rtxrelay.core.hosts import is_loopback_host

# ChatRTX 0.5 serves its NIM model here, and only while the ChatRTX app has it loaded.
CHATRTX_NIM_PORT = 8000


@dataclass(frozen=True)
class OpenAiTimeouts:
    connect: float = 10.0
    # Ollama and LM Studio load the model on the first request: minutes on a cold disk.
    first_token: float = 300.0
    idle: float = 120.0  # between two chunks of a started answer
    total: float = 900.0


@dataclass(frozen=True)
class OpenAiEndpoint:
    """A validated base URL: ``url`` ends with the API's version folder (``…/v1``)."""

    url: URL

    @property
    def base(self) -> str:
        return str(self.url).rstrip("/")

    @property
    def root(self) -> str:
        """Scheme, host and port: where servers keep their own paths (``/health``, ``/props``)."""
        return str(self.url.origin())

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.url.host or "")

    @property
    def is_chatrtx_nim(self) -> bool:
        """The address ChatRTX 0.5 serves its NIM model on (the model id confirms it later)."""
        return self.is_loopback and self.url.port == CHATRTX_NIM_PORT

    def __str__(self) -> str:
        return self.base


@dataclass(frozen=True)
class OpenAiSettings:
    base_url: str | None  # raw OPENAI_BASE_URL; validated by ``endpoint``
    api_key: str | None = None
    model: str | None = None  # None: the first model the server lists
    system_prompt: str | None = None
    timeouts: OpenAiTimeouts = OpenAiTimeouts()
    allow_remote_http: bool = False  # OPENAI_ALLOW_REMOTE_HTTP: the key may cross a network
    busy_wait: float = 60.0  # OPENAI_BUSY_WAIT: how long to honour Retry-After in all
    temperature: float | None = None  # OPENAI_TEMPERATURE; None: the server's default
    max_tokens: int | None = None  # OPENAI_MAX_TOKENS: a cap on each answer's length

    @classmethod
    def from_env(cls, env: Env) -> OpenAiSettings:
        return cls(
            base_url=env.str("OPENAI_BASE_URL"),
            api_key=env.str("OPENAI_API_KEY"),
            model=env.str("OPENAI_MODEL"),
            system_prompt=env.str("SYSTEM_PROMPT"),
            timeouts=OpenAiTimeouts(
                connect=env.seconds("OPENAI_CONNECT_TIMEOUT", 10.0),
                first_token=env.seconds("OPENAI_FIRST_TOKEN_TIMEOUT", 300.0),
                idle=env.seconds("OPENAI_IDLE_TIMEOUT", 120.0),
                total=env.seconds("OPENAI_TOTAL_TIMEOUT", 900.0),
            ),
            allow_remote_http=env.bool("OPENAI_ALLOW_REMOTE_HTTP", False),
            busy_wait=env.seconds("OPENAI_BUSY_WAIT", 60.0),
            temperature=_temperature(env),
            max_tokens=env.int("OPENAI_MAX_TOKENS", 0, minimum=0, maximum=1_000_000) or None,
        )

    def endpoint(self) -> OpenAiEndpoint:
        if not self.base_url:
            raise ConfigError(
                "OPENAI_BASE_URL is not set.", setting="OPENAI_BASE_URL",
                hint="Set it to your server's address, e.g. http://localhost:11434/v1 (Ollama), "
                "http://localhost:1234/v1 (LM Studio), http://localhost:8080/v1 (llama.cpp) or "
                "http://localhost:8000/v1 (ChatRTX 0.5's model). `rtxrelay discover` finds them.",
            )
        endpoint = parse_base_url(self.base_url)
        if endpoint.url.scheme == "http" and not endpoint.is_loopback and self.api_key and \
                not self.allow_remote_http:
            raise ConfigError(
                f"OPENAI_BASE_URL is plain http to another machine ({endpoint.url.host}): "
                "OPENAI_API_KEY would cross the network unencrypted.",
                setting="OPENAI_BASE_URL",
                hint="Use https, or run rtxrelay on that machine; if the network between them "
                "is yours and trusted, set OPENAI_ALLOW_REMOTE_HTTP=1.",
            )
        return endpoint


def _temperature(env: Env) -> float | None:
    raw = env.str("OPENAI_TEMPERATURE")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 2.0:
        raise ConfigError(f"OPENAI_TEMPERATURE={raw!r} is not a temperature.",
                          setting="OPENAI_TEMPERATURE",
                          hint="Use a number from 0 (always the likeliest words) to 2.")
    return value


def parse_base_url(raw: str) -> OpenAiEndpoint:
    """``http(s)://host[:port][/path]``. A bare address gets ``/v1``: every local server
    serves the API there, and the openai SDK would not add it either — a common slip."""
    text = raw.strip()
    try:
        url = URL(text)
    except ValueError as exc:
        raise _bad_url(text, str(exc)) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise _bad_url(text, "it needs http:// or https:// and a host")
    if url.query_string or url.fragment:
        raise _bad_url(text, "it must not have a ?query or #fragment")
    if url.path in ("", "/"):
        url = url.with_path("/v1")
    return OpenAiEndpoint(url.with_path(url.path.rstrip("/")))


def _bad_url(raw: str, why: str) -> ConfigError:
    return ConfigError(
        f"OPENAI_BASE_URL={raw!r} is not a server address: {why}.", setting="OPENAI_BASE_URL",
        hint="It looks like http://localhost:11434/v1.",
    )
