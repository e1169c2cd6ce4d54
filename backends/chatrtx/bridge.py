r"""rtxrelay's bridge for ChatRTX 0.4 / 0.5: an OpenAI-compatible API in front of ChatRTX's engine.

ChatRTX 0.4 and 0.5 are a desktop app with no network API. This one file, run with ChatRTX's
own Python, loads the model ChatRTX has selected with ChatRTX's own engine (TensorRT-LLM:
Mistral 7B, Llama 2 13B, Gemma 7B, ChatGLM3 6B) and serves it as an OpenAI-compatible API at
http://127.0.0.1:8765/v1, for rtxrelay or any other OpenAI client. Python standard library only:
there is nothing to install.

Not needed for ChatRTX 0.5's NIM models (Llama 3.1 8B and the like): while the ChatRTX app has
one loaded, ChatRTX itself serves it at http://localhost:8000/v1; point rtxrelay there instead.

Windows, step by step
---------------------
1. In the ChatRTX app, download and install the model you want (the app builds its engine),
   select it, then CLOSE the app. The bridge loads the model into GPU memory itself: with the app
   open too, the model is loaded twice, which runs out of memory on most 8-12 GB cards.
2. Find ChatRTX's Python: it is in the folder ChatRTX was installed to (the one holding
   ``env_nvd_rag``), for example
       C:\Program Files\NVIDIA Corporation\ChatRTX\env_nvd_rag\Scripts\python.exe
3. Open a Command Prompt in the folder holding this file (``rtxrelay chatrtx-bridge --write``
   names it rtxrelay_chatrtx_bridge.py; any name works) and run
       "C:\Program Files\NVIDIA Corporation\ChatRTX\env_nvd_rag\Scripts\python.exe" ^
           rtxrelay_chatrtx_bridge.py
   (one command: ``^`` continues it on the next line in cmd.exe).
   It says which model it loads (about half a minute), then prints
   ``Listening on http://127.0.0.1:8765/v1``. Ctrl+C, or closing the window, stops it.
4. In rtxrelay's ``.env``:
       OPENAI_BASE_URL=http://127.0.0.1:8765/v1
       MAX_CONCURRENT_JOBS=1
   and start rtxrelay (OPENAI_MODEL may stay unset: the bridge lists exactly one model).

Options
-------
--model ID         a model other than ChatRTX's selected one (an installed one, e.g.
                   ``llama2_13b_AWQ_INT4_chat``); the ids are in the config file below.
--config PATH      ChatRTX's config (default
                   ``%ProgramData%\NVIDIA Corporation\chatrtx\config\config.json``); the models
                   are in the ``models`` folder next to its ``config`` folder.
--engine-dir DIR   the app's engine folder, if the ``ChatRTX`` package cannot be imported, e.g.
                   ``...\ChatRTX\RAG\trt-llm-rag-windows-ChatRTX_0.5.0\ChatRTXUI\engine``
                   (``..._0.4.0\...`` for 0.4). Guessed from this Python's location otherwise.
--host, --port     where to listen: 127.0.0.1 and 8765 by default. Never 8000: ChatRTX 0.5's NIM
                   uses it. Another host than this PC's loopback (``--host 0.0.0.0`` for the LAN)
                   needs an API key, or the bridge refuses to start.
--api-key KEY      require ``Authorization: Bearer KEY`` on every request (401 otherwise). Better
                   in the environment than on the command line, where other users of the PC can
                   see it: ``set RTXRELAY_BRIDGE_KEY=...`` (cmd) or
                   ``$env:RTXRELAY_BRIDGE_KEY="..."`` (PowerShell). Give rtxrelay the same key as
                   OPENAI_API_KEY.
--template NAME    the prompt template: ``auto`` (from the model), ``llama2``, ``mistral``,
                   ``gemma``, ``chatglm3``, or ``single`` (ChatRTX's own one-question call).
--max-waiting N    how many requests may wait in line (default 8); past that: 429.

What it does, and what it cannot do
-----------------------------------
- Endpoints: ``GET /v1/models``, ``GET /health``, ``POST /v1/chat/completions`` (streamed with
  server-sent events, or not). Errors come in OpenAI's shape, ``{"error": {...}}``.
- One answer at a time: ChatRTX builds its engines for one sequence (batch size 1). Other requests
  wait in line, in order; past ``--max-waiting`` waiting, a request gets 429 with Retry-After.
  A client that hangs up, waiting or while its answer is generated, leaves the line: the
  generation stops there, and the next request does not wait behind it.
- History and system prompts: ChatRTX's one-question call wraps a single question in the model's
  template, so the bridge builds the whole conversation itself in the model's own format
  (Llama 2 ``<s>[INST] <<SYS>> ... [/INST]``, Mistral ``<s>[INST] ... [/INST]`` with the system
  prompt before the first question, Gemma ``<start_of_turn>user ...<start_of_turn>model``,
  ChatGLM3 ``<|system|> ... <|user|> ... <|assistant|>``) and gives it to the model's
  ``stream_complete``. Several system messages are joined into one. A last message from the
  assistant is continued (a prefill). When the conversation is longer than the engine takes, the
  oldest turns are left out (a last message too long on its own: 400, code
  ``context_length_exceeded``). If ChatRTX's model object cannot be reached (another build),
  each request sends only its last question through ChatRTX's own template; the console and
  ``/v1/models`` say so.
- Sampling: ChatRTX decodes greedily (top-k 1), always; ``temperature``, ``top_p``, ``seed``,
  penalties and the like are accepted and ignored. ``n`` must be 1.
- ``stop`` (a string or a list) is emulated: the answer ends before the first stop string, no
  part of a stop string is ever sent, and generation stops. The end-of-turn markers of the
  model's template (``</s>``, ``[INST]``, ``<end_of_turn>``, ``<|user|>``...) are stop strings too.
- ``max_tokens`` / ``max_completion_tokens`` is emulated: the answer is cut once it has that many
  tokens (``finish_reason`` "length"). ChatRTX's own cap (1024 new tokens in its config) still
  applies.
- Token counts (``max_tokens``, ``usage``) come from the model's tokenizer when ChatRTX's engine
  exposes it, else they are ESTIMATES: 4 characters per token, and one token per CJK character.
  ``/v1/models`` says which. With estimates, ``usage`` is approximate and a "length" cut may fall a
  little before or after the exact token.
- References: in document (RAG) mode ChatRTX's engine appends HTML naming local files
  (``<br>Reference files:<br><div class="links-list"><a data-link='C:\...'>``). The bridge never
  sends a local path: the HTML is removed and, if it named files, the answer ends with one plain
  line ``Reference files: a.pdf, b.txt`` (bare file names). The bridge itself loads the model
  for plain chat (ChatRTX's "AI model default"), where no references come.
- Logs: one line per request (method, path, status, duration) on the console, never the
  content of questions or answers. ChatRTX's engine logs to
  ``%ProgramData%\NVIDIA Corporation\chatrtx\logs\chatrtx-bridge.txt`` (through the app's
  engine folder: to the app's ``chatrtx.txt`` there) and, once the model is loaded, only there:
  its error messages quote prompts.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import html
import importlib
import ipaddress
import json
import logging
import math
import ntpath
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765  # never 8000: ChatRTX 0.5's NIM listens there
NIM_PORT = 8000
DEFAULT_MAX_WAITING = 8
KEY_ENV = "RTXRELAY_BRIDGE_KEY"
OWNED_BY = "chatrtx-bridge"
READY_PREFIX = "Listening on "
CHARS_PER_TOKEN = 4  # the estimate when the tokenizer is out of reach (see the docstring)
WIDE_CHAR = 0x2E80  # from here on (CJK and beyond), one character counts as one token
MAX_BODY_BYTES = 8 * 1024 * 1024
PROMPT_MARGIN = 8  # tokens kept free in the engine's input for the special tokens it adds
SETUP_ERROR_EXIT = 2
ENGINE_LOGGER = "[ChatRTX]"  # the logging name of ChatRTX's ChatRTXLogger
ENGINE_LOG_FILE = "chatrtx-bridge.txt"  # in ChatRTX's logs folder, beside the app's chatrtx.txt

log = logging.getLogger("rtxrelay.chatrtx_bridge")

Family = Literal["llama2", "mistral", "gemma", "chatglm3"]
FAMILIES: dict[str, Family] = {
    "llama2": "llama2", "mistral": "mistral", "gemma": "gemma", "chatglm3": "chatglm3",
}
FAMILY_NAMES: dict[Family, str] = {
    "llama2": "Llama 2", "mistral": "Mistral", "gemma": "Gemma", "chatglm3": "ChatGLM3",
}
# TensorRT-LLM's model class (engine config.json) -> template; Mistral's engine says Llama too,
# so the model id is asked first.
ARCHITECTURES: dict[str, Family] = {
    "LlamaForCausalLM": "llama2",
    "MistralForCausalLM": "mistral",
    "GemmaForCausalLM": "gemma",
    "ChatGLMForCausalLM": "chatglm3",
}
# Markers the model may write when it carries on past its turn; the engine stops only at EOS.
TURN_ENDS: dict[Family, tuple[str, ...]] = {
    "llama2": ("</s>", "[INST]"),
    "mistral": ("</s>", "[INST]"),
    "gemma": ("<end_of_turn>", "<start_of_turn>", "<eos>"),
    "chatglm3": ("<|user|>", "<|observation|>", "<|system|>"),
}


# -- errors -----------------------------------------------------------------------------------


class SetupError(Exception):
    """The bridge cannot start: what is wrong, and what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ApiError(Exception):
    """An HTTP error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = tuple(headers)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


class ClientGone(Exception):
    """The client hung up."""


class EngineFailed(Exception):
    """ChatRTX's engine raised while generating (its message may quote the prompt: not shown)."""


