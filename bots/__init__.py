"""Platform adapters, and ``PLATFORMS``: the one list of them the application iterates.

A new platform is one module here (its adapter, its formatting beside it) plus an entry in
``PLATFORMS``: the runner, ``doctor`` and log redaction learn about it from that entry. Each
adapter imports its SDK only when ``load`` is called, so a command that starts no bot never
pays for discord.py or python-telegram-bot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from rtxrelay.core.conversation import ConversationService
from rtxrelay.core.env import Env

from .languages import Languages

# Runs one platform's bot until ``stop`` is set, speaking each user's language (``Languages``:
# the process's one catalogue, DEFAULT_LANGUAGE and the users' /language choices). Raises
# ConfigError for a setting to fix and PlatformUnreachable when the platform's servers cannot
# be reached (the runner retries).
PlatformRunner = Callable[[ConversationService, Languages, Env, asyncio.Event], Awaitable[None]]


@dataclass(frozen=True)
class Platform:
    name: str  # as users know it: "Telegram"
    token_setting: str  # the setting whose presence turns the bot on
    token_hint: str  # where that token comes from
    load: Callable[[], PlatformRunner]
    secret_parts: Callable[[str], Sequence[str]] = lambda token: (token,)

    def token(self, env: Env) -> str | None:
        return env.str(self.token_setting)

    def secrets(self, env: Env) -> list[str]:
        """Every value of this platform's settings that must never reach a log line."""
        token = self.token(env)
        return list(self.secret_parts(token)) if token else []


def _load_telegram() -> PlatformRunner:
    from .telegram_bot import run_telegram

    return run_telegram


def _load_discord() -> PlatformRunner:
    from .discord_bot import run_discord

    return run_discord


def _telegram_secrets(token: str) -> Sequence[str]:
    # Telegram tokens are "<bot id>:<secret>"; the id is public, the rest is not.
    return [token, *(part for part in token.split(":")[1:] if part)]


PLATFORMS: tuple[Platform, ...] = (
    Platform("Telegram", "TELEGRAM_TOKEN", "from @BotFather", _load_telegram, _telegram_secrets),
    Platform("Discord", "DISCORD_TOKEN", "Discord developer portal → Bot → Token",
             _load_discord),
)


def configured_platforms(env: Env) -> list[Platform]:
    """The platforms whose token is set."""
    return [platform for platform in PLATFORMS if platform.token(env)]
