"""The start-up table of models, versions and states, in the style of Triton's."""

from __future__ import annotations

from ..protocol.types import ModelIndexEntry

HEADER = ("Model", "Version", "Status")


def status_text(entry: ModelIndexEntry) -> str:
    reason = " ".join(entry.reason.split())  # one line, whatever the reason holds
    return f"{entry.state}: {reason}" if reason else entry.state


def startup_table(entries: list[ModelIndexEntry]) -> str:
    """Every model the server tried to load (listed-only names are left out), one row per version:

    +---------+---------+--------+
    | Model   | Version | Status |
    +---------+---------+--------+
    | add_sub | 1       | READY  |
    +---------+---------+--------+
    """
    rows = [(e.name, e.version or "-", status_text(e)) for e in entries if e.state]
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: tuple[str, str, str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([rule, line(HEADER), rule, *map(line, rows), rule])
