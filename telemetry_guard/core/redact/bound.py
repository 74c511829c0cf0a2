"""Shrinking a JSON record to a byte bound: cut long strings, omit structures, drop fields."""

from __future__ import annotations

import json
from typing import Any, TypeAlias

from .markers import OMITTED_MARKER, TRUNCATED_MARKER
from .safe_text import truncate

#: The smallest ``max_record_bytes`` accepted: room for ``{"_truncated": true}`` and a field.
MIN_RECORD_BYTES = 64

_Record: TypeAlias = "dict[str, Any]"
_Strings: TypeAlias = "list[tuple[Any, Any, str]]"  # (parent, key, text) of string leaves
_Containers: TypeAlias = "list[tuple[int, Any, Any, tuple[int, ...]]]"  # size, parent, key, above


def encode(value: object) -> str:
    """Strict JSON (no NaN), as the bound counts it."""
    return json.dumps(value, allow_nan=False)


def shrink(encoded: str, max_bytes: int) -> _Record:
    """A copy of the record ``encoded`` that fits ``max_bytes``, ``"_truncated": true`` added.

    The longest strings are cut first (to one common length), then the smallest sub-structure
    whose removal suffices (else the largest, repeatedly) becomes ``"<N bytes omitted>"``, then
    top-level fields are dropped; ``{"_truncated": true}`` when even that does not fit.
    """
    out: _Record = json.loads(encoded)
    out["_truncated"] = True
    for step in (_cut_strings, _drop_containers, _drop_fields):
        excess = len(encode(out)) - max_bytes
        if excess <= 0:
            break
        strings: _Strings = []
        boxes: _Containers = []
        _inventory(out, (), strings, boxes)
        step(out, strings, boxes, excess)
    return out if len(encode(out)) <= max_bytes else {"_truncated": True}


def _marker_cost(n: int) -> int:
    return len(encode(TRUNCATED_MARKER.format(n=n))) - 2


def _saving(size: int) -> int:
    """Bytes saved by replacing a ``size``-byte structure with the (ASCII) omitted marker."""
    return size - len(OMITTED_MARKER.format(n=size)) - 2


def _inventory(node: Any, above: tuple[int, ...], strings: _Strings, boxes: _Containers) -> None:
    """Collect node's string leaves and (with their encoded size) its sub-containers."""
    inner = (*above, id(node))
    for key, value in node.items() if isinstance(node, dict) else enumerate(node):
        if isinstance(value, str):
            strings.append((node, key, value))
        elif isinstance(value, (dict, list)):
            boxes.append((len(encode(value)), node, key, inner))
            _inventory(value, inner, strings, boxes)


def _cut_strings(out: _Record, strings: _Strings, boxes: _Containers, excess: int) -> None:
    """Cut every string longer than the highest common length that removes ``excess`` bytes."""

    def gain(cap: int) -> int:
        return sum(max(0, len(s) - cap - _marker_cost(len(s) - cap)) for _, _, s in strings)

    low, high = 0, max((len(s) for _, _, s in strings), default=0)
    while low < high:  # the highest cap whose gain covers the excess (0 if none does)
        mid = (low + high + 1) // 2
        low, high = (mid, high) if gain(mid) >= excess else (low, mid - 1)
    for parent, key, s in strings:
        if len(s) - low > _marker_cost(len(s) - low):
            parent[key] = truncate(s, low)


def _drop_containers(out: _Record, strings: _Strings, boxes: _Containers, excess: int) -> None:
    """Replace the smallest sub-structure whose removal suffices, else the largest; repeat."""
    dropped: set[int] = set()
    boxes.sort(key=lambda box: box[0])
    while excess > 0:
        live = [box for box in boxes if _saving(box[0]) > 0 and dropped.isdisjoint(box[3])]
        live = [box for box in live if isinstance(box[1][box[2]], (dict, list))]
        if not live:
            return
        size, parent, key, _ = next((b for b in live if _saving(b[0]) >= excess), live[-1])
        dropped.add(id(parent[key]))
        parent[key] = OMITTED_MARKER.format(n=size)
        excess -= _saving(size)


def _drop_fields(out: _Record, strings: _Strings, boxes: _Containers, excess: int) -> None:
    """Remove the largest top-level fields (never ``_truncated``) until the record fits."""
    fields = sorted((k for k in out if k != "_truncated"), key=lambda k: -len(encode(out[k])))
    for key in fields:
        if excess <= 0:
            return
        excess -= len(encode(key)) + len(encode(out.pop(key))) + 4
