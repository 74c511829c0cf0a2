"""A batching background writer: producers add items, one daemon thread writes them in batches.

A producer (the task's thread) only appends to an in-process buffer under a lock: no I/O.
A daemon thread, started on first use, lingers a moment so that items gather, takes a
batch and hands it to ``write``. A failed write is reported and the thread backs off
exponentially before the next one; what the buffer keeps of a failed batch is the buffer's
policy (:class:`ItemQueue` puts it back in front, :class:`Tally` drops it). ``flush`` waits
until the buffer is written, ``close`` flushes and stops the thread. A forked child starts
with an empty buffer, a new lock and no thread: the parent's items are the parent's to write.
"""

from __future__ import annotations

import atexit
import collections
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from time import monotonic
from typing import Any, Generic, Protocol, TypeVar

#: Told of a failed write (or of a thread that could not start).
ErrorCallback = Callable[[BaseException], None]
#: Told once for every item the buffer had no room for.
DropCallback = Callable[[], None]


class Pending(Protocol):
    """What the writer buffers: how items are held, taken as a batch, and put back."""

    def __len__(self) -> int: ...

    def add(self, item: Any) -> bool:
        """Hold ``item``; False when it is refused (no room)."""
        ...

    def take(self) -> Any:
        """Remove and return the next batch (only called when not empty)."""
        ...

    def restore(self, batch: Any) -> int:
        """Take back what is left of a failed batch; return how many items found no room."""
        ...


P = TypeVar("P", bound=Pending)


class ItemQueue:
    """Items in arrival order, at most ``capacity``; batches of at most ``batch_size``.

    A failed batch goes back in front, oldest first, as much of it as there is room for.
    ``write`` may delete from the batch what it did write: only the rest comes back.
    """

    def __init__(self, capacity: int, batch_size: int | None = None) -> None:
        self.capacity = capacity
        self.batch_size = batch_size
        self._items: collections.deque[Any] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Any) -> bool:
        if len(self._items) >= self.capacity:
            return False
        self._items.append(item)
        return True

    def take(self) -> list[Any]:
        items = self._items
        count = len(items) if self.batch_size is None else min(self.batch_size, len(items))
        return [items.popleft() for _ in range(count)]

    def restore(self, batch: list[Any]) -> int:
        room = max(self.capacity - len(self._items), 0)
        self._items.extendleft(reversed(batch[:room]))
        return max(len(batch) - room, 0)


class Tally:
    """Counts per key: ``add(key)`` counts one more; a batch is every key's count so far.

    A failed batch is dropped, not put back: counts of a past moment must not be banked
    through an outage (a retry budget would grant retries for first attempts long gone).
    """

    def __init__(self) -> None:
        self.counts: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, item: Any) -> bool:
        counts = self.counts
        counts[item] = counts.get(item, 0) + 1
        return True

    def take(self) -> dict[Any, int]:
        batch, self.counts = self.counts, {}
        return batch

    def restore(self, batch: dict[Any, int]) -> int:
        return 0

    def pop(self, key: Any) -> int:
        """Remove ``key`` and return its count (0 when it has none)."""
        return self.counts.pop(key, 0)


