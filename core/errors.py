"""Errors that say what happened and what to do next.

Every error here carries two texts: ``user_message`` is short, safe to show in a chat (no
paths, no exception text, no secrets), and ``hint`` tells the operator what to fix. ``str()``
gives both, for the CLI and logs.
"""

from __future__ import annotations

import enum


class RelayError(Exception):
    """Base class for every error rtxrelay raises on purpose."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class ConfigError(RelayError):
    """A setting is missing or malformed; ``setting`` names it when one is to blame."""

    def __init__(self, message: str, *, hint: str = "", setting: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.setting = setting


class PlatformUnreachable(RelayError):
    """A chat platform's servers cannot be reached at start-up (network or DNS down, a proxy,
    their outage). Unlike a ConfigError, waiting may fix it: ``rtxrelay run`` retries."""


class StorageError(RelayError):
    """The database cannot be opened, read or written."""


class BackendErrorKind(enum.Enum):
    BAD_URL = "bad_url"
    UNREACHABLE = "unreachable"
    TLS = "tls"
    NOT_GRADIO = "not_gradio"
    NOT_CHATRTX = "not_chatrtx"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    SESSION_REJECTED = "session_rejected"
    QUEUE_FULL = "queue_full"
    TIMEOUT = "timeout"
    STUCK = "stuck"  # stopped responding mid-answer: the line behind it cannot move
    FAILED = "failed"
    STOPPED = "stopped"
    PROTOCOL = "protocol"
    CANCELLED = "cancelled"


# What a chat user reads. Deliberately generic: details (URLs, exception text) stay in logs.
_USER_MESSAGES: dict[BackendErrorKind, str] = {
    BackendErrorKind.BAD_URL: "Chat with RTX is not configured correctly. Ask the operator to check RTX_URL.",
    BackendErrorKind.UNREACHABLE: "Chat with RTX is not running or not reachable right now. Try again once it is started.",
    BackendErrorKind.TLS: "Cannot open a secure connection to Chat with RTX. Ask the operator to check the certificate settings.",
    BackendErrorKind.NOT_GRADIO: "The configured address is not Chat with RTX. Ask the operator to check RTX_URL.",
    BackendErrorKind.NOT_CHATRTX: "The configured address is not Chat with RTX. Ask the operator to check RTX_URL.",
    BackendErrorKind.UNSUPPORTED_PROTOCOL: "This Chat with RTX version is not supported yet.",
    BackendErrorKind.SESSION_REJECTED: "Chat with RTX refused the session (it was probably restarted). Ask the operator to update RTX_URL.",
    BackendErrorKind.QUEUE_FULL: "Chat with RTX is too busy right now. Try again in a minute.",
    BackendErrorKind.TIMEOUT: "Chat with RTX took too long to answer. Try again later.",
    BackendErrorKind.STUCK: "Chat with RTX stopped responding, so questions cannot be answered right now. The operator has been told to restart it; try again later.",
    BackendErrorKind.FAILED: "Chat with RTX failed while answering. Try again.",
    BackendErrorKind.STOPPED: "Chat with RTX stopped while answering (it may have been closed or restarted). Try again once it is back.",
    BackendErrorKind.PROTOCOL: "Chat with RTX sent something unexpected. Try again.",
    BackendErrorKind.CANCELLED: "Stopped.",
}


class BackendError(RelayError):
    """Talking to Chat with RTX failed; ``kind`` says how."""

    def __init__(self, kind: BackendErrorKind, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.kind = kind

    @property
    def user_message(self) -> str:
        return _USER_MESSAGES[self.kind]
