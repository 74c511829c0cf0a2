"""The error log: a capped Redis Stream of redacted failure records, written off the task's thread.

Records are queued in a bounded in-process buffer and written by a background writer
(``stores.background``) in batches (one pipelined round trip for many records), so a failing
task never waits on Redis. A batch whose reply was lost (a connection dropped, a Sentinel
failover) stays buffered and is sent again; each record carries its sequence number in this
process, and the scripts skip those already written, so none is written twice. Behind
Sentinel, a batch counts as written once a replica has it too (``WAIT``), so a master that
dies right after a write does not take the records with it.

Each record's id also goes to its task's index (``stores/lua/error_log_add.lua``), so
``errors list --task`` reads only that task's records.
Given-up tasks also go to the dead-letter stream with the original arguments, for replay, in
the same pipeline: each through a script that keeps its task within its own retention
(``dead_letter_maxlen``), so one task's give-ups never evict another's.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import uuid
from collections.abc import Callable
from itertools import chain
from time import monotonic
from typing import TYPE_CHECKING, Any

from kombu.utils.json import dumps as kombu_dumps

from ..core.events import FailureEvent
from ..core.redact import Redactor, safe_repr
from ..core.sink import Sink
from ..stores.background import BackgroundWriter, ItemQueue
from ..stores.dead_letters import DEAD_STREAM, TASK_FIELD, Added, dead_fields
from ..stores.keys import index_key, indexed_since_key, writer_key
from ..stores.redis_client import follows_failover, redis_client
from ..stores.scripts import bind, run_batch

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

ErrorReporter = Callable[[str, "BaseException | None"], None]
#: Told how many of a task's dead letters its retention removed: ``(task, count)``.
EvictionReporter = Callable[[str, int], None]
#: A buffered record: stream key, fields, its task, whether it is a dead letter, and its
#: sequence number in this process.
Pending = tuple[str, dict[str, str], str, bool, int]

ERRORS_STREAM = "errors"
BATCH_SIZE = 500
MAX_BACKOFF = 5.0
#: Buffered records that wake the writer at once; fewer wait at most ``batch_interval``.
WAKE_AT = 200
#: Seconds an exiting process waits for buffered records to reach Redis.
EXIT_FLUSH_TIMEOUT = 2.0
#: Connect and read timeout of the error log's Redis client, in seconds (no retry: the
#: writer keeps the batch and tries again after its backoff).
SOCKET_TIMEOUT = 2.0
#: Behind Sentinel: milliseconds a batch waits for a replica to acknowledge it (``WAIT``);
#: a replica slower than that does not hold the writer up any longer.
REPLICA_WAIT_MS = 1000
#: Seconds batches are not waited on after no replica acknowledged one (none is connected).
NO_REPLICA_PAUSE = 30.0


class ErrorLogSink(Sink):
    """One JSON record per failure in ``<prefix>errors``; give-ups also in ``<prefix>dead``.

    ``maxlen`` caps the error log (approximately); ``dead_letter_maxlen`` is how many dead
    letters each task keeps (its oldest go first, reported to ``on_evicted``).
    """

    name = "errorlog"

    def __init__(
        self, redis_url: str, *, key_prefix: str = "telemetry_guard:", maxlen: int = 10_000,
        dead_letter_maxlen: int = 100_000, buffer_size: int = 10_000,
        flush_interval: float = 0.2, redactor: Redactor | None = None,
        report_error: ErrorReporter | None = None, on_evicted: EvictionReporter | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.errors_key = key_prefix + ERRORS_STREAM
        self.dead_key = key_prefix + DEAD_STREAM
        self.maxlen = maxlen
        self.dead_letter_maxlen = dead_letter_maxlen
        self.buffer_size = buffer_size
        self.flush_interval = flush_interval
        self.batch_interval = min(flush_interval, 0.1)
        self.redactor = redactor or Redactor()
        self._report_error = report_error or (lambda sink, exc: None)
        self._on_evicted = on_evicted or (lambda task, count: None)
        self._sequence = itertools.count(1)
        self._no_replica_until = 0.0
        self._writer_pid, self._writer_id = os.getpid(), _writer_id()
        # Wake on a timer rather than per record (fewer thread switches on the task's core,
        # larger batches per round trip), at once when a batch fills.
        self._writer = BackgroundWriter(
            "telemetry_guard-errorlog", self._write,
            lambda: ItemQueue(buffer_size, BATCH_SIZE), linger=self.batch_interval,
            backoff=flush_interval, max_backoff=MAX_BACKOFF, wake_at=WAKE_AT,
            on_error=lambda exc: self._report_error(self.name, exc),
            on_dropped=lambda: self._report_error("errorlog_overflow", None),
            exit_flush=EXIT_FLUSH_TIMEOUT)

    # -- producer side (the task's thread) ---------------------------------------------
    def on_failure(self, event: FailureEvent) -> None:
        # The event's fields are already redacted: only bound the record's size here.
        record = self.redactor.bound_json(event.as_record())
        task = event.task_name
        sequence = self._sequence
        if event.retried or event.replay is None:
            self._writer.add((self.errors_key, {"record": record}, task, False, next(sequence)))
            return
        dead = {"record": record, "replay": _dumps_replay(event.replay)}
        self._writer.add_all(((self.errors_key, {"record": record}, task, False, next(sequence)),
                              (self.dead_key, dead, task, True, next(sequence))))

    # -- the writer's side ---------------------------------------------------------------
    def _write(self, batch: list[Pending]) -> None:
        """One pipelined round trip for the batch (a lost connection raises: kept, retried).

        A command Redis refuses (a wrong key type, scripting disabled) is counted and the
        rest of the batch stands; a record whose script was refused is still added, without
        its index or retention, so it is never lost.
        """
        client, add_error, add_dead = self._connection()
        writer = self._writer_name()
        calls = []
        for key, fields, task, dead, sequence in batch:
            if dead:
                calls.append((add_dead, (key, index_key(key, task), writer_key(key, writer)),
                              (self.dead_letter_maxlen, sequence, *dead_fields(task, fields))))
            else:
                calls.append((add_error, (key, index_key(key, task), indexed_since_key(key),
                                          writer_key(key, writer)),
                              (self.maxlen, sequence, *chain.from_iterable(fields.items()))))
        replies = run_batch(client, calls)
        if follows_failover(client) and monotonic() >= self._no_replica_until:
            self._wait_for_replica(client)
        evicted: dict[str, int] = {}
        refused: list[Pending] = []
        for pending, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                self._report_error(self.name, reply)
                refused.append(pending)
            elif pending[3]:
                count = Added.of(reply).evicted
                if count:
                    evicted[pending[2]] = evicted.get(pending[2], 0) + count
        if refused:
            self._add_plainly(client, refused)
        for task, count in evicted.items():
            try:
                self._on_evicted(task, count)
            except Exception as exc:
                self._report_error(self.name, exc)

    def _writer_name(self) -> str:
        """This sink's name as a writer, new in every process (a forked child must not take
        up its parent's sequence, or the scripts would skip its records as written)."""
        if self._writer_pid != os.getpid():
            self._writer_pid, self._writer_id = os.getpid(), _writer_id()
        return self._writer_id

    def _wait_for_replica(self, client: redis.Redis) -> None:
        """Behind Sentinel: wait until a replica has the batch, so a master that dies now
        does not take it along (a lost connection raises: the batch is sent again, and the
        records already written are skipped)."""
        import redis

        try:
            acknowledged = client.execute_command("WAIT", 1, REPLICA_WAIT_MS)
        except redis.ResponseError as exc:  # refused (an ACL without WAIT): written, not waited
            self._report_error(self.name, exc)
            acknowledged = 0
        if not acknowledged:
            self._no_replica_until = monotonic() + NO_REPLICA_PAUSE

    def _add_plainly(self, client: redis.Redis, refused: list[Pending]) -> None:
        """Records whose script was refused, added without it: indexing stops being
        promised (``errors list --task`` scans) until a script writes again."""
        pipe = client.pipeline(transaction=False)
        for key, fields, task, dead, _ in refused:
            if dead:
                pipe.xadd(key, {**fields, TASK_FIELD: task})  # type: ignore[arg-type]
            else:
                pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.delete(indexed_since_key(key))
        pipe.execute(raise_on_error=False)

    def _connection(self) -> tuple[redis.Redis, Script, Script]:
        """This process's shared client and the scripts bound to it."""
        client = redis_client(self.redis_url, timeout=SOCKET_TIMEOUT, retries=0)
        return client, bind(client, "error_log_add"), bind(client, "dead_letter_add")

    # -- lifecycle ---------------------------------------------------------------------
    def after_fork(self) -> None:
        self._writer.reset()

    def flush(self, timeout: float = 5.0) -> None:
        self._writer.flush(timeout)

    def close(self) -> None:
        self._writer.close()


def _writer_id() -> str:
    """This process's name as a writer of the streams: unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dumps_replay(replay: dict[str, Any]) -> str:
    """The original message as the broker held it; falls back to a marked repr."""
    try:
        return str(kombu_dumps(replay))
    except Exception:
        return json.dumps({"task": replay.get("task"), "id": replay.get("id"),
                           "replayable": False, "repr": safe_repr(replay, 4096)})
