"""Keys that live beside a stream: each task's index, and in the stream's Redis Cluster slot.

A key beside a stream starts with the stream's hash tag (its own ``{...}``, or the whole
key as one), so every script that touches a stream and its side keys touches one slot.
"""

from __future__ import annotations


def slot_base(stream_key: str) -> str:
    """A prefix that hashes to the stream's cluster slot: its own tag, or the key as a tag."""
    start = stream_key.find("{")
    if start >= 0 and stream_key.find("}", start + 2) > start:
        return stream_key
    return "{" + stream_key + "}"


def index_key(stream_key: str, task: str) -> str:
    """The index of ``task``'s entry ids in ``stream_key``."""
    return f"{slot_base(stream_key)}:index:{task}"


def indexed_since_key(stream_key: str) -> str:
    """The id from which every entry of ``stream_key`` is in its task's index."""
    return f"{slot_base(stream_key)}:indexed_since"


def writer_key(stream_key: str, writer: str) -> str:
    """The last sequence number ``writer`` (one process) wrote to ``stream_key``: a batch sent
    again after a lost reply skips the records already written."""
    return f"{slot_base(stream_key)}:writer:{writer}"


def glob_escape(text: str) -> str:
    """``text`` as a literal in a ``SCAN MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
