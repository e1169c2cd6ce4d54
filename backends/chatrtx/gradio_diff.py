"""Apply Gradio's streaming diffs (sse_v2 and later) to the previous output value.

A ``process_generating`` message after the first one carries, per output, a list of
``[op, path, value]`` edits. Unlike ``gradio_client`` we edit the value in place instead of
deep-copying the whole chat history for every token: the cost of an update is then the size of
the diff, not the size of the conversation.
"""

from __future__ import annotations

from typing import Any

from rtxrelay.core.errors import BackendError, BackendErrorKind

Json = Any


def apply_diff(value: Json, diff: list[list[Json]]) -> Json:
    """Return ``value`` with every edit applied (``value`` itself may be modified)."""
    for edit in diff:
        try:
            op, path, new = edit
        except (TypeError, ValueError) as exc:
            raise _bad_diff(f"malformed edit {edit!r}") from exc
        value = _apply_edit(value, list(path), op, new)
    return value


def _apply_edit(target: Json, path: list[Json], op: str, new: Json) -> Json:
    if not path:
        if op == "replace":
            return new
        if op == "append":
            return target + new
        raise _bad_diff(f"operation {op!r} on the root value")
    try:
        parent = target
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if op == "replace":
            parent[last] = new
        elif op == "append":
            parent[last] += new
        elif op == "add":
            if isinstance(parent, list):
                parent.insert(int(last), new)
            else:
                parent[last] = new
        elif op == "delete":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise _bad_diff(f"unknown operation {op!r}")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise _bad_diff(f"{op} at {path!r} does not fit the previous value") from exc
    return target


def _bad_diff(detail: str) -> BackendError:
    return BackendError(
        BackendErrorKind.PROTOCOL,
        f"Chat with RTX sent a streaming update that cannot be applied: {detail}.",
        hint="Ask again; if it keeps happening, report the Gradio version (`rtxrelay doctor`).",
    )
