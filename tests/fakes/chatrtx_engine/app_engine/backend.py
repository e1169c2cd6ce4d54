"""A stand-in for the ChatRTX app's ``ChatRTXUI/engine/backend.py`` (0.4/0.5): ``Backend`` and
``Mode``, for the bridge's ``--engine-dir`` fallback.

As in the app: ``Backend(model_setup_dir)``, ``active_model``, ``ChatRTX(chatrtx_mode,
data_dir=None, force_nim_start=False) -> bool`` loading the model into ``chatrtx``; ``init_model``
would download and build the model, which the bridge must never ask for. Like the app's, it
sets ChatRTX's logger up first, with the app's log file. The real one finds NVIDIA's ChatRTX
package installed in ChatRTX's env; this one finds the fake next to it.
"""

from __future__ import annotations

import enum
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any


class Mode(enum.Enum):
    RAG = "RAG"
    AI = "AI"


def _chatrtx_module(name: str) -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    return importlib.import_module(f"ChatRTX.{name}")


class Backend:
    def __init__(self, model_setup_dir: str) -> None:
        self.model_setup_dir = model_setup_dir
        _chatrtx_module("logger").ChatRTXLogger(
            log_level=logging.INFO, log_file=str(Path(model_setup_dir) / "logs" / "chatrtx.txt"))
        self.active_model: str | None = None
        self.chatrtx: Any = None
        config = Path(model_setup_dir) / "config" / "config.json"
        models = json.loads(config.read_text(encoding="utf-8"))["models"]["supported"]
        self._models = [{**entry, "backend": entry.get("backend", "TRTLLM")} for entry in models]

    def init_model(self, model_id: str) -> None:
        raise AssertionError("the bridge must not download or build models")

    def ChatRTX(self, chatrtx_mode: Mode, data_dir: str | None = None,
                force_nim_start: bool = False) -> bool:
        if chatrtx_mode is not Mode.AI:
            return False
        self.chatrtx = _chatrtx_module("chatrtx").ChatRTX(self._models, self.model_setup_dir)
        return bool(self.chatrtx.init_llm_model(self.active_model, add_special_tokens=True,
                                                use_py_session=True))