class PromptTooLong(Exception):
    """Even the last question alone is longer than the engine takes."""

    def __init__(self, tokens: int, budget: int) -> None:
        super().__init__(f"{tokens} > {budget}")
        self.tokens = tokens
        self.budget = budget


def error_body(message: str, kind: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# -- ChatRTX's config and the model -------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """One model of ChatRTX's config (``models/supported``)."""

    id: str
    name: str
    backend: str  # "TRTLLM", or "nims" for ChatRTX 0.5's NIM models
    image_based: bool
    engine_dir: Path
    max_input_tokens: int | None
    max_new_tokens: int | None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.id})" if self.name and self.name != self.id else self.id

    def is_installed(self) -> bool:
        """Built: a TensorRT-LLM engine file in ``models/<id>/engine``."""
        return self.engine_dir.is_dir() and any(self.engine_dir.glob("*.engine"))


def default_config_path() -> Path:
    program_data = os.environ.get("PROGRAMDATA")
    root = Path(program_data) if program_data else Path("C:/ProgramData")
    return root / "NVIDIA Corporation" / "chatrtx" / "config" / "config.json"


def read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SetupError(
            f"ChatRTX's config is not at {path}.",
            "Is ChatRTX 0.4 or 0.5 installed, and has the app run once? If its data lives "
            "elsewhere, give the file with --config PATH.") from None
    except OSError as exc:
        raise SetupError(f"Cannot read ChatRTX's config {path}: {exc.strerror}.") from None
    try:
        config = json.loads(text)
    except ValueError:
        raise SetupError(f"ChatRTX's config {path} is not valid JSON.",
                         "Start the ChatRTX app once: it rewrites its config.") from None
    if not isinstance(config, dict) or not isinstance(config.get("models"), dict) or \
            not isinstance(config["models"].get("supported"), list):
        raise SetupError(f"{path} is not a ChatRTX 0.4/0.5 config (no models/supported list).",
                         "Give ChatRTX's config.json with --config PATH.")
    return config


def supported_models(config: dict[str, Any]) -> list[dict[str, Any]]:
    entries = config["models"]["supported"]
    return [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("id"),
                                                                               str)]


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def model_entry(raw: dict[str, Any], data_dir: Path) -> ModelEntry:
    metadata = raw.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    prerequisite = raw.get("prerequisite")
    prerequisite = prerequisite if isinstance(prerequisite, dict) else {}
    limits = [_int_or_none(metadata.get("max_input_token"))]
    # The engine is built with its own input limit (Llama 2 13B: 3072), tighter than metadata's.
    build = prerequisite.get("engine_build_command")
    if isinstance(build, str):
        found = re.search(r"--max_input_len[ =](\d+)", build)
        limits.append(int(found.group(1)) if found else None)
    known = [limit for limit in limits if limit]
    engine_folder = prerequisite.get("engine_dir")
    return ModelEntry(
        id=str(raw["id"]),
        name=str(raw.get("name") or raw["id"]),
        backend=str(raw.get("backend") or "TRTLLM"),
        image_based=bool(raw.get("isImageBased")) or raw["id"] == "clip_model",
        engine_dir=data_dir / "models" / str(raw["id"]) / (
            engine_folder if isinstance(engine_folder, str) and engine_folder else "engine"),
        max_input_tokens=min(known) if known else None,
        max_new_tokens=_int_or_none(metadata.get("max_new_tokens")),
    )


def installed_chat_models(config: dict[str, Any], data_dir: Path) -> list[str]:
    entries = [model_entry(raw, data_dir) for raw in supported_models(config)]
    return [entry.id for entry in entries
            if entry.backend != "nims" and not entry.image_based and entry.is_installed()]


