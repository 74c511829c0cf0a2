"""The error log: a capped Redis Stream of redacted failure records, written off the task's thread.

Records are queued in a bounded in-process buffer and written by a background
thread in batches (one pipelined ``XADD ... MAXLEN ~`` round trip for many
records), so a failing task never waits on Redis. Given-up tasks also go to
the dead-letter stream with the original arguments, for replay, in the same
pipeline: each through a script that keeps its task within its own retention
(``dead_letter_maxlen``), so one task's give-ups never evict another's.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from kombu.utils.json import dumps as kombu_dumps

from ..dead_letters import DEAD_STREAM, TASK_FIELD, Added, dead_fields, index_key
from ..events import FailureEvent
from ..redact import Redactor, safe_repr
from ..stores.scripts import bind
from .base import Sink

ErrorReporter = Callable[[str, "BaseException | None"], None]
#: Told how many of a task's dead letters its retention removed: ``(task, count)``.
EvictionReporter = Callable[[str, int], None]
#: A buffered record: stream key, fields, and the task of a dead letter (None: error log).
Pending = tuple[str, dict[str, str], "str | None"]

ERRORS_STREAM = "errors"
BATCH_SIZE = 500
MAX_BACKOFF = 5.0
#: Buffered records that wake the writer at once; fewer wait at most ``batch_interval``.
WAKE_AT = 200
#: Seconds an exiting process waits for buffered records to reach Redis.
EXIT_FLUSH_TIMEOUT = 2.0


class ErrorLogSink(Sink):
    """One JSON record per failure in ``<prefix>errors``; give-ups also in ``<prefix>dead``.

    ``maxlen`` caps the error log (approximately); ``dead_letter_maxlen`` is how many dead
    letters each task keeps (its oldest go first, reported to ``on_evicted``).
    """

    name = "errorlog"

    _atexit_registered = False

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
        self._start_process()

    def _start_process(self) -> None:
        """(Re)create the per-process state: buffer, lock, thread; called after fork too."""
        self._pid = os.getpid()
        self._buffer: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._flushing = False
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._add_dead: Any = None

    # -- producer side (the task's thread) ---------------------------------------------
    def on_failure(self, event: FailureEvent) -> None:
        if self._pid != os.getpid():
            self._start_process()
        # The event's fields are already redacted: only bound the record's size here.
        record = json.dumps(self.redactor.bound_record(event.as_record()))
        entries: list[Pending] = [(self.errors_key, {"record": record}, None)]
        if not event.retried and event.replay is not None:
            entries.append((self.dead_key, {"record": record,
                                            "replay": _dumps_replay(event.replay)},
                            event.task_name))
        with self._cond:
            before = len(self._buffer)
            for entry in entries:
                if len(self._buffer) >= self.buffer_size:
                    self._report_error("errorlog_overflow", None)
                    continue
                self._buffer.append(entry)
            after = len(self._buffer)
            if (before == 0 < after) or before < WAKE_AT <= after:  # a batch starts or fills
                self._cond.notify()
        if self._thread is None:
            self._start_thread()

    def _start_thread(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="telemetry_guard-errorlog", daemon=True)
            self._thread.start()
        if not self._atexit_registered:
            self._atexit_registered = True
            atexit.register(self.flush, EXIT_FLUSH_TIMEOUT)

    # -- consumer side (the background thread) -----------------------------------------
    def _run(self) -> None:
        backoff = self.flush_interval
        while True:
            with self._cond:
                # Wake on a timer rather than per record: fewer thread switches on the
                # task's core, and larger batches per round trip.
                while not self._buffer and not self._closed:
                    self._cond.wait()
                if not self._closed and not self._flushing and len(self._buffer) < WAKE_AT:
                    self._cond.wait(self.batch_interval)
                if not self._buffer and self._closed:
                    return
                batch = [self._buffer.popleft() for _ in range(min(BATCH_SIZE, len(self._buffer)))]
                self._in_flight = len(batch)
            try:
                self._write(batch)
                backoff = self.flush_interval
            except Exception as exc:  # Redis down: keep what fits, retry later
                self._client = None
                self._report_error(self.name, exc)
                with self._cond:
                    room = self.buffer_size - len(self._buffer)
                    self._buffer.extendleft(reversed(batch[:max(room, 0)]))
                    self._in_flight = 0
                    self._cond.notify_all()
                    if self._closed:
                        return
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            with self._cond:
                self._in_flight = 0
                self._cond.notify_all()

    def _write(self, batch: list[Pending]) -> None:
        """One pipelined round trip for the batch (a lost connection raises: kept, retried).

        A command Redis refuses (a wrong key type, scripting disabled) is counted and the
        rest of the batch stands; a dead letter whose retention script was refused is
        still added, untrimmed, so it is never lost.
        """
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
            self._add_dead = bind(self._client, "dead_letter_add")
        pipe = self._client.pipeline(transaction=False)
        for key, fields, task in batch:
            if task is None:
                pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            else:
                self._add_dead(keys=[key, index_key(key, task)],
                               args=[self.dead_letter_maxlen, *dead_fields(task, fields)],
                               client=pipe)
        replies = pipe.execute(raise_on_error=False)
        evicted: dict[str, int] = {}
        refused: list[Pending] = []
        for (key, fields, task), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                self._report_error(self.name, reply)
                if task is not None:
                    refused.append((key, fields, task))
            elif task is not None:
                count = Added.of(reply).evicted
                if count:
                    evicted[task] = evicted.get(task, 0) + count
        if refused:
            pipe = self._client.pipeline(transaction=False)
            for key, fields, task in refused:
                pipe.xadd(key, {**fields, TASK_FIELD: task or ""})  # type: ignore[arg-type]
            pipe.execute(raise_on_error=False)
        for task, count in evicted.items():
            try:
                self._on_evicted(task, count)
            except Exception as exc:
                self._report_error(self.name, exc)

    # -- lifecycle ---------------------------------------------------------------------
    def after_fork(self) -> None:
        self._start_process()

    def flush(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            try:
                while (self._buffer or self._in_flight) and self._thread is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._cond.wait(remaining)
            finally:
                self._flushing = False

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _dumps_replay(replay: dict[str, Any]) -> str:
    """The original message as the broker held it; falls back to a marked repr."""
    try:
        return str(kombu_dumps(replay))
    except Exception:
        return json.dumps({"task": replay.get("task"), "id": replay.get("id"),
                           "replayable": False, "repr": safe_repr(replay, 4096)})
