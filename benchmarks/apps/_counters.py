"""Counters that every process of one benchmark worker shares, in a file the harness reads.

A prefork worker runs tasks in several child processes, so a module global in one of them
sees only its own tasks. This file (``BENCH_COUNTERS``, created zeroed by the harness for
each run) is mapped by every process of the worker: a header (next free slot, phase) and
one row of int64 fields per process. A process takes its row on first use (under
``flock`` on a descriptor of its own, once) and is the only writer of it, so no lock is
taken per task; the sums are read by the sentinel (in whichever child runs it) and, after
the worker stopped, by the harness.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from pathlib import Path

#: The fields of each process's row.
FIELDS = ("pid", "processed", "gc_ns", "gc_runs", "gc_full", "spans")
#: Rows: more than any worker here has processes (main + children).
SLOTS = 32
#: Header fields before the rows: the next free row, the phase.
NEXT, PHASE = 0, 1
HEADER = 2
SIZE = 8 * (HEADER + SLOTS * len(FIELDS))
#: ``PHASE`` values: warming up, measured window running (profile it), window over.
WARMING, MEASURING, DONE = 0, 1, 2
_INDEX = {name: i for i, name in enumerate(FIELDS)}


def create(path: Path) -> None:
    """A zeroed counters file (the harness, before starting a worker)."""
    path.write_bytes(bytes(SIZE))


def read(path: Path) -> dict[str, int]:
    """The sum of each field over every process's row (the harness, from outside)."""
    values = struct.unpack(f"<{SIZE // 8}q", path.read_bytes()[:SIZE])
    return _sums(values)


def _sums(values: object) -> dict[str, int]:
    rows = range(HEADER, HEADER + SLOTS * len(FIELDS), len(FIELDS))
    return {name: sum(values[row + i] for row in rows)  # type: ignore[index]
            for name, i in _INDEX.items() if name != "pid"}


class Counters:
    """This process's view of the counters file; its own row is taken on first use."""

    def __init__(self, path: str | None) -> None:
        """``path`` None: an anonymous map (a worker the harness did not start)."""
        self._path = path
        fd = os.open(path, os.O_RDWR) if path else -1
        self._map = mmap.mmap(fd, SIZE)
        if fd >= 0:
            os.close(fd)  # the map stays
        self._view = memoryview(self._map).cast("q")
        self._row: int | None = None
        os.register_at_fork(after_in_child=self._forget_row)

    def _forget_row(self) -> None:
        self._row = None  # a forked child takes a row of its own

    def _take_row(self) -> int:
        # A descriptor of this process's own: flock is held per open file description, so
        # one inherited across fork would let two children hold the lock at once.
        fd = os.open(self._path, os.O_RDWR) if self._path else -1
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            slot = self._view[NEXT]
            if slot >= SLOTS:
                raise RuntimeError(f"more than {SLOTS} worker processes")
            self._view[NEXT] = slot + 1
        finally:
            if fd >= 0:
                os.close(fd)  # releases the lock
        row = HEADER + slot * len(FIELDS)
        self._view[row] = os.getpid()
        self._row = row
        return row

    def add(self, field: str, amount: int = 1) -> None:
        """Add to this process's ``field``."""
        row = self._row if self._row is not None else self._take_row()
        self._view[row + _INDEX[field]] += amount

    def count_task(self) -> None:
        """One more task ran in this process (``add("processed")``, on the hot path)."""
        row = self._row if self._row is not None else self._take_row()
        self._view[row + 1] += 1

    def total(self, field: str) -> int:
        """``field`` summed over every process."""
        return _sums(self._view)[field]

    def wait_total(self, field: str, at_least: int, timeout: float) -> int:
        """Poll until ``field`` summed over every process reaches ``at_least``; the sum."""
        deadline = time.monotonic() + timeout
        found = self.total(field)
        while found < at_least and time.monotonic() < deadline:
            time.sleep(0.0002)
            found = self.total(field)
        return found

    @property
    def phase(self) -> int:
        return int(self._view[PHASE])

    @phase.setter
    def phase(self, value: int) -> None:
        self._view[PHASE] = value
