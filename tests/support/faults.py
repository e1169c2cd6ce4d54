"""The fault report: every fault and bad input issue 11 lists, with what the suite saw.

Tests marked ``@pytest.mark.fault`` record one row each through the ``fault`` fixture; at the
end of the run the table is printed (``pytest -m fault`` runs just these):

    case | what happened | answers kept / lost | messages left stale | paths leaked

A row is green when its test passed with nothing lost, nothing stale and nothing leaked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class FaultRow:
    case: str
    happened: str
    kept: int | None = None  # answers (and questions) kept; None: not about answers
    lost: int = 0
    stale: int = 0  # messages left frozen (a cursor, a placeholder) after the fault
    leaked: int = 0  # local paths that reached a chat
    passed: bool = False

    @property
    def green(self) -> bool:
        return self.passed and not (self.lost or self.stale or self.leaked)


@dataclass
class FaultReport:
    rows: dict[str, FaultRow] = field(default_factory=dict)  # by test id

    def table(self) -> list[str]:
        header = ("", "case", "what happened", "kept/lost", "stale", "leaked")
        body = [("✓" if row.green else "✗", row.case, row.happened,
                 "—" if row.kept is None else f"{row.kept}/{row.lost}", str(row.stale),
                 str(row.leaked)) for row in sorted(self.rows.values(), key=_order)]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        return [" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
                .rstrip() for line in [header, *body]]


def _order(row: FaultRow) -> tuple[int, str]:
    number = re.match(r"\d+", row.case)
    return (int(number.group()) if number else 99, row.case)


REPORT = FaultReport()