def choose_model(config: dict[str, Any], wanted: str | None, data_dir: Path) -> ModelEntry:
    """The model to load (``--model``, else ChatRTX's selection), or why it cannot be."""
    selected = wanted or config["models"].get("selected")
    installed = installed_chat_models(config, data_dir)
    others = (f"Installed chat models: {', '.join(installed)}." if installed else
              "No chat model is installed yet: install one in the ChatRTX app first.")
    if not isinstance(selected, str) or not selected:
        raise SetupError("ChatRTX's config has no selected model.",
                         f"Give one with --model ID. {others}")
    raw = next((entry for entry in supported_models(config) if entry["id"] == selected), None)
    if raw is None:
        known = ", ".join(entry["id"] for entry in supported_models(config))
        raise SetupError(f"ChatRTX does not know a model {selected!r}.",
                         f"Known ids: {known}. {others}")
    model = model_entry(raw, data_dir)
    if model.backend == "nims":
        raise SetupError(
            f"{model.label} runs as a NIM (a container ChatRTX starts), not with TensorRT-LLM: "
            "it needs no bridge.",
            "While the ChatRTX app has it loaded, point rtxrelay at it: "
            f"OPENAI_BASE_URL=http://localhost:{NIM_PORT}/v1 and OPENAI_MODEL={model.id}. "
            f"Or bridge a TensorRT-LLM model with --model ID. {others}")
    if model.image_based:
        raise SetupError(f"{model.label} is ChatRTX's photo search model, not a chat model.",
                         f"Select a text model in the app, or give --model ID. {others}")
    if not model.is_installed():
        raise SetupError(
            f"{model.label} is not installed: its TensorRT-LLM engine is missing from "
            f"{model.engine_dir}.",
            "Open the ChatRTX app, download and install the model there (the app builds the "
            f"engine), close the app, then start the bridge again. {others}")
    return model


# -- token counts -------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """About 4 characters per token for English and code; one per CJK character."""
    wide = sum(1 for char in text if ord(char) >= WIDE_CHAR)
    return wide + math.ceil((len(text) - wide) / CHARS_PER_TOKEN)


class TokenCounter:
    """Counts with the model's tokenizer when given one, else estimates (``estimate_tokens``).

    Use it only while holding the line: Hugging Face tokenizers are not safe to share between
    threads, and the engine uses the same one."""

    def __init__(self, exact: Callable[[str], int] | None = None) -> None:
        self._exact = exact

    @property
    def exact(self) -> bool:
        return self._exact is not None

    def describe(self) -> str:
        return ("from the model's tokenizer" if self.exact else
                f"estimated ({CHARS_PER_TOKEN} characters per token, one per CJK character)")

    def count(self, text: str) -> int:
        if self._exact is not None:
            try:
                return self._exact(text)
            except Exception as exc:
                log.warning("the tokenizer failed (%s): token counts are estimates from now on",
                            type(exc).__name__)
                self._exact = None
        return estimate_tokens(text)

    def longest_prefix(self, text: str, limit: int) -> str:
        """The longest start of ``text`` that counts at most ``limit`` tokens."""
        low, high = 0, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if self.count(text[:middle]) <= limit:
                low = middle
            else:
                high = middle - 1
        return text[:low]


def tokenizer_counter(tokenizer: object) -> Callable[[str], int] | None:
    """A counting function over a Hugging Face style ``encode``, if it works."""
    encode = getattr(tokenizer, "encode", None)
    if not callable(encode):
        return None

    def count(text: str) -> int:
        return len(encode(text, add_special_tokens=False))

    try:
        count("Hello, world.")
    except Exception:
        return None
    return count


# -- conversations and the models' templates ----------------------------------------------------


@dataclass
class Turn:
    user: str
    assistant: str | None = None


@dataclass
class Conversation:
    """System text, then turns. Every turn but the last is complete; the last one's assistant
    text, when there is one, is a prefill for the model to continue."""

    system: str | None
    turns: list[Turn]

    def last_question(self) -> str:
        return next((turn.user for turn in reversed(self.turns) if turn.user), "")


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "user", "function": "user"}


def message_text(content: object, index: int) -> str:
    """A message's text: a string, or a list of text parts."""
    param = f"messages[{index}].content"
    if content is None:
        return ""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and \
                    isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise ApiError(400, "Only text content is supported: ChatRTX's models read no "
                               "images, audio or files.", param=param)
        return "\n".join(texts).strip()
    raise ApiError(400, "A message's content must be a string or a list of text parts.",
                   param=param)


def conversation_from(messages: object) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages")
    systems: list[str] = []
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, "Each message must be an object.", param=f"messages[{index}]")
        role = ROLES.get(str(message.get("role")))
        if role is None:
            raise ApiError(400, f"Unsupported role {message.get('role')!r}.",
                           param=f"messages[{index}].role")
        text = message_text(message.get("content"), index)
        if role == "system":
            if text:
                systems.append(text)
        elif role == "user":
            if turns and turns[-1].assistant is None:
                turns[-1].user = "\n\n".join(part for part in (turns[-1].user, text) if part)
            else:
                turns.append(Turn(text))
        elif turns and turns[-1].assistant is not None:
            turns[-1].assistant = "\n\n".join(p for p in (turns[-1].assistant, text) if p)
        elif turns:
            turns[-1].assistant = text
        else:
            turns.append(Turn("", text))
    if not any(turn.user for turn in turns):
        raise ApiError(400, "'messages' has no user message with text.", param="messages")
    return Conversation("\n\n".join(systems) or None, turns)


def _is_last(index: int, turns: Sequence[Turn]) -> bool:
    return index == len(turns) - 1


def render_llama2(system: str | None, turns: Sequence[Turn]) -> str:
    """``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s>`` per turn."""
    parts: list[str] = []
    for index, turn in enumerate(turns):
        user = turn.user
        if index == 0 and system:
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
        parts.append(f"<s>[INST] {user} [/INST]")
        if turn.assistant is not None:
            parts.append(f" {turn.assistant}" if _is_last(index, turns)
                         else f" {turn.assistant} </s>")
    return "".join(parts)


def render_mistral(system: str | None, turns: Sequence[Turn]) -> str:
    """``<s>[INST] {user} [/INST] {answer}</s>[INST] ...``; no system slot: it goes first in the
    first question."""
    parts = ["<s>"]
    for index, turn in enumerate(turns):
        user = f"{system}\n\n{turn.user}" if index == 0 and system else turn.user
        parts.append(f"[INST] {user} [/INST]")
        if turn.assistant is not None:
            parts.append(f" {turn.assistant}" if _is_last(index, turns)
                         else f" {turn.assistant}</s>")
    return "".join(parts)


