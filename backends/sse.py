"""Incremental Server-Sent Events parser (Gradio's queue and OpenAI-compatible streams).

Gradio streams ``data: {json}`` events separated by blank lines. We parse bytes ourselves instead
of ``StreamReader.readline()``: a single ``process_completed`` event carries the whole chat
history and easily exceeds aiohttp's 64 KiB line limit on long conversations.
"""

from __future__ import annotations


class SseParser:
    """Feed bytes, get the ``data`` payload of every complete event.

    An event that was cut off (no terminating blank line) is never returned, so a stream that
    dies mid-event cannot produce half a JSON document.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scan_from = 0
        self._data_lines: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        events: list[str] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", max(start, self._scan_from))
            if end < 0:
                break
            line = bytes(self._buffer[start:end]).rstrip(b"\r").decode("utf-8", "replace")
            start = end + 1
            self._scan_from = start
            if not line:
                if self._data_lines:
                    events.append("\n".join(self._data_lines))
                    self._data_lines = []
                continue
            if line.startswith(":"):  # comment / keep-alive
                continue
            field, _, value = line.partition(":")
            if field == "data":
                self._data_lines.append(value[1:] if value.startswith(" ") else value)
            # other fields (event, id, retry) are not used by Gradio
        if start:
            del self._buffer[:start]
            self._scan_from = max(0, self._scan_from - start)
        return events

    @property
    def has_partial_event(self) -> bool:
        """True when bytes of an unfinished event are pending (the stream was cut mid-event)."""
        return bool(self._buffer.strip()) or bool(self._data_lines)
