"""Apply Gradio's streaming diffs (sse_v2 and later) to the previous output value.

A ``process_generating`` message after the first one carries, per output, a list of
``[op, path, value]`` edits. Unlike ``gradio_client`` we edit the value in place instead of
deep-copying the whole chat history for every token: the cost of an update is then the size of
the diff, not the size of the conversation. The updates of one read are merged first
(``merge_diffs``), so the answer string grows once per read, not once per token.
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


def merge_diffs(updates: list[list[Json]], outputs: int) -> list[list[Json]]:
    """The edits of consecutive updates as one update: per output, every edit in order, with
    runs of text ``append``s to one path joined into one (``+=`` on a string copies it whole,
    so N appends of a read would copy the answer N times). A non-list entry edits nothing.

    It runs once per read of a stream, so ``_text_appended`` is written out in it: at Chat
    with RTX's pace each read runs on cold caches, where a call costs more than its work."""
    merged: list[list[Json]] = []
    for index in range(outputs):
        edits: list[Json] = []
        parts: list[str] = []  # the texts of the append run at ``edits[-1]``, not joined yet
        for update in updates:
            if len(update) != outputs:
                raise _bad_diff("an update has another number of outputs")
            diff = update[index]
            for edit in diff if isinstance(diff, list) else ():
                text = edit[2] if isinstance(edit, list) and len(edit) == 3 \
                    and edit[0] == "append" and isinstance(edit[2], str) else None
                if text is not None and parts and edit[1] == edits[-1][1]:
                    parts.append(text)
                    continue
                if len(parts) > 1:  # the run ends: one append of its texts
                    edits[-1] = ["append", edits[-1][1], "".join(parts)]
                parts = [] if text is None else [text]
                edits.append(edit)
        if len(parts) > 1:
            edits[-1] = ["append", edits[-1][1], "".join(parts)]
        merged.append(edits)
    return merged


def appended_text(edits: list[Json], path: list[Json]) -> str | None:
    """The text ``edits`` add at the end of the string at ``path`` when that is all they do
    (``""`` for no edit at all); None when they do anything else."""
    added: list[str] = []
    for edit in edits:
        text = _text_appended(edit)
        if text is None or edit[1] != path:
            return None
        added.append(text)
    return "".join(added)


def _text_appended(edit: Json) -> str | None:
    """The text of an ``append`` of text, None for any other edit (or a malformed one)."""
    if isinstance(edit, list) and len(edit) == 3 and edit[0] == "append" \
            and isinstance(edit[2], str):
        return edit[2]
    return None


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
