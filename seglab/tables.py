"""Tables for people: GitHub Markdown and aligned plain text, from a header and rows of cell strings.

`left` is the number of leading text columns (left-aligned); the other columns hold numbers and are
right-aligned. Every table seglab prints or writes (runs, models, bench, study, reports, compare) goes
through these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Return a GitHub Markdown table; the first `left` columns are left-aligned, the rest right-aligned."""
    align = ["---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Return an aligned plain-text table with a rule under the header, for the terminal."""
    table = [list(header), *map(list, rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(table[0]), "  ".join("-" * w for w in widths), *map(line, table[1:])])


def percent(value: float | None, digits: int = 1, missing: str = "–") -> str:
    """Return a share (0..1) as a percentage with `digits` decimals, `missing` for None or NaN."""
    return missing if value is None or value != value else f"{100 * value:.{digits}f}"
