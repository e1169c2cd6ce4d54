"""Decoding the JSON of streamed events: one per token, so the decoder's speed shows.

orjson decodes a Gradio or OpenAI event in about a quarter of the standard library's time
(bench/README.md). It is stricter: it refuses NaN and lone surrogates, which Python's own
``json.dumps`` (so Gradio) may write. An event it refuses is
decoded again by ``json``, so the answer never depends on which decoder is installed, and
without orjson (a platform without its wheels) ``json`` does it all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# The fast decoder alone (orjson's, else json's), for a per-token loop that calls it inline
# and falls back on ``loads`` when it raises ``ValueError``: a function call less per event.
fast_loads: Callable[[str | bytes], Any]

try:
    import orjson

    fast_loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency where it has wheels
    orjson = None  # type: ignore[assignment]
    fast_loads = json.loads


def loads(text: str | bytes) -> Any:
    """One event's JSON; ``ValueError`` when it is not JSON."""
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # NaN, a lone surrogate: the standard library takes them
    return json.loads(text)
