"""Incremental Server-Sent Events parser (Gradio's queue and OpenAI-compatible streams).

Gradio streams ``data: {json}`` events separated by blank lines. We parse bytes ourselves instead
of ``StreamReader.readline()``: a single ``process_completed`` event carries the whole chat
history and easily exceeds aiohttp's 64 KiB line limit on long conversations.

The parser cuts a read into whole events at blank lines (one ``find`` per read, one ``split``),
not line by line: an event is almost always one ``data:`` line, and a read often holds several.
"""

from __future__ import annotations


class SseParser:
    """Feed bytes, get the ``data`` payload of every complete event.

    An event that was cut off (no terminating blank line) is never returned, so a stream that
    dies mid-event cannot produce half a JSON document. Lines may end in LF or CRLF.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()  # the unfinished event, CRLF already made LF

    def feed(self, chunk: bytes) -> list[str]:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        buffer = self._buffer
        if not buffer and chunk.endswith(b"\n\n"):
            # The usual read: whole events, nothing pending. Taken as it is, without the
            # buffer's copies (at a slow pace every step of a read runs on cold caches).
            complete = chunk[:-2]
        else:
            if chunk[:1] == b"\n" and buffer[-1:] == b"\r":
                del buffer[-1]  # a CRLF cut between two reads
            # A blank line may straddle the previous read and this one: look one byte back.
            scan_from = max(0, len(buffer) - 1)
            buffer += chunk
            end = buffer.rfind(b"\n\n", scan_from)
            if end < 0:
                return []
            complete = bytes(buffer[:end])
            del buffer[: end + 2]
        events: list[str] = []
        for block in complete.split(b"\n\n"):
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(block[6:].decode("utf-8", "replace"))  # the usual event
            elif block:
                payload = _data_of(block)
                if payload is not None:
                    events.append(payload)
        return events

    @property
    def has_partial_event(self) -> bool:
        """True when bytes of an unfinished event are pending (the stream was cut mid-event)."""
        return bool(self._buffer.strip())


def _data_of(block: bytes) -> str | None:
    """The ``data`` lines of one event joined by newlines; None when it has none (a comment
    or keep-alive). Other fields (event, id, retry) are not used by Gradio or OpenAI."""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue  # a comment / keep-alive, or the blank line of an empty event before
        field, _, value = line.partition(b":")
        if field == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)
    if not data:
        return None
    return b"\n".join(data).decode("utf-8", "replace")
