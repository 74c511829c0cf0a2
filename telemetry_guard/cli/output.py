"""Output for sub-commands: a readable table on a terminal, JSON lines with ``--json``.

Record text comes from exceptions and arguments anyone could shape, so nothing is written
to the operator's terminal as it is: :func:`printable` shows control characters (escape
sequences, ``\r``, C1 controls, bidi overrides) as visible escapes such as ``\x1b``, and
JSON output is ASCII with every control character escaped. A record that cannot be
printed at all (nested too deep) becomes one ``unreadable`` row; the output goes on.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click

#: Widest a table cell gets before it is cut with an ellipsis.
MAX_CELL = 60
#: ASCII that is not printable: C0 controls and DEL.
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Unicode categories written as escapes: controls, format characters (bidi overrides,
#: zero-width), line and paragraph separators, lone surrogates.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every control or invisible formatting character shown as an escape."""
    if text.isascii():
        return _ASCII_CONTROL.sub(lambda m: _escape(m.group()), text)
    return "".join(_escape(c) if unicodedata.category(c) in _HIDDEN else c for c in text)


def to_json(value: Any) -> str:
    """``value`` as one line of ASCII JSON (control characters escaped, never raw)."""
    return json.dumps(value, default=str, sort_keys=True, ensure_ascii=True)


def unreadable(row: Mapping[str, Any], exc: BaseException) -> dict[str, Any]:
    """What is shown instead of a row that cannot be printed: its id and why."""
    return {"id": row.get("id"), "unreadable": f"record cannot be shown ({type(exc).__name__})"}


def _json_line(row: Mapping[str, Any]) -> str:
    """``row`` as one JSON line, or its ``unreadable`` stand-in when it cannot be encoded."""
    try:
        return to_json(row)
    except (RecursionError, ValueError, TypeError) as exc:
        return to_json(unreadable(row, exc))


def emit(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, as_json: bool) -> int:
    """Print ``rows`` as JSON lines or as a table of ``columns``; returns how many rows."""
    rows = list(rows)
    if as_json:
        for row in rows:
            click.echo(_json_line(row))
        return len(rows)
    if not rows:
        click.echo("(none)")
        return 0
    cells = [_cells(row, columns) for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    header = (printable(c.upper()).ljust(w) for c, w in zip(columns, widths, strict=True))
    click.echo("  ".join(header).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return len(rows)


def emit_one(record: Mapping[str, Any], *, as_json: bool) -> None:
    """Print one record whole: JSON, or ``key: value`` lines."""
    if as_json:
        click.echo(_json_line(record))
        return
    keys = {key: printable(str(key)) for key in record}
    width = max((len(k) for k in keys.values()), default=0)
    for key, value in record.items():
        try:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
        except (RecursionError, ValueError, TypeError) as exc:
            text = f"<unreadable: {type(exc).__name__}>"
        if "\n" in text:
            click.echo(f"{keys[key]}:")
            for line in text.rstrip("\n").split("\n"):
                click.echo(f"    {printable(line)}")
        else:
            click.echo(f"{keys[key].ljust(width)}  {printable(text)}")


def _cells(row: Mapping[str, Any], columns: Sequence[str]) -> list[str]:
    try:
        return [_cell(row.get(c)) for c in columns]
    except (RecursionError, ValueError, TypeError) as exc:
        shown = unreadable(row, exc)
        return [_cell(shown["id"]) if c == "id" else "-" for c in columns[:-1]] + [
            _cell(shown["unreadable"])]


def cell_text(value: Any) -> str:
    """A value on one printable line: strings as they are, anything else as JSON."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return printable(text.replace("\n", " "))


def _cell(value: Any) -> str:
    text = cell_text(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
