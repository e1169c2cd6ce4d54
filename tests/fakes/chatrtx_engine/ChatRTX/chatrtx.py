"""``ChatRTX.chatrtx`` as the bridge sees it: ``ChatRTX`` and the TensorRT-LLM model it holds.

The signatures are those of NVIDIA/ChatRTX (``release/0.4.0`` and the 0.5 commit 5052d9e,
``ChatRTX_APIs/ChatRTX/chatrtx.py`` and ``inference/trtllm/trtllm.py``):

- ``ChatRTX(models_info_map, model_download_dir, use_nims=True)``; the model list is ChatRTX's
  ``models/supported``, the models live in ``<model_download_dir>/models/<id>/engine``;
- ``init_llm_model(model_id, **kwargs) -> bool`` (0.5 reads the entry's ``backend``: a KeyError
  without one, as here);
- ``generate_stream_response(query)``: a generator of text deltas, the question wrapped in the
  model's one-question template;
- ``_llm``: the model object, ``stream_complete(prompt)`` (returns a generator of text deltas,
  in bursts), ``get_model_name()`` (the engine's architecture, e.g. ``LlamaForCausalLM``) and
  ``_tokenizer`` (Hugging Face style ``encode``);
- ``unload_llm()``.

The fake model answers ``BASE_ANSWER`` in bursts of ``BURST`` characters. Directives anywhere
in the prompt change that: ``[len=N]`` (an answer of N characters), ``[refs]`` (ChatRTX's
reference HTML tail, with Windows paths), ``[overrun]`` (the model runs past its turn, writing
the template's next-turn markers), ``[endless]`` (never ends), ``[hold]`` (before the last burst,
wait for a line on stdin), ``[fail]`` (after the first burst, log an error quoting the prompt
and raise, as the real engine does), ``[tag=NAME]`` (names the events of this generation).

As the real ``ChatRTX()``, the constructor asks its logger (``ChatRTX.logger``) for a bare
``ChatRTX.log``: it fails unless the logger was set up before.

Events go to stderr, one JSON object a line after ``EVENT_PREFIX``: ``loaded``, ``prompt`` (the
exact text the model got, and through which call), ``start``, ``holding``, ``end`` (ran to its
end), ``closed`` (the consumer closed the generator), ``overlap`` (two generations at once: the
real engine, built for batch size 1, cannot) and ``unloaded``.

Environment: ``FAKE_CHATRTX_HIDE_LLM=1`` keeps the model object out of reach (only the
one-question call works), ``FAKE_CHATRTX_FAIL_LOAD=1`` makes ``init_llm_model`` fail.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .logger import ChatRTXLogger

EVENT_PREFIX = "FAKE-ENGINE "
BASE_ANSWER = "Hello from the fake engine. One two three four five six seven eight nine ten."
BURST = 9  # characters per streamed delta: markers and stop strings fall across deltas
REFERENCES = (
    "<br>Reference files:<br><div class=\"links-list\">"
    "<a data-link='C:\\Users\\alice\\Documents\\Plans\\secret plan.pdf'>secret plan.pdf</a>"
    "<a data-link='C:\\Users\\alice\\Documents\\notes.txt'>notes.txt</a></div>"
)
OVERRUNS = {  # what a model writes when it goes on past its turn
    "LlamaForCausalLM": "</s>[INST] An invented question [/INST] An invented answer",
    "GemmaForCausalLM": "<end_of_turn>\n<start_of_turn>user\nAn invented question",
    "ChatGLMForCausalLM": "<|user|>\nAn invented question\n<|assistant|>",
}
ONE_QUESTION = {  # ChatRTX's own one-question templates, per architecture
    "LlamaForCausalLM": "<s>[INST] {q} [/INST]",
    "GemmaForCausalLM": "<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n",
    "ChatGLMForCausalLM": "<|user|>\n{q}\n<|assistant|>",
}
_TOKEN = re.compile(r"\w+|[^\w\s]")

_active = 0
_active_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    sys.stderr.write(EVENT_PREFIX + json.dumps({"event": event, **fields}) + "\n")
    sys.stderr.flush()


def count_tokens(text: str) -> int:
    """The fake tokenizer's count: one token per word and per punctuation mark."""
    return len(_TOKEN.findall(text))


