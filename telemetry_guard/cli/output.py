"""Output for sub-commands: a readable table on a terminal, JSON lines with ``--json``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click

#: Widest a table cell gets before it is cut with an ellipsis.
MAX_CELL = 60


def emit(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, as_json: bool) -> int:
    """Print ``rows`` as JSON lines or as a table of ``columns``; returns how many rows."""
    rows = list(rows)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str, sort_keys=True))
        return len(rows)
    if not rows:
        click.echo("(none)")
        return 0
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    header = (c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    click.echo("  ".join(header).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return len(rows)


def emit_one(record: Mapping[str, Any], *, as_json: bool) -> None:
    """Print one record whole: JSON, or ``key: value`` lines."""
    if as_json:
        click.echo(json.dumps(record, default=str, sort_keys=True))
        return
    width = max((len(k) for k in record), default=0)
    for key, value in record.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if "\n" in text:
            click.echo(f"{key}:")
            for line in text.rstrip("\n").splitlines():
                click.echo(f"    {line}")
        else:
            click.echo(f"{key.ljust(width)}  {text}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
