"""``ChatRTX.logger`` as ChatRTX 0.4/0.5 behave: ``ChatRTXLogger`` is a singleton configured by
its first caller only (later arguments are ignored), logging as ``[ChatRTX]`` to the console
and, given ``log_file``, to that file, whose folder it creates first: a bare file name makes it
fail (``os.makedirs("")``), which is what ``ChatRTX()`` asks for."""

from __future__ import annotations

import logging
import os
from typing import Any


class ChatRTXLogger:
    _instance: ChatRTXLogger | None = None
    _ready = False

    def __new__(cls, *args: Any, **kwargs: Any) -> ChatRTXLogger:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __init__(self, log_level: int = logging.DEBUG, log_file: str | None = None) -> None:
        if self._ready:
            return
        type(self)._ready = True
        self.logger = logging.getLogger("[ChatRTX]")
        self.logger.setLevel(log_level)
        self.logger.addHandler(logging.StreamHandler())
        if log_file:
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
            self.logger.addHandler(logging.FileHandler(log_file, encoding="utf-8"))

    @staticmethod
    def get_logger() -> logging.Logger:
        return ChatRTXLogger().logger
