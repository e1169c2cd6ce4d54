"""Errors that say what happened and what to do next.

Every error here carries two texts: ``user_message`` is short, safe to show in a chat (no
paths, no exception text, no secrets), and ``hint`` tells the operator what to fix. ``str()``
gives both, for the CLI and logs.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from .i18n import N_, Texts


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
    NOT_OPENAI = "not_openai"  # the address answers, but not as an OpenAI-compatible server
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    SESSION_REJECTED = "session_rejected"
    AUTH = "auth"  # the server wants a (different) API key
    NO_MODEL = "no_model"  # the model asked for is not served
    QUEUE_FULL = "queue_full"
    BUSY = "busy"  # the server said "later" (429/503) for longer than we wait
    CONTEXT_TOO_LONG = "context_too_long"  # even without history the question does not fit
    TIMEOUT = "timeout"
    STUCK = "stuck"  # stopped responding mid-answer: the line behind it cannot move
    FAILED = "failed"
    STOPPED = "stopped"
    PROTOCOL = "protocol"
    CANCELLED = "cancelled"


# What a chat user reads. Deliberately generic: details (URLs, exception text) stay in logs.
# ``{service}`` is what answers ("Chat with RTX", "Ollama", "the model server").
_USER_MESSAGES: dict[BackendErrorKind, str] = {
    BackendErrorKind.BAD_URL: N_("{service} is not configured correctly. Ask the operator to check its address."),
    BackendErrorKind.UNREACHABLE: N_("{service} is not running or not reachable right now. Try again once it is started."),
    BackendErrorKind.TLS: N_("Cannot open a secure connection to {service}. Ask the operator to check the certificate settings."),
    BackendErrorKind.NOT_GRADIO: N_("The configured address is not Chat with RTX. Ask the operator to check RTX_URL."),
    BackendErrorKind.NOT_CHATRTX: N_("The configured address is not Chat with RTX. Ask the operator to check RTX_URL."),
    BackendErrorKind.NOT_OPENAI: N_("The configured address is not a model server. Ask the operator to check OPENAI_BASE_URL."),
    BackendErrorKind.UNSUPPORTED_PROTOCOL: N_("This Chat with RTX version is not supported yet."),
    BackendErrorKind.SESSION_REJECTED: N_("Chat with RTX refused the session (it was probably restarted). Ask the operator to update RTX_URL."),
    BackendErrorKind.AUTH: N_("{service} refused rtxrelay's API key. Ask the operator to check OPENAI_API_KEY."),
    BackendErrorKind.NO_MODEL: N_("{service} does not serve the configured model. Ask the operator to check OPENAI_MODEL."),
    BackendErrorKind.QUEUE_FULL: N_("{service} is too busy right now. Try again in a minute."),
    BackendErrorKind.BUSY: N_("{service} is too busy right now. Try again in a minute."),
    BackendErrorKind.CONTEXT_TOO_LONG: N_("The question is too long for the model's context, even without earlier messages. Shorten it and ask again."),
    BackendErrorKind.TIMEOUT: N_("{service} took too long to answer. Try again later."),
    BackendErrorKind.STUCK: N_("{service} stopped responding, so questions cannot be answered right now. The operator has been told to restart it; try again later."),
    BackendErrorKind.FAILED: N_("{service} failed while answering. Try again."),
    BackendErrorKind.STOPPED: N_("{service} stopped while answering (it may have been closed or restarted). Try again once it is back."),
    BackendErrorKind.PROTOCOL: N_("{service} sent something unexpected. Try again."),
    BackendErrorKind.CANCELLED: N_("Stopped."),
}

CHAT_WITH_RTX = "Chat with RTX"


class BackendError(RelayError):
    """Talking to the backend failed; ``kind`` says how, ``service`` names what failed in
    words a chat user knows."""

    def __init__(self, kind: BackendErrorKind, message: str, *, hint: str = "",
                 service: str = CHAT_WITH_RTX) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind
        self.service = service

    @property
    def user_message(self) -> str:
        """In English (the CLI, logs); a chat shows ``user_message_in`` its reader's texts."""
        return self._user_message(lambda message: message)

    def user_message_in(self, texts: Texts) -> str:
        return self._user_message(texts)

    def _user_message(self, translate: Callable[[str], str]) -> str:
        # The service is a product's name ("Ollama") or a generic one in the catalogue.
        text = translate(_USER_MESSAGES[self.kind]).format(service=translate(self.service))
        return text[:1].upper() + text[1:]
