"""The Gradio client's time limits, apart from the client: reading the settings (and so
``rtxrelay --help`` or a configuration error) must not import aiohttp."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timeouts:
    """Every wait has a limit; each one's error says which limit was hit."""

    connect: float = 10.0
    first_event: float = 30.0  # join → first message about our job
    idle: float = 120.0  # between messages once the job runs (ChatRTX may retrieve for a while)
    total: float = 900.0  # whole answer, queue wait included
