"""The CLI's one printing helper: control characters are shown, never written raw."""

from __future__ import annotations

import json

import pytest

from telemetry_guard.cli.output import printable, to_json


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b[2J", "\\x1b[2J"),
    ("\x1b]52;c;ZXZpbA==\x07", "\\x1b]52;c;ZXZpbA==\\x07"),
    ("a\rb\tc\nd", "a\\rb\\tc\\nd"),
    ("\x7f\x9b31m", "\\x7f\\x9b31m"),
    ("abc\u202edef\u2066", "abc\\u202edef\\u2066"),
    ("line\u2028sep", "line\\u2028sep"),
    ("café 日本 ✓", "café 日本 ✓"),
])
def test_printable_escapes_controls_and_bidi_overrides_and_keeps_text(raw: str,
                                                                        shown: str) -> None:
    """C0, C1, DEL, bidi and separators become visible escapes; printable text is kept."""
    assert printable(raw) == shown


def test_json_output_is_ascii_with_every_control_escaped() -> None:
    """to_json writes no control character and no non-ASCII byte; it reads back the same."""
    value = {"message": "\x1b[2J\r\x07\u202e\x9b", "id": "1-0"}
    line = to_json(value)
    assert line.isascii() and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in line)
    assert json.loads(line) == value
