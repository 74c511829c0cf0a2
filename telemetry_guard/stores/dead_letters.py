"""The dead-letter stream's keys and scripts: per-task retention, replay claims, removal.

``<prefix>dead`` holds one entry per given-up task. Beside it, each task has an index
(a sorted set of its entry ids, oldest first) and the stream has one claims hash:

- adding a dead letter (``stores/lua/dead_letter_add.lua``) trims only that task's oldest entries
  to its retention, so one task's give-ups never evict another task's dead letters;
- a replay claims an entry (``stores/lua/dead_letter_claim.lua``) before sending it and, once
  sent, removes it (``stores/lua/dead_letter_finish.lua``); a failed send releases the claim.

Every key shares the stream's Redis Cluster slot (hash tag), so each script's keys do.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .keys import index_key, slot_base
from .scripts import bind

#: The stream's name after the key prefix.
DEAD_STREAM = "dead"
#: Entry field naming the task whose retention the entry counts against.
TASK_FIELD = "task"


def claims_key(stream_key: str) -> str:
    """The hash of replay claims (entry id → claim) of ``stream_key``."""
    return f"{slot_base(stream_key)}:claims"


def dead_fields(task: str, fields: dict[str, str]) -> list[str]:
    """ARGV of ``dead_letter_add.lua`` after the retention and the sequence number: field,
    value pairs plus the task."""
    flat: list[str] = []
    for name, value in fields.items():
        flat += [name, value]
    return [*flat, TASK_FIELD, task]


@dataclass(frozen=True)
class Added:
    """The reply of ``dead_letter_add.lua``."""

    entry_id: str
    evicted: int

    @classmethod
    def of(cls, reply: Any) -> Added:
        entry_id, evicted = reply
        return cls(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id),
                   int(evicted))


def add_dead_letter(client: Any, stream_key: str, task: str, fields: dict[str, str],
                    maxlen: int) -> Added:
    """Add one dead letter now (one round trip), trimming only ``task``'s oldest entries."""
    add = bind(client, "dead_letter_add")
    reply = add(keys=[stream_key, index_key(stream_key, task)],
                args=[maxlen, 0, *dead_fields(task, fields)])
    return Added.of(reply)


@dataclass(frozen=True)
class Claim:
    """The reply of ``dead_letter_claim.lua``: ``ok``, ``gone``, or ``claimed`` by ``other``."""

    outcome: str
    other: dict[str, Any] | None = None

    @classmethod
    def of(cls, reply: Any) -> Claim:
        outcome = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        other = None
        if len(reply) > 1 and reply[1] is not None:
            try:
                value = json.loads(reply[1])
                other = value if isinstance(value, dict) else None
            except ValueError:
                other = None
        return cls(outcome, other)


class DeadLetterClaims:
    """Claims dead letters for one replay run; every claim is unique to this run."""

    def __init__(self, client: Any, stream_key: str) -> None:
        self.client = client
        self.stream_key = stream_key
        self.claims_key = claims_key(stream_key)
        self.token = json.dumps({"by": f"{socket.gethostname()}:{os.getpid()}",
                                 "run": uuid.uuid4().hex, "at": round(time.time(), 3)},
                                sort_keys=True)
        self._claim = bind(client, "dead_letter_claim")
        self._finish = bind(client, "dead_letter_finish")

    def claim(self, entry_id: str) -> Claim:
        """Take ``entry_id`` for this run, atomically; only one run ever gets ``ok``."""
        return Claim.of(self._claim(keys=[self.stream_key, self.claims_key],
                                    args=[entry_id, self.token]))

    def sent(self, entry_id: str, task: str) -> bool:
        """The claimed entry's message was sent: remove the entry (False: purged meanwhile)."""
        return bool(self._finish(keys=[self.stream_key, self.claims_key,
                                       index_key(self.stream_key, task)],
                                 args=[entry_id, self.token, "sent"]))

    def release(self, entry_id: str) -> bool:
        """The send failed: give the entry back for a later replay."""
        return bool(self._finish(keys=[self.stream_key, self.claims_key,
                                       index_key(self.stream_key, "")],
                                 args=[entry_id, self.token, "release"]))


def remove_dead_letters(client: Any, stream_key: str,
                        entries: list[tuple[str, tuple[str, ...]]]) -> int:
    """XDEL ``(entry id, tasks)`` pairs, their ids in those tasks' indexes and any claim.

    Returns how many entries were removed.
    """
    if not entries:
        return 0
    pipe = client.pipeline(transaction=False)
    for entry_id, tasks in entries:
        pipe.xdel(stream_key, entry_id)
        for task in tasks:
            pipe.zrem(index_key(stream_key, task), entry_id)
        pipe.hdel(claims_key(stream_key), entry_id)
    replies = pipe.execute()
    removed, at = 0, 0
    for _, tasks in entries:
        removed += int(replies[at])
        at += 2 + len(tasks)
    return removed
