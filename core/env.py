"""Typed access to raw settings (environment and ``.env`` values).

Every getter's error names the variable and the form it should take, so a malformed value
fails at start-up with what to write instead — never later, mid-answer. Where the values come
from (the environment, a ``.env`` file) is the composition root's business (``app/settings``);
adapters and backends read their own settings through an ``Env`` handed to them.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Mapping
from typing import TypeVar

from .errors import ConfigError
from .ratelimit import Rate

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

E = TypeVar("E", bound=enum.Enum)


class Env:
    """Raw ``NAME=value`` settings with typed getters."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    @property
    def values(self) -> Mapping[str, str]:
        """Every raw value (e.g. to find the secrets among them)."""
        return self._values

    def str(self, name: builtins.str) -> builtins.str | None:
        """The value with surrounding blanks removed; None when unset or blank."""
        value = self._values.get(name)
        return value.strip() if value and value.strip() else None

    def int(self, name: builtins.str, default: builtins.int, *, minimum: builtins.int,
            maximum: builtins.int) -> builtins.int:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = builtins.int(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r} is not a whole number.",
                hint=f"Use a number from {minimum} to {maximum}.",
            ) from None
        if not minimum <= value <= maximum:
            raise ConfigError(
                f"{name}={value} is out of range.",
                hint=f"Use a number from {minimum} to {maximum}.",
            )
        return value

    def seconds(self, name: builtins.str, default: builtins.float) -> builtins.float:
        """A positive number of seconds, at most a day."""
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = builtins.float(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r} is not a number of seconds.", hint="Use e.g. 30 or 2.5."
            ) from None
        if not 0 < value <= 86_400:
            raise ConfigError(
                f"{name}={raw} is out of range.",
                hint="Use a positive number of seconds (at most 86400).",
            )
        return value

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self._values.get(name)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r} is not a yes/no value.", hint="Use 1 or 0.")

    def choice(self, name: builtins.str, options: type[E], default: E) -> E:
        """One member of the enum ``options``, written as its value (case-insensitive)."""
        raw = self.str(name)
        if raw is None:
            return default
        for option in options:
            if builtins.str(option.value).lower() == raw.lower():
                return option
        allowed = " or ".join(repr(o.value) for o in options)
        raise ConfigError(f"{name}={raw!r} is not {allowed}.")

    def ids(self, name: builtins.str) -> frozenset[builtins.int]:
        """A comma-separated list of numeric ids (empty = no restriction)."""
        raw = self.str(name)
        if raw is None:
            return frozenset()
        result: set[builtins.int] = set()
        for part in raw.replace(";", ",").split(","):
            part = part.strip()
            if not part:
                continue
            try:
                result.add(builtins.int(part))
            except ValueError:
                raise ConfigError(
                    f"{name} contains {part!r}, which is not a numeric id.",
                    hint="Use comma-separated numbers, e.g. 12345,67890.",
                ) from None
        return frozenset(result)

    def rate(self, name: builtins.str, default: Rate) -> Rate:
        """``"10/60"`` → 10 per 60 s; ``"0"`` turns the limit off."""
        raw = self.str(name)
        if raw is None:
            return default
        if raw == "0":
            return Rate.OFF
        count, _, window = raw.partition("/")
        try:
            rate = Rate(builtins.int(count), builtins.float(window or 60))
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a rate.",
                              hint="Use COUNT/SECONDS, e.g. 10/60, or 0 for no limit.") from None
        if rate.count < 0 or rate.window <= 0:
            raise ConfigError(f"{name}={raw!r} is out of range.", hint="Use e.g. 10/60.")
        return rate
