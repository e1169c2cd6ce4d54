"""What both stores read back the same way: a turn's columns and row, stale answers grouped
by turn, a migration script split into statements. The SQL dialects differ (``?`` / ``$1``);
what the rows mean does not."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from rtxrelay.core.backend import Usage
from rtxrelay.core.store import MessageRef, StaleAnswer, Turn, TurnStatus


class Row(Protocol):
    """A row as both drivers give it (sqlite3.Row, asyncpg's Record): by position."""

    def __getitem__(self, index: int, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


TURN_COLUMNS = ("id, conversation_id, question, answer, backend_answer, status, created_at, "
                "prompt_tokens, completion_tokens")
# The same, of ``turns t`` in a join.
TURN_COLUMNS_OF_T = ", ".join("t." + column.strip() for column in TURN_COLUMNS.split(","))


def turn_of(row: Row) -> Turn:
    """A row of ``TURN_COLUMNS`` as a ``Turn``."""
    return Turn(
        id=int(row[0]),
        conversation_id=int(row[1]),
        question=str(row[2]),
        answer=row[3],
        backend_answer=row[4],
        status=TurnStatus(row[5]),
        created_at=float(row[6]),
        usage=Usage(int(row[7]), int(row[8])) if row[7] is not None and row[8] is not None
        else None,
    )


def stale_answers(rows: Iterable[Row]) -> list[StaleAnswer]:
    """Rows of (turn id, answer, platform, chat, message), ordered by turn then message, as
    one ``StaleAnswer`` per turn with its messages in order."""
    found: dict[int, StaleAnswer] = {}
    for turn_id, text, *ref in rows:
        earlier = found.get(int(turn_id))
        refs = (earlier.messages if earlier else ()) + (MessageRef(*map(str, ref)),)
        found[int(turn_id)] = StaleAnswer(int(turn_id), str(text), refs)
    return list(found.values())


def statements(script: str) -> list[str]:
    """A migration script's statements (separated by ``;``, none inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]
