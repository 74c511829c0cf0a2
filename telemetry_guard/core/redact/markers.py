"""What redacted output is made of: the JSON value type and the markers put in place of data."""

from __future__ import annotations

from typing import TypeAlias

JSONValue: TypeAlias = "None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]"

REDACTED = "[REDACTED]"
#: Appended to a cut string; ``n`` counts the characters dropped.
TRUNCATED_MARKER = "…[truncated {n} chars]"
CYCLE_MARKER = "<cycle>"
DEPTH_MARKER = "<max depth>"
MORE_ITEMS_MARKER = "<{n} more items>"
MORE_KEYS_KEY = "<more keys>"
OMITTED_MARKER = "<{n} bytes omitted>"
