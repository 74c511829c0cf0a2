"""The fault matrix: one row per fault, collected while the suite runs, printed at the end."""

from __future__ import annotations

from dataclasses import dataclass

HEADERS = ("fault", "outcomes identical", "notifications delivered", "errors counted",
           "worker alive")


@dataclass(frozen=True)
class MatrixRow:
    """What one fault did to the mixed workload, against the same workload without it."""

    fault: str
    outcomes_identical: bool
    notifications: str
    errors: str
    worker_alive: bool

    def cells(self) -> tuple[str, ...]:
        return (self.fault, _mark(self.outcomes_identical), self.notifications, self.errors,
                _mark(self.worker_alive))


#: Rows recorded by the tests of this session, in the order they ran.
ROWS: list[MatrixRow] = []


def record(row: MatrixRow) -> MatrixRow:
    """Add a row (before the test asserts on it, so a failing fault is shown too)."""
    ROWS.append(row)
    return row


def render(rows: list[MatrixRow]) -> list[str]:
    """The rows as a plain-text table (one string per line)."""
    table = [HEADERS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|-" + "-|-".join("-" * w for w in widths) + "-|"
    return [line(HEADERS), rule, *(line(row.cells()) for row in rows)]


def _mark(ok: bool) -> str:
    return "yes" if ok else "NO"