class BackgroundWriter(Generic[P]):
    """One daemon thread writing, in batches, what producers add to a ``pending`` buffer.

    ``linger``: seconds a batch waits for more items, cut short when the buffer holds
    ``wake_at`` items or a flush is under way. ``backoff``: the wait after a failed write,
    doubled after each further failure up to ``max_backoff``; it ends early on ``close`` or
    a new ``flush``. ``exit_flush``: seconds the exiting interpreter waits for the buffer.
    """

    def __init__(self, name: str, write: Callable[[Any], object], pending: Callable[[], P], *,
                 linger: float, backoff: float, max_backoff: float, wake_at: int | None = None,
                 on_error: ErrorCallback | None = None, on_dropped: DropCallback | None = None,
                 exit_flush: float | None = None) -> None:
        self.name = name
        self.linger = linger
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.exit_flush = exit_flush
        self._write = write
        self._new_pending = pending
        self._wake_at = sys.maxsize if wake_at is None else wake_at
        self._on_error = on_error
        self._on_dropped = on_dropped
        self._atexit_registered = False
        self.reset()

    def reset(self) -> None:
        """Start afresh, as a forked child does: an empty buffer, a new lock, no thread."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: P = self._new_pending()
        self._thread: threading.Thread | None = None
        self._in_flight = False
        self._closed = False
        self._flushers = 0
        self._flush_asks = 0

    @property
    def thread(self) -> threading.Thread | None:
        """The writer thread of this process, once started."""
        return self._thread

    @property
    def lock(self) -> threading.Lock:
        """The lock producers and the writer take around the buffer."""
        return self._lock

    @property
    def buffered(self) -> int:
        """Items buffered, not counting a batch being written."""
        return len(self._pending)

    # -- producers ---------------------------------------------------------------------

    def add(self, item: Any) -> None:
        """Buffer ``item`` (no I/O); an item the buffer refuses is dropped and reported."""
        self.add_all((item,))

    def add_all(self, items: Iterable[Any]) -> None:
        """Buffer several items at once: the writer is woken at most once for them."""
        if self._pid != os.getpid():
            self.reset()
        refused = 0
        with self._lock:
            pending = self._pending
            before = len(pending)
            for item in items:
                if not pending.add(item):
                    refused += 1
            after = len(pending)
            if (before == 0 < after) or before < self._wake_at <= after:
                self._cond.notify()
        self._dropped(refused)
        if self._thread is None:
            self._start()

    @contextmanager
    def locked(self) -> Iterator[P]:
        """The buffer, under the writer's lock: for a producer taking some items back."""
        if self._pid != os.getpid():
            self.reset()
        with self._lock:
            yield self._pending

    # -- the writer thread -------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # e.g. at interpreter shutdown: try again next time
                failed: RuntimeError | None = exc
            else:
                failed = None
                self._thread = thread
        if failed is not None:
            self._report(failed)
            return
        if self.exit_flush is not None and not self._atexit_registered:
            self._atexit_registered = True
            atexit.register(self.flush, self.exit_flush)

    def _run(self) -> None:
        backoff = self.backoff
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._closed:
                    self._pause(self.linger, lingering=True)
                if not self._pending:  # closed, or a producer took the items back
                    if self._closed:
                        return
                    continue
                batch = self._pending.take()
                self._in_flight = True
            try:
                self._write(batch)
            except Exception as exc:
                error: Exception | None = exc
            else:
                error = None
            if error is not None:
                self._report(error)
            with self._cond:
                dropped = 0 if error is None else self._pending.restore(batch)
                self._in_flight = False
                self._cond.notify_all()
                closed = self._closed
            if error is None:
                backoff = self.backoff
                continue
            self._dropped(dropped)
            if closed:
                return  # closing while the destination fails: give up
            with self._cond:
                self._pause(backoff, lingering=False)
            backoff = min(backoff * 2, self.max_backoff)

    def _pause(self, seconds: float, *, lingering: bool) -> None:
        """Wait ``seconds`` holding the lock; less on close or a new flush, and a linger
        also ends once a flush is under way or the buffer holds ``wake_at`` items."""
        deadline = monotonic() + seconds
        asked = self._flush_asks
        while not self._closed and self._flush_asks == asked:
            if lingering and (self._flushers or len(self._pending) >= self._wake_at):
                return
            remaining = deadline - monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:
                pass

    def _dropped(self, count: int) -> None:
        if self._on_dropped is not None:
            for _ in range(count):
                try:
                    self._on_dropped()
                except Exception:
                    pass

    # -- lifecycle ---------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> None:
        """Write the buffer now; wait until it is written, at most ``timeout`` seconds.

        In a forked child this only starts afresh: the buffer there is the parent's.
        """
        if self._pid != os.getpid():
            self.reset()
            return
        deadline = monotonic() + timeout
        with self._cond:
            self._flushers += 1
            self._flush_asks += 1
            self._cond.notify_all()
            try:
                while (self._pending or self._in_flight) and self._thread is not None \
                        and self._thread.is_alive():
                    remaining = deadline - monotonic()
                    if remaining <= 0:
                        return
                    self._cond.wait(remaining)
            finally:
                self._flushers -= 1

    def close(self, timeout: float = 5.0) -> None:
        """Flush, then stop the thread (it ends once the buffer is written or a write fails)."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
