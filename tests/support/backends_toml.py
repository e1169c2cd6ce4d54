"""A backends.toml for tests: one ``[[backend]]`` table per mapping, in order."""

from __future__ import annotations

import json
from collections.abc import Mapping


def backends_toml(*entries: Mapping[str, str | int]) -> str:
    # A JSON string is a TOML basic string (the same escapes), and an int is an int.
    return "\n".join("[[backend]]\n" + "".join(f"{name} = {json.dumps(value)}\n"
                                               for name, value in entry.items())
                     for entry in entries)


def replicas(**urls: str) -> str:
    """Chat with RTX replicas by name: ``replicas(desk=desk.url, laptop=laptop.url)``."""
    return backends_toml(*({"name": name, "RTX_URL": url} for name, url in urls.items()))