def tag_of(prompt: str) -> str | None:
    tags = re.findall(r"\[tag=([\w-]+)\]", prompt)
    return tags[-1] if tags else None


def answer_for(prompt: str, architecture: str) -> str:
    text = BASE_ANSWER
    length = re.search(r"\[len=(\d+)\]", prompt)
    if length:
        words = [text]
        while sum(len(word) + 1 for word in words) < int(length.group(1)):
            words.append(f"word{len(words)}")
        text = " ".join(words)[: int(length.group(1))]
    if "[overrun]" in prompt:
        text += OVERRUNS.get(architecture, "")
    if "[refs]" in prompt:
        text += REFERENCES
    return text


class FakeTokenizer:
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [len(token) for token in _TOKEN.findall(text)]


class FakeTrtLlm:
    """The engine's model object (``TrtLlm``)."""

    def __init__(self, engine_dir: Path) -> None:
        config = json.loads((engine_dir / "config.json").read_text(encoding="utf-8"))
        self._architecture = str(config["pretrained_config"]["architecture"])
        self._tokenizer = FakeTokenizer()

    def get_model_name(self) -> str:
        return self._architecture

    def stream_complete(self, prompt: str, **kwargs: Any) -> Iterator[str]:
        return self.generate(prompt, "stream_complete")

    def generate(self, prompt: str, via: str) -> Iterator[str]:
        emit("prompt", via=via, prompt=prompt, tag=tag_of(prompt))
        return self._bursts(prompt)

    def _bursts(self, prompt: str) -> Iterator[str]:
        global _active
        tag = tag_of(prompt)
        with _active_lock:
            _active += 1
            overlapping = _active > 1
        if overlapping:
            emit("overlap", tag=tag)
        emit("start", tag=tag)
        try:
            if "[endless]" in prompt:
                number = 0
                while True:
                    yield f"word{number} "
                    number += 1
                    time.sleep(0.002)  # the fake GPU's pace
            text = answer_for(prompt, self._architecture)
            pieces = [text[start:start + BURST] for start in range(0, len(text), BURST)]
            for index, piece in enumerate(pieces):
                if "[fail]" in prompt and index == 1:
                    ChatRTXLogger.get_logger().error("Fail to generate for prompt %s", prompt)
                    raise RuntimeError(f"Fail to generate stream response for prompt {prompt}")
                if "[hold]" in prompt and index == len(pieces) - 1:
                    emit("holding", tag=tag)
                    sys.stdin.readline()
                yield piece
            emit("end", tag=tag)
        except GeneratorExit:
            emit("closed", tag=tag)
            raise
        finally:
            with _active_lock:
                _active -= 1


class ChatRTX:
    def __init__(self, models_info_map: list[dict[str, Any]], model_download_dir: str,
                 use_nims: bool = True) -> None:
        ChatRTXLogger(log_level=logging.INFO, log_file="ChatRTX.log")
        self._models_info_map = models_info_map
        self._model_directory = Path(model_download_dir) / "models"
        self._llm: FakeTrtLlm | None = None
        self.__hidden: FakeTrtLlm | None = None

    def init_llm_model(self, model_id: str, **kwargs: Any) -> bool:
        info = next((entry for entry in self._models_info_map if entry["id"] == model_id), None)
        if info is None or info["backend"] != "TRTLLM" or os.environ.get("FAKE_CHATRTX_FAIL_LOAD"):
            return False
        engine_dir = self._model_directory / model_id / "engine"
        if not any(engine_dir.glob("*.engine")):
            return False
        llm = FakeTrtLlm(engine_dir)
        if os.environ.get("FAKE_CHATRTX_HIDE_LLM"):
            self.__hidden = llm
        else:
            self._llm = llm
        emit("loaded", model=model_id, kwargs=kwargs)
        return True

    def _model(self) -> FakeTrtLlm:
        llm = self._llm or self.__hidden
        if llm is None:
            raise RuntimeError("No model is loaded.")
        return llm

    def generate_stream_response(self, query: str) -> Iterator[str]:
        llm = self._model()
        template = ONE_QUESTION.get(llm.get_model_name(), "{q}")
        yield from llm.generate(template.format(q=query), "generate_stream_response")

    def generate_response(self, query: str) -> str:
        return "".join(self.generate_stream_response(query))

    def unload_llm(self) -> None:
        self._llm = self.__hidden = None
        emit("unloaded")
