"""``backends.toml``: the backends of a pool, one ``[[backend]]`` table each.

Each entry takes the backend settings ``.env`` takes, under the same names, so every error
message and README line about a setting holds here too::

    [[backend]]
    name = "desk"                      # shown by doctor, /health and the logs
    RTX_URL = "http://127.0.0.1:41231?cookie=…"

    [[backend]]
    name = "office"                    # another RTX PC running `rtxrelay serve`
    OPENAI_BASE_URL = "http://192.168.1.20:8000/v1"
    OPENAI_API_KEY = "…"
    MAX_CONCURRENT_JOBS = 1

What an entry leaves out comes from ``.env`` (timeouts, SYSTEM_PROMPT), except the settings
that say which backend it is: those are never inherited, or every entry would be the same one.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rtxrelay.core.errors import ConfigError

# The settings that make a backend what it is: an entry has its own or none.
IDENTITY = frozenset({"RTX_URL", "RTX_LAUNCH", "OPENAI_BASE_URL", "OPENAI_API_KEY",
                      "OPENAI_MODEL", "MAX_CONCURRENT_JOBS"})
# Everything else an entry may set (read by ChatRtxSettings / OpenAiSettings).
_SHARED = frozenset({
    "RTX_CA_FILE", "RTX_INSECURE_LOCALHOST", "RTX_CHAT_FN", "RTX_CONNECT_TIMEOUT",
    "RTX_FIRST_EVENT_TIMEOUT", "RTX_IDLE_TIMEOUT", "RTX_TOTAL_TIMEOUT", "RTX_ALLOW_REMOTE_HTTP",
    "OPENAI_CONNECT_TIMEOUT", "OPENAI_FIRST_TOKEN_TIMEOUT", "OPENAI_IDLE_TIMEOUT",
    "OPENAI_TOTAL_TIMEOUT", "OPENAI_ALLOW_REMOTE_HTTP", "OPENAI_BUSY_WAIT", "OPENAI_MAX_TOKENS",
    "OPENAI_TEMPERATURE", "SYSTEM_PROMPT",
})
ALLOWED = (IDENTITY - {"RTX_LAUNCH"}) | _SHARED
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")


@dataclass(frozen=True)
class BackendEntry:
    name: str
    values: dict[str, str]  # NAME=value, as .env would hold them
    origin: str  # "backends.toml, backend 2 (office)": where an error points


def read_backends_file(path: Path) -> list[BackendEntry]:
    """The entries of ``path``, checked: names distinct and short, settings known, one
    backend address each. Raises ``ConfigError`` saying which entry and what to write."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.",
                          hint="Check the file's permissions, or BACKENDS_FILE.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.",
                          hint="Each backend is a [[backend]] table of NAME = \"value\" lines; "
                          "see README, 'Several backends'.") from None
    unknown = sorted(set(document) - {"backend"})
    tables = document.get("backend")
    if unknown or not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path} lists no [[backend]] tables" +
                          (f" (found {', '.join(unknown)})." if unknown else "."),
                          hint="Start each backend with a [[backend]] line; see README, "
                          "'Several backends'.")
    entries: list[BackendEntry] = []
    for number, table in enumerate(tables, 1):
        entries.append(_entry(path, number, table))
    names = [entry.name for entry in entries]
    if duplicated := sorted({name for name in names if names.count(name) > 1}):
        raise ConfigError(f"{path} names more than one backend {duplicated[0]!r}.",
                          hint="Give each [[backend]] its own name.")
    return entries


def _entry(path: Path, number: int, table: object) -> BackendEntry:
    where = f"{path.name}, backend {number}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} is not a table.", hint="Write it as a [[backend]] table.")
    values: dict[str, str] = {}
    for name, value in table.items():
        if name == "name":
            continue
        if name == "RTX_LAUNCH":
            raise ConfigError(
                f"{where}: RTX_LAUNCH cannot start a backend of a pool.", setting="RTX_LAUNCH",
                hint="Start Chat with RTX yourself and give its address as RTX_URL (or keep "
                "RTX_LAUNCH in .env for a single backend).")
        if name not in ALLOWED:
            raise ConfigError(f"{where}: {name} is not a backend setting.", setting=name,
                              hint="A backend takes " + ", ".join(sorted(ALLOWED)) + ".")
        values[name] = _text(where, name, value)
    addresses = [name for name in ("RTX_URL", "OPENAI_BASE_URL") if name in values]
    if len(addresses) != 1:
        raise ConfigError(
            f"{where} has {'both RTX_URL and OPENAI_BASE_URL' if addresses else 'no address'}.",
            hint="Give each backend one address: RTX_URL for Chat with RTX 0.2/0.3, "
            "OPENAI_BASE_URL for an OpenAI-compatible server (another PC's `rtxrelay serve`, "
            "ChatRTX 0.5's model, Ollama, LM Studio, llama.cpp).")
    name = table.get("name", f"backend-{number}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name = {name!r} is not a usable name.",
                          hint="Use up to 40 letters, digits, '.', '_' or '-'.")
    return BackendEntry(name, values, f"{where} ({name})")


def _text(where: str, name: str, value: object) -> str:
    """A TOML value as .env would hold it: text, a number, or a boolean."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str | int | float):
        return str(value)
    raise ConfigError(f"{where}: {name} must be text, a number or true/false.", setting=name,
                      hint=f'Write it as {name} = "…".')