def render_gemma(system: str | None, turns: Sequence[Turn]) -> str:
    """``<start_of_turn>user\\n{user}<end_of_turn>\\n<start_of_turn>model\\n{answer}<end_of_turn>\\n``;
    no system slot: it goes first in the first question. The tokenizer adds ``<bos>``."""
    parts: list[str] = []
    for index, turn in enumerate(turns):
        user = f"{system}\n\n{turn.user}" if index == 0 and system else turn.user
        parts.append(f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n")
        if turn.assistant is not None:
            parts.append(turn.assistant if _is_last(index, turns)
                         else f"{turn.assistant}<end_of_turn>\n")
    return "".join(parts)


def render_chatglm3(system: str | None, turns: Sequence[Turn]) -> str:
    """``<|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{answer}\\n...``."""
    parts = [f"<|system|>\n{system}\n"] if system else []
    for index, turn in enumerate(turns):
        parts.append(f"<|user|>\n{turn.user}\n<|assistant|>")
        if turn.assistant is not None:
            parts.append(f"\n{turn.assistant}" if _is_last(index, turns)
                         else f"\n{turn.assistant}\n")
    return "".join(parts)


TEMPLATES: dict[Family, Callable[[str | None, Sequence[Turn]], str]] = {
    "llama2": render_llama2,
    "mistral": render_mistral,
    "gemma": render_gemma,
    "chatglm3": render_chatglm3,
}


def render_prompt(family: Family, conversation: Conversation) -> str:
    return TEMPLATES[family](conversation.system, conversation.turns)


def fit_prompt(family: Family, conversation: Conversation, counter: TokenCounter,
               budget: int | None) -> str:
    """The prompt, leaving out the oldest turns while it is longer than ``budget`` tokens (the
    engine would otherwise cut its start, system prompt and all)."""
    turns = list(conversation.turns)
    prompt = TEMPLATES[family](conversation.system, turns)
    while budget is not None and len(turns) > 1 and counter.count(prompt) > budget:
        turns.pop(0)
        prompt = TEMPLATES[family](conversation.system, turns)
    return prompt


def detect_family(model_id: str, architecture: str | None) -> Family | None:
    lowered = model_id.lower()
    for needle, family in (("mistral", "mistral"), ("llama", "llama2"), ("gemma", "gemma"),
                           ("chatglm", "chatglm3")):
        if needle in lowered:
            return FAMILIES[family]
    return ARCHITECTURES.get(architecture or "")


# -- shaping the answer: references, stop strings, length ---------------------------------------


REFERENCE_MARKERS = ("<br>Reference files:<br>", '<div class="links-list">',
                     '<div class="images-list">')
_LINK = re.compile(r"""<a\b[^>]*?\bdata-link\s*=\s*(?:'([^']*)'|"([^"]*)")[^>]*>(.*?)</a>""",
                   re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def held_back(text: str, markers: Iterable[str]) -> int:
    """How many characters at the end of ``text`` could begin one of ``markers``."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


def reference_names(tail: str) -> list[str]:
    """The bare file names ChatRTX's reference HTML links to (photos left out)."""
    names: list[str] = []
    for found in _LINK.finditer(tail):
        if "<img" in found.group(3).lower():
            continue
        target = html.unescape(found.group(1) or found.group(2) or "").rstrip("\\/")
        name = ntpath.basename(target) or ntpath.basename(
            html.unescape(_TAG.sub("", found.group(3))).strip())
        if name and name not in names:
            names.append(name)
    return names


class ReferenceCutter:
    """Passes the model's text on and keeps back ChatRTX's reference HTML, which comes last."""

    def __init__(self) -> None:
        self._pending = ""
        self._tail: str | None = None

    def feed(self, text: str) -> str:
        if self._tail is not None:
            self._tail += text
            return ""
        buffer = self._pending + text
        starts = [index for index in (buffer.find(marker) for marker in REFERENCE_MARKERS)
                  if index >= 0]
        if starts:
            self._tail, self._pending = buffer[min(starts):], ""
            return buffer[:min(starts)]
        keep = held_back(buffer, REFERENCE_MARKERS)
        self._pending = buffer[len(buffer) - keep:]
        return buffer[:len(buffer) - keep]

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return pending

    def names(self) -> list[str]:
        return reference_names(self._tail or "")


class StopCutter:
    """Ends the text before the first stop string; never lets out part of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        buffer = self._pending + text
        hits = [index for index in (buffer.find(stop) for stop in self._stops) if index >= 0]
        if hits:
            self._pending = ""
            return buffer[:min(hits)], True
        keep = held_back(buffer, self._stops)
        self._pending = buffer[len(buffer) - keep:]
        return buffer[:len(buffer) - keep], False

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return pending


class LengthCutter:
    """Cuts the text once it counts more than ``limit`` tokens."""

    def __init__(self, limit: int | None, counter: TokenCounter) -> None:
        self._limit = limit
        self._counter = counter
        self._text = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if self._limit is None or not text:
            return text, False
        candidate = self._text + text
        if self._counter.count(candidate) <= self._limit:
            self._text = candidate
            return text, False
        allowed = self._counter.longest_prefix(candidate, self._limit)
        extra = allowed[len(self._text):] if len(allowed) > len(self._text) else ""
        self._text += extra
        return extra, True


class AnswerShaper:
    """The engine's deltas in, the client's text out: references stripped, stop strings and
    the token limit applied. ``feed`` and ``finish`` return (text, finish reason or None)."""

    def __init__(self, stops: Sequence[str], limit: int | None, counter: TokenCounter) -> None:
        self._references = ReferenceCutter()
        self._stops = StopCutter(stops)
        self._length = LengthCutter(limit, counter)
        self.model_text = ""  # what the client got of the model's own text
        self.text = ""  # all the client got (plus the reference line, if any)

    def _through(self, text: str) -> tuple[str, str | None]:
        kept, stopped = self._stops.feed(text)
        out, cut = self._length.feed(kept)
        self.model_text += out
        self.text += out
        return out, "length" if cut else "stop" if stopped else None

    def feed(self, delta: str) -> tuple[str, str | None]:
        return self._through(self._references.feed(delta))

    def finish(self) -> tuple[str, str]:
        out, reason = self._through(self._references.flush())
        if reason is not None:
            return out, reason
        rest, cut = self._length.feed(self._stops.flush())
        self.model_text += rest
        self.text += rest
        if cut:
            return out + rest, "length"
        names = self._references.names()
        line = ""
        if names:
            line = ("\n\n" if self.text.strip() else "") + "Reference files: " + ", ".join(names)
            self.text += line
        return out + rest + line, "stop"


# -- ChatRTX's engine ---------------------------------------------------------------------------


@dataclass
class EngineModule:
    kind: Literal["package", "backend"]  # ChatRTX.chatrtx, or the app's engine/backend.py
    module: Any
    where: str


def engine_dir_guesses() -> list[Path]:
    """The app's engine folder, from this Python's place (``<ChatRTX>\\env_nvd_rag\\Scripts``)
    and from the default install folder."""
    guesses: list[Path] = []
    executable = Path(sys.executable)
    if len(executable.parents) > 2:
        install = executable.parents[2]
        guesses += sorted(install.glob("RAG/trt-llm-rag-windows-ChatRTX_*/ChatRTXUI/engine"),
                          reverse=True)
    program_files = os.environ.get("PROGRAMFILES")
    root = Path(program_files) if program_files else Path("C:/Program Files")
    for version in ("0.5.0", "0.4.0"):
        guesses.append(root / "NVIDIA Corporation" / "ChatRTX" / "RAG" /
                       f"trt-llm-rag-windows-ChatRTX_{version}" / "ChatRTXUI" / "engine")
    unique: list[Path] = []
    for guess in guesses:
        if guess not in unique:
            unique.append(guess)
    return unique


def _try_import(name: str, problems: list[str], what: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top = name.split(".")[0]
        if exc.name in (top, name):
            problems.append(f"{what}: not found")
        else:
            problems.append(f"{what}: it needs {exc.name}, which is missing")
    except Exception as exc:  # DLL load failures, syntax errors, ...
        problems.append(f"{what}: {type(exc).__name__}: {exc}")
    return None


def import_engine(engine_dir: Path | None) -> EngineModule:
    """ChatRTX's ``ChatRTX`` package (NVIDIA's ChatRTX_APIs wheel), else the app's
    ``engine/backend.py``."""
    problems: list[str] = []
    module = _try_import("ChatRTX.chatrtx", problems, "the ChatRTX package")
    if module is not None:
        return EngineModule("package", module, f"the ChatRTX package ({module.__file__})")
    folders = [engine_dir] if engine_dir else engine_dir_guesses()
    if engine_dir is not None and not engine_dir.is_dir():
        problems.append(f"--engine-dir {engine_dir}: not a folder")
    for folder in (folder for folder in folders if folder.is_dir()):
        if (folder / "ChatRTX" / "chatrtx.py").is_file():  # a ChatRTX_APIs source folder
            sys.path.insert(0, str(folder))
            module = _try_import("ChatRTX.chatrtx", problems, f"ChatRTX in {folder}")
            if module is not None:
                return EngineModule("package", module, f"the ChatRTX package in {folder}")
        if (folder / "backend.py").is_file():
            sys.path.insert(0, str(folder))
            module = _try_import("backend", problems, f"{folder / 'backend.py'}")
            if module is not None:
                return EngineModule("backend", module, f"the app's engine in {folder}")
    raise SetupError(
        "Cannot import ChatRTX's engine (" + "; ".join(problems) + ").",
        "Run this file with ChatRTX's own Python: \"<ChatRTX folder>\\env_nvd_rag\\Scripts\\"
        f"python.exe\" (this one is {sys.executable}), or give the app's engine folder with "
        "--engine-dir, e.g. \"C:\\Program Files\\NVIDIA Corporation\\ChatRTX\\RAG\\"
        "trt-llm-rag-windows-ChatRTX_0.5.0\\ChatRTXUI\\engine\".")


def prime_engine_log(data_dir: Path) -> None:
    """Set up ChatRTX's logger before ``ChatRTX()`` does. The logger is a singleton set up by its
    first caller, and ``ChatRTX()`` asks for a bare ``ChatRTX.log``, which the logger cannot
    create (it makes the file's folder first: ``os.makedirs("")``). NVIDIA's examples and the
    app set it up first too."""
    try:
        chatrtx_logger = importlib.import_module("ChatRTX.logger").ChatRTXLogger
    except Exception:
        return
    try:
        chatrtx_logger(log_level=logging.INFO, log_file=str(data_dir / "logs" / ENGINE_LOG_FILE))
    except Exception:  # no file then; the singleton keeps its console handler
        with contextlib.suppress(Exception):
            chatrtx_logger(log_level=logging.INFO)


def quiet_engine_console() -> None:
    """From here on ChatRTX's log messages may quote prompts (its errors do): keep them in its
    log file, off the console."""
    for handler in logging.getLogger(ENGINE_LOGGER).handlers:
        if isinstance(handler, logging.StreamHandler) and \
                not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL)


def load_chat(engine: EngineModule, models: list[dict[str, Any]], data_dir: Path,
              model: ModelEntry) -> Any:
    """ChatRTX's ``ChatRTX`` object with ``model`` loaded, for plain chat (no documents)."""
    # ChatRTX 0.5 reads each model's "backend"; 0.4's config has none and ignores it.
    infos = [{**entry, "backend": entry.get("backend") or "TRTLLM"} for entry in models]
    failure = SetupError(
        f"ChatRTX's engine could not load {model.label}.",
        "Is the ChatRTX app still open (the model would be loaded twice: out of GPU memory)? "
        "Close it and try again. ChatRTX's messages above, and its log in "
        f"{data_dir / 'logs'}, say more.")
    try:
        if engine.kind == "package":
            prime_engine_log(data_dir)
            chat = engine.module.ChatRTX(infos, str(data_dir))
            loaded = chat.init_llm_model(model.id, add_special_tokens=True, use_py_session=True)
        else:  # the app's Backend; its init_model would download and build: not called
            backend = engine.module.Backend(str(data_dir))
            backend.active_model = model.id
            loaded = backend.ChatRTX(engine.module.Mode.AI)
            chat = backend.chatrtx
    except Exception as exc:
        failure.message += f" ({type(exc).__name__}: {exc})"
        raise failure from None
    if not loaded or chat is None:
        raise failure
    return chat


def close_quietly(stream: object) -> None:
    close = getattr(stream, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:
            log.warning("closing the engine's stream failed (%s)", type(exc).__name__)


def delta_text(item: object) -> str:
    """A streamed item as text: ChatRTX yields strings; LlamaIndex responses carry ``delta``."""
    if isinstance(item, str):
        return item
    delta = getattr(item, "delta", None)
    return delta if isinstance(delta, str) else "" if item is None else str(item)


@dataclass(frozen=True)
class ChatJob:
    conversation: Conversation
    stream: bool
    include_usage: bool
    stops: tuple[str, ...]
    max_tokens: int | None


class Engine:
    """The loaded model behind one interface: open a stream of text deltas for a chat job."""

    def __init__(self, model: ModelEntry, chat: Any, template: str) -> None:
        self.model = model
        llm = getattr(chat, "_llm", None)  # ChatRTX's TrtLlm: stream_complete(prompt) -> deltas
        stream_complete = getattr(llm, "stream_complete", None)
        architecture = None
        get_name = getattr(llm, "get_model_name", None)
        if callable(get_name):
            try:
                architecture = str(get_name())
            except Exception:
                architecture = None
        self.counter = TokenCounter(tokenizer_counter(getattr(llm, "_tokenizer", None)))
        # The template's family also gives the turn-end markers, in single-question mode too.
        self.family: Family | None = FAMILIES.get(template) or detect_family(model.id,
                                                                             architecture)
        self._stream_prompt: Callable[[str], Iterable[object]] | None = (
            stream_complete if callable(stream_complete) and template != "single" else None)
        question = getattr(chat, "generate_stream_response", None)
        if not callable(question):
            raise SetupError("ChatRTX's engine has no generate_stream_response: not a ChatRTX "
                             "0.4/0.5 engine?")
        self._stream_question: Callable[[str], Iterable[object]] = question
        unload = getattr(chat, "unload_llm", None)
        self._unload: Callable[[], object] | None = unload if callable(unload) else None

    @property
    def templated(self) -> bool:
        return self._stream_prompt is not None and self.family is not None

    def describe_prompts(self) -> str:
        if self.templated:
            assert self.family is not None
            return f"{FAMILY_NAMES[self.family]} template (history and system prompts)"
        return ("ChatRTX's one-question call (only the last question: no history, no system "
                "prompt)")

    def open(self, job: ChatJob) -> tuple[Iterator[object], int, tuple[str, ...]]:
        """The engine's stream, the prompt's token count, and the stop strings to apply."""
        stops = job.stops + (TURN_ENDS[self.family] if self.family else ())
        budget = (self.model.max_input_tokens - PROMPT_MARGIN
                  if self.model.max_input_tokens else None)
        if self._stream_prompt is not None and self.family is not None:
            prompt = fit_prompt(self.family, job.conversation, self.counter, budget)
            call, text = self._stream_prompt, prompt
        else:
            call, text = self._stream_question, job.conversation.last_question()
        tokens = self.counter.count(text)
        if budget is not None and self.counter.exact and tokens > budget:
            raise PromptTooLong(tokens, budget)  # TensorRT-LLM would fail on it
        try:
            stream = iter(call(text))
        except Exception as exc:
            raise EngineFailed(type(exc).__name__) from exc
        return stream, tokens, stops

    def unload(self) -> None:
        if self._unload is not None:
            try:
                self._unload()
            except Exception as exc:
                log.warning("unloading the model failed (%s)", type(exc).__name__)


def make_engine(model: ModelEntry, models: list[dict[str, Any]], data_dir: Path,
                engine_dir: Path | None, template: str) -> Engine:
    module = import_engine(engine_dir)
    print(f"Loading {model.label} with {module.where}...", flush=True)
    chat = load_chat(module, models, data_dir, model)
    quiet_engine_console()
    return Engine(model, chat, template)


# -- one generation at a time -------------------------------------------------------------------


class LineFull(Exception):
    pass


class Line:
    """One generation at a time; the others wait in arrival order, at most ``max_waiting``."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._condition = threading.Condition()
        self._waiting: deque[object] = deque()
        self._running: object | None = None
        self._average = 10.0  # seconds per answer, for Retry-After
        self._started = 0.0

    def status(self) -> tuple[bool, int]:
        with self._condition:
            return self._running is not None, len(self._waiting)

    def retry_after(self) -> int:
        with self._condition:
            return max(1, min(60, math.ceil(self._average * (len(self._waiting) + 1))))

    def join(self) -> object:
        with self._condition:
            if (self._running is not None or self._waiting) and \
                    len(self._waiting) >= self.max_waiting:
                raise LineFull
            ticket = object()
            self._waiting.append(ticket)
            return ticket

    def wait_turn(self, ticket: object, give_up: Callable[[], bool]) -> bool:
        """True once it is ``ticket``'s turn; False when ``give_up()`` says so first."""
        with self._condition:
            while True:
                if self._running is None and self._waiting[0] is ticket:
                    self._waiting.popleft()
                    self._running = ticket
                    self._started = time.monotonic()
                    return True
                if give_up():
                    self._waiting.remove(ticket)
                    self._condition.notify_all()
                    return False
                self._condition.wait(0.25)

    def leave(self, ticket: object) -> None:
        with self._condition:
            if self._running is ticket:
                self._running = None
                elapsed = time.monotonic() - self._started
                self._average = 0.7 * self._average + 0.3 * elapsed
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            self._condition.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._condition.wait(left)
            return True


# -- the OpenAI API -----------------------------------------------------------------------------


def parse_chat_request(body: dict[str, Any], model_id: str) -> ChatJob:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string.", param="model")
    if model and model != model_id:
        raise ApiError(404, f"The model '{model}' does not exist: this bridge serves "
                       f"'{model_id}'.", param="model", code="model_not_found")
    conversation = conversation_from(body.get("messages"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ApiError(400, "'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object.", param="stream_options")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        stops = tuple(stop)
    else:
        raise ApiError(400, "'stop' must be a string or a list of strings.", param="stop")
    limit = None
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ApiError(400, f"'{name}' must be a positive integer.", param=name)
        limit = value
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "Only n=1 is supported: ChatRTX writes one answer at a time.",
                       param="n")
    return ChatJob(conversation=conversation, stream=bool(stream),
                   include_usage=bool(options and options.get("include_usage")),
                   stops=tuple(item for item in stops if item), max_tokens=limit)


@dataclass
class Generation:
    """One answer: iterate ``pieces()`` once, then read ``finish_reason`` and ``usage()``."""

    engine: Engine
    job: ChatJob
    give_up: Callable[[], bool]
    finish_reason: str | None = None  # None: given up (client gone, or shutting down)
    prompt_tokens: int = 0
    _stream: Iterator[object] = field(init=False)
    _shaper: AnswerShaper = field(init=False)

    def __post_init__(self) -> None:
        self._stream, self.prompt_tokens, stops = self.engine.open(self.job)
        self._shaper = AnswerShaper(stops, self.job.max_tokens, self.engine.counter)

    def pieces(self) -> Generator[str, None, None]:
        try:
            for item in self._stream:
                if self.give_up():
                    return
                text, reason = self._shaper.feed(delta_text(item))
                if text:
                    yield text
                if reason is not None:
                    self.finish_reason = reason
                    return
            text, reason = self._shaper.finish()
            if reason == "stop" and self._hit_engine_cap():
                reason = "length"
            self.finish_reason = reason
            if text:
                yield text
        except (GeneratorExit, EngineFailed):
            raise
        except Exception as exc:
            raise EngineFailed(type(exc).__name__) from exc
        finally:
            close_quietly(self._stream)

    def _hit_engine_cap(self) -> bool:
        cap = self.engine.model.max_new_tokens
        counter = self.engine.counter
        return bool(cap and counter.exact and counter.count(self._shaper.model_text) >= cap)

    def usage(self) -> dict[str, int]:
        completion = self.engine.counter.count(self._shaper.text)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def peer_closed(connection: socket.socket) -> bool:
    """Whether the client has hung up (an orderly close or a reset), without reading its data."""
    timeout = connection.gettimeout()
    try:
        connection.settimeout(0)
        return connection.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False  # connected, nothing to read
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            connection.settimeout(timeout)


class Bridge:
    """What the request handlers share."""

    def __init__(self, model: ModelEntry, api_key: str | None, max_waiting: int) -> None:
        self.model = model
        self.api_key = api_key
        self.engine: Engine | None = None
        self.line = Line(max_waiting)
        self.stopping = threading.Event()
        self.created = int(time.time())

    def model_card(self) -> dict[str, Any]:
        card: dict[str, Any] = {"id": self.model.id, "object": "model", "created": self.created,
                                "owned_by": OWNED_BY}
        if self.engine is not None:
            card["chatrtx_bridge"] = {"name": self.model.name,
                                      "prompts": self.engine.describe_prompts(),
                                      "token_counts": self.engine.counter.describe()}
        return card


class BridgeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = os.name != "nt"  # on Windows it would let a second server share it
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], bridge: Bridge) -> None:
        self.bridge = bridge
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer's own looks the host name up (getfqdn): seconds on some networks.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rtxrelay-chatrtx-bridge/1"
    timeout = 300  # an idle keep-alive connection, or a client that stopped reading

    _status = 0
    _sent = False

    @property
    def bridge(self) -> Bridge:
        server = self.server
        assert isinstance(server, BridgeServer)
        return server.bridge

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: ``_dispatch`` logs one line per request, without the query string."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The base class's own errors (bad request line, headers too long...) as JSON."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        self._send_json(code, error_body(message or phrase, "invalid_request_error"))

    # -- plumbing ----------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        started = time.monotonic()
        self._status, self._sent = 0, False
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            self._check_key()
            self._route(method, path)
        except ApiError as error:
            self._send_error(error)
        except ClientGone:
            self._status = 499  # nginx's "client closed request", for the log only
            self.close_connection = True
        except Exception as exc:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("internal error (%s), at:\n%s", type(exc).__name__, frames.rstrip())
            self._send_error(ApiError(500, "Internal error in the bridge (see its console).",
                                      kind="server_error"))
        finally:
            log.info("%s %s %d %.2fs", method, path[:80], self._status,
                     time.monotonic() - started)

    def _send_error(self, error: ApiError) -> None:
        if self._sent:  # a stream already started: nothing sensible to add
            self.close_connection = True
            return
        self._send_json(error.status, error.body(), error.headers)

    def _send_json(self, status: int, payload: dict[str, Any],
                   headers: Sequence[tuple[str, str]] = ()) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True
        self._status, self._sent = status, True

    def _check_key(self) -> None:
        key = self.bridge.api_key
        if not key:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode("utf-8"), key.encode("utf-8")):
            self.close_connection = True  # the body stays unread
            raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer "
                           "<key>' with the bridge's key.", code="invalid_api_key",
                           headers=[("WWW-Authenticate", "Bearer")])

    def _read_json(self) -> dict[str, Any]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "Send the body with a Content-Length.")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise ApiError(411, "Send the body with a Content-Length.") from None
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise ClientGone
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return body

    def _give_up(self) -> bool:
        return self.bridge.stopping.is_set() or peer_closed(self.connection)

    def _require_engine(self) -> Engine:
        engine = self.bridge.engine
        if engine is None:
            raise ApiError(503, f"The bridge is still loading {self.bridge.model.id}.",
                           kind="server_error", code="model_loading",
                           headers=[("Retry-After", "10")])
        return engine

    # -- routes ------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> None:
        models_prefix = "/v1/models/"
        routes: dict[str, tuple[str, Callable[[], None]]] = {
            "/health": ("GET", self._health),
            "/v1/models": ("GET", self._models),
            "/v1/chat/completions": ("POST", self._chat),
        }
        if path.startswith(models_prefix):
            routes[path] = ("GET", lambda: self._model(path[len(models_prefix):]))
        if path not in routes:
            self.close_connection = True  # a body may follow, unread
            raise ApiError(404, f"Unknown path {path}: this bridge serves GET /v1/models, "
                           "POST /v1/chat/completions and GET /health.", code="unknown_url")
        allowed, handler = routes[path]
        if method != allowed:
            self.close_connection = True
            raise ApiError(405, f"{path} takes {allowed}, not {method}.",
                           code="method_not_allowed", headers=[("Allow", allowed)])
        handler()

    def _health(self) -> None:
        bridge = self.bridge
        if bridge.engine is None:
            self._send_json(503, {"status": "loading", "model": bridge.model.id})
            return
        busy, waiting = bridge.line.status()
        self._send_json(200, {"status": "ok", "model": bridge.model.id, "busy": busy,
                              "waiting": waiting,
                              "prompts": bridge.engine.describe_prompts(),
                              "token_counts": bridge.engine.counter.describe()})

    def _models(self) -> None:
        self._send_json(200, {"object": "list", "data": [self.bridge.model_card()]})

    def _model(self, model_id: str) -> None:
        if model_id != self.bridge.model.id:
            raise ApiError(404, f"The model '{model_id}' does not exist.", param="model",
                           code="model_not_found")
        self._send_json(200, self.bridge.model_card())

    def _chat(self) -> None:
        engine = self._require_engine()
        job = parse_chat_request(self._read_json(), engine.model.id)
        line = self.bridge.line
        try:
            ticket = line.join()
        except LineFull:
            raise ApiError(429, f"Busy: {line.max_waiting} requests are already waiting for "
                           "the GPU. Try again later.", kind="rate_limit_error",
                           code="rate_limit_exceeded",
                           headers=[("Retry-After", str(line.retry_after()))]) from None
        try:
            if not line.wait_turn(ticket, self._give_up):
                if self.bridge.stopping.is_set():
                    raise ApiError(503, "The bridge is stopping.", kind="server_error")
                raise ClientGone
            try:
                generation = Generation(engine, job, self._give_up)
            except PromptTooLong as exc:
                raise ApiError(400, f"The last message is {exc.tokens} tokens long; "
                               f"{engine.model.id} takes {exc.budget} at most.",
                               param="messages", code="context_length_exceeded") from None
            except EngineFailed as exc:
                log.error("the engine failed to start an answer (%s; ChatRTX's log says more)", exc)
                raise ApiError(500, "ChatRTX's engine failed (see the bridge's console).",
                               kind="server_error", code="engine_error") from None
            if job.stream:
                self._stream_answer(generation)
            else:
                self._whole_answer(generation)
        finally:
            line.leave(ticket)

    def _whole_answer(self, generation: Generation) -> None:
        try:
            content = "".join(generation.pieces())
        except EngineFailed as exc:
            log.error("the engine failed while answering (%s; ChatRTX's log says more)", exc)
            raise ApiError(500, "ChatRTX's engine failed (see the bridge's console).",
                           kind="server_error", code="engine_error") from None
        if generation.finish_reason is None:
            if self.bridge.stopping.is_set():
                raise ApiError(503, "The bridge is stopping.", kind="server_error")
            raise ClientGone
        self._send_json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": generation.engine.model.id,
            "choices": [{"index": 0,
                         "message": {"role": "assistant", "content": content, "refusal": None},
                         "logprobs": None, "finish_reason": generation.finish_reason}],
            "usage": generation.usage(),
        })

    def _stream_answer(self, generation: Generation) -> None:
        job = generation.job
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
            payload: dict[str, Any] = {
                "id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": generation.engine.model.id,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish_reason}],
            }
            if job.include_usage:
                payload["usage"] = None
            return payload

        self._start_events()
        self._event(chunk({"role": "assistant", "content": ""}))
        pieces = generation.pieces()
        try:
            for piece in pieces:
                self._event(chunk({"content": piece}))
        except EngineFailed as exc:
            log.error("the engine failed while answering (%s; ChatRTX's log says more)", exc)
            self._event(error_body("ChatRTX's engine failed (see the bridge's console).",
                                   "server_error", None, "engine_error"))
            self._end_events()
            return
        finally:
            pieces.close()
        if generation.finish_reason is None:  # gave up: the client is gone, or we stop
            self.close_connection = True
            if not self.bridge.stopping.is_set():
                raise ClientGone
            return
        self._event(chunk({}, generation.finish_reason))
        if job.include_usage:
            self._event({"id": completion_id, "object": "chat.completion.chunk",
                         "created": created, "model": generation.engine.model.id,
                         "choices": [], "usage": generation.usage()})
        self._write_chunk(b"data: [DONE]\n\n")
        self._end_events()

    # -- server-sent events over chunked transfer encoding --------------------------------------

    def _start_events(self) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("X-Accel-Buffering", "no")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        except OSError:
            raise ClientGone from None
        self._status, self._sent = 200, True

    def _event(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        self._write_chunk(b"data: " + data.encode("utf-8") + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        except OSError:
            self.close_connection = True
            raise ClientGone from None

    def _end_events(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True


# -- start, serve, stop -------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """rtxrelay.core.hosts.is_loopback_host, restated: this file runs on its own in ChatRTX's
    Python (standard library only), where rtxrelay is not installed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rtxrelay_chatrtx_bridge.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)  # --help prints the manual
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default %(default)s: this PC only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port (default %(default)s; never 8000, ChatRTX's NIM port)")
    parser.add_argument("--api-key", default=os.environ.get(KEY_ENV) or None,
                        help=f"require 'Authorization: Bearer KEY' (default: ${KEY_ENV})")
    parser.add_argument("--model", help="model id (default: the one selected in ChatRTX)")
    parser.add_argument("--config", type=Path, default=None,
                        help="ChatRTX's config.json (default: under %%ProgramData%%)")
    parser.add_argument("--engine-dir", type=Path, default=None,
                        help="the app's engine folder, if the ChatRTX package is not importable")
    parser.add_argument("--template", default="auto",
                        choices=["auto", *FAMILIES, "single"],
                        help="prompt template (default: from the model)")
    parser.add_argument("--max-waiting", type=int, default=DEFAULT_MAX_WAITING,
                        help="requests that may wait in line before 429 (default %(default)s)")
    return parser.parse_args(argv)


def check_listen_options(host: str, port: int, api_key: str | None, max_waiting: int) -> None:
    if not is_loopback(host) and not api_key:
        raise SetupError(
            f"Refusing to listen on {host} without an API key: anyone who reaches this PC "
            "could use its GPU.",
            f"Give a long random key with --api-key, or in the environment as {KEY_ENV}, and "
            "the same key to rtxrelay as OPENAI_API_KEY. Or keep the default --host "
            f"{DEFAULT_HOST} (this PC only).")
    if not 0 <= port <= 65535:
        raise SetupError(f"--port {port} is not a port number.")
    if max_waiting < 0:
        raise SetupError("--max-waiting cannot be negative.")


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    _CONSOLE_HANDLERS: list[object] = []  # kept alive while registered

    def on_console_close(stop: Callable[[], None], stopped: threading.Event) -> None:
        """Closing the console window, logging off or shutting down: stop like Ctrl+C does.
        Windows ends the process when the handler returns (or after 5 s)."""
        routine_type = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)

        def handler(event: int) -> bool:
            if event in (2, 5, 6):  # CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT
                stop()
                stopped.wait(4.0)
                return True
            return False  # Ctrl+C and Ctrl+Break: Python's own handlers

        routine = routine_type(handler)
        _CONSOLE_HANDLERS.append(routine)
        ctypes.windll.kernel32.SetConsoleCtrlHandler(routine, True)
else:
    def on_console_close(stop: Callable[[], None], stopped: threading.Event) -> None:
        """No console window to close outside Windows."""


def install_stop_signals(stop: Callable[[], None]) -> None:
    """Ctrl+C (SIGINT) raises KeyboardInterrupt as usual; Ctrl+Break and SIGTERM do the same."""

    def interrupt(signum: int, frame: object) -> None:
        stop()
        raise KeyboardInterrupt

    for name in ("SIGBREAK", "SIGTERM"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, interrupt)


def fail(error: SetupError) -> int:
    print(f"rtxrelay ChatRTX bridge: cannot start: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"  What to do: {error.hint}", file=sys.stderr)
    return SETUP_ERROR_EXIT


def setup_console() -> None:
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure):  # a cp1252 console must not crash on a model's name
            reconfigure(errors="replace", line_buffering=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # ChatRTX configures the root logger its own way


def main(argv: Sequence[str] | None = None) -> int:
    setup_console()
    args = parse_args(argv)
    try:
        check_listen_options(args.host, args.port, args.api_key, args.max_waiting)
        config_path = args.config or default_config_path()
        config = read_config(config_path)
        data_dir = config_path.resolve().parent.parent
        model = choose_model(config, args.model, data_dir)
    except SetupError as error:
        return fail(error)

    print(f"rtxrelay ChatRTX bridge: {model.label}, from {data_dir}", flush=True)
    print("Note: the bridge loads the model into GPU memory itself. If the ChatRTX app is open "
          "too, the model is loaded twice (out of memory on most 8-12 GB cards): close the app "
          "while the bridge runs.", flush=True)
    if args.port == NIM_PORT:
        print(f"Warning: port {NIM_PORT} is where ChatRTX 0.5 serves its NIM models; "
              f"the default {DEFAULT_PORT} avoids the clash.", flush=True)

    bridge = Bridge(model, args.api_key, args.max_waiting)
    try:
        server = BridgeServer((args.host, args.port), bridge)
    except OSError as exc:
        return fail(SetupError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror}.",
                               "Is another bridge running? Stop it, or choose --port."))
    serving = threading.Thread(target=server.serve_forever, args=(0.1,), name="http",
                               daemon=True)  # 0.1: how long a stop waits for the loop
    serving.start()  # /health answers "loading" meanwhile

    stop_requested = threading.Event()
    stopped = threading.Event()
    install_stop_signals(stop_requested.set)
    on_console_close(stop_requested.set, stopped)
    code = 0
    try:
        bridge.engine = make_engine(model, supported_models(config), data_dir, args.engine_dir,
                                    args.template)
        engine = bridge.engine
        print(f"Loaded {model.label}. Prompts: {engine.describe_prompts()}. Token counts: "
              f"{engine.counter.describe()}.", flush=True)
        if not engine.templated:
            log.warning("single-question mode: each request sends only its last question")
        host, port = server.server_address[:2]
        print(f"{READY_PREFIX}{url_for(str(host), int(port))} (Ctrl+C stops)", flush=True)
        print(f"rtxrelay's .env: OPENAI_BASE_URL={url_for(str(host), int(port))} and "
              "MAX_CONCURRENT_JOBS=1" + (", OPENAI_API_KEY=<the key>" if args.api_key else ""),
              flush=True)
        while not stop_requested.wait(0.5):
            pass
    except SetupError as error:
        code = fail(error)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            shut_down(server, bridge)
        except KeyboardInterrupt:  # a second Ctrl+C: leave now, the OS frees the GPU memory
            print("Stopped (interrupted while stopping).", flush=True)
        stopped.set()
    return code


def shut_down(server: BridgeServer, bridge: Bridge) -> None:
    """Stop taking requests, let the current answer notice (it stops at its next delta), and
    unload the model."""
    bridge.stopping.set()
    server.shutdown()
    server.server_close()
    if bridge.engine is not None:
        if bridge.line.wait_idle(5.0):
            bridge.engine.unload()
        print("Stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
