"""Number formatting shared by the benches' side-by-side tables."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in percent (no interpolation: with one value every
    percentile is that one); nan if there are none."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def fmt(value: float | None) -> str:
    """Three significant-ish digits; whole numbers without decimals; "-" when unknown and
    "none" for infinity (e.g. no callback before the stop)."""
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "none"
    size = abs(value)
    if size >= 100 or (value == int(value) and size >= 1):
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size >= 0.01:
        return f"{value:.3f}"
    return "0" if value == 0 else f"{value:.4f}"


def ratio(theirs: float, ours: float) -> str:
    """``theirs / ours`` as "2.50x"; "-" when either is unknown or both are zero."""
    if any(math.isnan(v) or math.isinf(v) for v in (theirs, ours)):
        return "-"
    if ours == 0:
        return "-" if theirs == 0 else "inf"
    return f"{theirs / ours:.2f}x"


def print_table(rows: list[tuple[str, ...]]) -> None:
    """The first row is the header; the first column left-aligned, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                          strict=True)]
        print(" | ".join(cells).rstrip())
        if n == 0:
            print("-+-".join("-" * w for w in widths))
