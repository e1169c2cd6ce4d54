"""``rtxrelay run``: start every configured bot; one failing platform does not stop the other."""

from __future__ import annotations

import logging

from .config import Settings, env_reader
from .errors import ConfigError

log = logging.getLogger(__name__)


async def run_bots(settings: Settings) -> int:
    env = env_reader(settings)
    if not env.str("TELEGRAM_TOKEN") and not env.str("DISCORD_TOKEN"):
        raise ConfigError(
            "No bot is configured.",
            hint="Set TELEGRAM_TOKEN (from @BotFather) and/or DISCORD_TOKEN (Discord developer "
            "portal → Bot → Token) in .env, then run `rtxrelay run` again.",
        )
    raise ConfigError("The bots are not available in this build yet.")
