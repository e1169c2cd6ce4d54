"""Chat with RTX's settings: its launch URL, TLS trust and timeouts (``RTX_*``)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from rtxrelay.core.env import Env
from rtxrelay.core.errors import ConfigError, RelayError

from .launch_url import LaunchUrl, parse_launch_url
from .timeouts import Timeouts


@dataclass(frozen=True)
class ChatRtxTarget:
    """Where Chat with RTX is and how to trust it: what changes when it is restarted."""

    launch: LaunchUrl
    ssl_context: ssl.SSLContext | bool


@dataclass(frozen=True)
class ChatRtxSettings:
    url: str | None  # raw RTX_URL; parsed lazily so commands that don't need it still run
    ca_file: Path | None
    insecure_localhost: bool
    chat_fn: str | None
    timeouts: Timeouts
    allow_remote_http: bool = False  # RTX_ALLOW_REMOTE_HTTP: the cookie may cross a network
    launch_command: str | None = None  # RTX_LAUNCH: rtxrelay starts Chat with RTX itself
    launch_dir: Path | None = None  # RTX_LAUNCH_DIR: the folder it starts in

    @classmethod
    def from_env(cls, env: Env) -> ChatRtxSettings:
        return cls(
            url=env.str("RTX_URL"),
            ca_file=Path(ca) if (ca := env.str("RTX_CA_FILE")) else None,
            insecure_localhost=env.bool("RTX_INSECURE_LOCALHOST", False),
            chat_fn=env.str("RTX_CHAT_FN"),
            timeouts=Timeouts(
                connect=env.seconds("RTX_CONNECT_TIMEOUT", 10.0),
                first_event=env.seconds("RTX_FIRST_EVENT_TIMEOUT", 30.0),
                idle=env.seconds("RTX_IDLE_TIMEOUT", 120.0),
                total=env.seconds("RTX_TOTAL_TIMEOUT", 900.0),
            ),
            allow_remote_http=env.bool("RTX_ALLOW_REMOTE_HTTP", False),
            launch_command=env.str("RTX_LAUNCH"),
            launch_dir=Path(folder) if (folder := env.str("RTX_LAUNCH_DIR")) else None,
        )

    def launch_url(self) -> LaunchUrl:
        if not self.url:
            raise ConfigError(
                "RTX_URL is not set.",
                hint="Start Chat with RTX, copy the 'http://127.0.0.1:PORT?cookie=…' URL it "
                "prints into RTX_URL (in .env or the environment). `rtxrelay discover` finds "
                "the port. For ChatRTX 0.5's model, Ollama, LM Studio or llama.cpp set "
                "OPENAI_BASE_URL instead.",
            )
        return parse_launch_url(self.url)

    def target(self) -> ChatRtxTarget:
        launch = self.launch_url()
        return ChatRtxTarget(launch, self.ssl_context(launch))

    def cookie(self) -> str | None:
        """The session cookie, a secret to keep out of logs; None when RTX_URL is unusable."""
        try:
            return self.launch_url().cookie or None
        except RelayError:  # unset or malformed: reported where it is used, not here
            return None

    def ssl_context(self, launch: LaunchUrl) -> ssl.SSLContext | bool:
        """Transport policy: verify TLS by default (a CA file, or an explicit loopback-only
        opt-out), and no plain http to another machine unless the operator says so: the
        session cookie would cross the network in clear."""
        if launch.scheme != "https":
            if not launch.is_loopback and not self.allow_remote_http:
                raise ConfigError(
                    f"RTX_URL is plain http to another machine ({launch.host}): the session "
                    "cookie would cross the network unencrypted.",
                    hint="Use https (Chat with RTX 0.3) with RTX_CA_FILE, or run rtxrelay on "
                    "the Chat with RTX PC; if the network between them is yours and trusted, "
                    "set RTX_ALLOW_REMOTE_HTTP=1.",
                )
            return True
        if self.ca_file is not None:
            if not self.ca_file.is_file():
                raise ConfigError(
                    f"RTX_CA_FILE={self.ca_file} does not exist.",
                    hint="Point it at Chat with RTX's certificate (.pem) or unset it.",
                    setting="RTX_CA_FILE",
                )
            return ssl.create_default_context(cafile=str(self.ca_file))
        if self.insecure_localhost:
            if not launch.is_loopback:
                raise ConfigError(
                    "RTX_INSECURE_LOCALHOST=1 only applies to Chat with RTX on this PC "
                    f"(127.0.0.1/localhost), not {launch.host}.",
                    setting="RTX_INSECURE_LOCALHOST",
                    hint="Set RTX_CA_FILE to its certificate instead.",
                )
            # Chat with RTX 0.3 generates its own self-signed certificate at install time.
            # Skipping verification is safe only because the traffic never leaves the machine.
            return False
        return True
