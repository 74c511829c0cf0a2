"""Tests for the batching background writer: its buffers, timing, failures, flush and fork."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from telemetry_guard.stores.background import BackgroundWriter, ItemQueue, Tally
from tests.forking import in_child
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[1]


class Destination:
    """A write callable that records batches and can be made to fail."""

    def __init__(self) -> None:
        self.batches: list[Any] = []
        self.attempts: list[float] = []
        self.failing = 0  # how many next writes raise
        self.lock = threading.Lock()

    def __call__(self, batch: Any) -> None:
        with self.lock:
            self.attempts.append(time.monotonic())
            if self.failing:
                self.failing -= 1
                raise ConnectionError("destination down")
            self.batches.append(list(batch) if isinstance(batch, list) else dict(batch))

    @property
    def items(self) -> list[Any]:
        with self.lock:
            return [item for batch in self.batches for item in batch]


Made = Callable[..., tuple[BackgroundWriter[Any], Destination, list[BaseException], list[int]]]


@pytest.fixture
def make() -> Iterator[Made]:
    """Builds writers on a recording destination; closes them after the test."""
    made: list[BackgroundWriter[Any]] = []

    def build(pending: Callable[[], Any] | None = None, **options: Any) -> tuple[
            BackgroundWriter[Any], Destination, list[BaseException], list[int]]:
        destination, errors, dropped = Destination(), [], []
        settings: dict[str, Any] = {"linger": 0.01, "backoff": 0.05, "max_backoff": 0.2}
        settings.update(options)
        writer: BackgroundWriter[Any] = BackgroundWriter(
            "test-writer", destination, pending or (lambda: ItemQueue(100)),
            on_error=errors.append, on_dropped=lambda: dropped.append(1), **settings)
        made.append(writer)
        return writer, destination, errors, dropped

    yield build
    for writer in made:
        writer.close(timeout=1.0)


# -- the buffers ---------------------------------------------------------------------------

def test_an_item_queue_refuses_items_past_its_capacity_and_batches_in_order() -> None:
    """Items come out oldest first, at most batch_size at a time; a full queue refuses."""
    queue = ItemQueue(3, batch_size=2)
    assert [queue.add(n) for n in range(4)] == [True, True, True, False]
    assert queue.take() == [0, 1]
    assert queue.take() == [2]
    assert len(queue) == 0


def test_an_item_queue_puts_a_failed_batch_back_in_front_as_far_as_it_fits() -> None:
    """The oldest of a failed batch go back before newer items; the rest is counted."""
    queue = ItemQueue(3)
    queue.add("a")
    queue.add("b")
    batch = queue.take()
    queue.add("c")
    queue.add("d")
    assert queue.restore(batch) == 1
    assert queue.take() == ["a", "c", "d"]


def test_a_tally_merges_counts_per_key_and_drops_a_failed_batch() -> None:
    """add(key) counts; take hands over every key's count; restore keeps nothing."""
    tally = Tally()
    for key in ("a", "b", "a"):
        assert tally.add(key)
    assert len(tally) == 2 and tally.pop("b") == 1 and tally.pop("b") == 0
    batch = tally.take()
    assert batch == {"a": 2} and len(tally) == 0
    assert tally.restore(batch) == 0 and len(tally) == 0


# -- writing ----------------------------------------------------------------------------

def test_no_thread_runs_before_the_first_item_and_one_serves_every_item(make: Made) -> None:
    """The thread starts on the first add; later adds reuse it."""
    writer, destination, errors, _ = make()
    assert writer.thread is None
    writer.add(1)
    thread = writer.thread
    assert thread is not None and thread.daemon and thread.name == "test-writer"
    writer.add_all([2, 3])
    wait_for(lambda: destination.items == [1, 2, 3], timeout=2)
    assert writer.thread is thread and errors == []


def test_items_added_within_the_linger_go_in_one_batch(make: Made) -> None:
    """Items added while the writer lingers reach the destination together, in order."""
    writer, destination, _, _ = make(linger=0.3)
    for n in range(5):
        writer.add(n)
    wait_for(lambda: destination.batches, timeout=2)
    assert destination.batches == [[0, 1, 2, 3, 4]]


def test_reaching_wake_at_items_ends_the_linger(make: Made) -> None:
    """A linger of a minute: wake_at items are written at once, fewer wait."""
    writer, destination, _, _ = make(linger=60.0, wake_at=3)
    writer.add(0)
    time.sleep(0.1)
    assert destination.batches == []
    writer.add_all([1, 2])
    wait_for(lambda: destination.batches == [[0, 1, 2]], timeout=2)


def test_batches_are_at_most_the_queues_batch_size(make: Made) -> None:
    """Seven items through a batch size of three: batches of 3, 3, 1."""
    writer, destination, _, _ = make(lambda: ItemQueue(100, batch_size=3), linger=0.2)
    writer.add_all(range(7))
    writer.flush(2)
    assert [len(batch) for batch in destination.batches] == [3, 3, 1]
    assert destination.items == list(range(7))


def test_a_full_buffer_drops_and_reports_each_refused_item(make: Made) -> None:
    """Capacity 3, five items added while the writer lingers: two reported dropped."""
    writer, destination, errors, dropped = make(lambda: ItemQueue(3), linger=0.3)
    writer.add_all(range(4))
    writer.add(4)
    assert len(dropped) == 2
    writer.flush(2)
    assert destination.items == [0, 1, 2] and errors == []


def test_a_tally_writer_merges_what_producers_add(make: Made) -> None:
    """Counts per key, merged while the writer lingers, written as one batch."""
    writer, destination, _, _ = make(Tally, linger=0.3)
    for key in ("a", "b", "a", "a"):
        writer.add(key)
    writer.flush(2)
    assert destination.batches == [{"a": 3, "b": 1}]


def test_a_producer_may_take_items_back_and_the_writer_goes_on(make: Made) -> None:
    """A tally emptied by a producer while the writer lingers: nothing written, and the
    thread still serves the next item."""
    writer, destination, _, _ = make(Tally, linger=0.2)
    writer.add("a")
    with writer.locked() as pending:
        assert pending.pop("a") == 1
    time.sleep(0.4)
    assert destination.batches == []
    writer.add("b")
    writer.flush(2)
    assert destination.batches == [{"b": 1}]
    assert writer.thread is not None and writer.thread.is_alive()


# -- failures ---------------------------------------------------------------------------

def test_a_failed_batch_is_reported_kept_and_written_after_a_backoff(make: Made) -> None:
    """Two failed writes: each reported, the batch written whole on the third attempt, the
    second wait at least the doubled backoff."""
    writer, destination, errors, _ = make(linger=0.0, backoff=0.1, max_backoff=1.0)
    destination.failing = 2
    writer.add_all([1, 2])
    wait_for(lambda: destination.batches, timeout=5)
    assert destination.batches == [[1, 2]]
    assert [type(exc) for exc in errors] == [ConnectionError, ConnectionError]
    first, second, third = destination.attempts
    assert second - first >= 0.1 and third - second >= 0.2


def test_the_backoff_stops_doubling_at_max_backoff(make: Made) -> None:
    """Failing writes back off 0.05, 0.1, then 0.1 again (the cap), never longer."""
    writer, destination, errors, _ = make(linger=0.0, backoff=0.05, max_backoff=0.1)
    destination.failing = 4
    writer.add(1)
    wait_for(lambda: destination.batches, timeout=5)
    gaps = [b - a for a, b in zip(destination.attempts, destination.attempts[1:], strict=False)]
    assert gaps[0] >= 0.05 and all(0.1 <= gap < 0.6 for gap in gaps[1:]), gaps
    assert len(errors) == 4


def test_what_a_write_removed_from_a_failed_batch_is_not_written_again(make: Made) -> None:
    """A write that deletes each item it delivered, then fails: only the rest is retried."""
    delivered: list[int] = []
    calls = {"n": 0}

    def write(batch: list[int]) -> None:
        calls["n"] += 1
        while batch:
            if calls["n"] == 1 and batch[0] == 3:
                raise ConnectionError("refused midway")
            delivered.append(batch[0])
            del batch[0]

    errors: list[BaseException] = []
    writer: BackgroundWriter[ItemQueue] = BackgroundWriter(
        "test-partial", write, lambda: ItemQueue(10), linger=0.0, backoff=0.05,
        max_backoff=0.1, on_error=errors.append)
    try:
        writer.add_all([1, 2, 3, 4])
        wait_for(lambda: len(delivered) == 4, timeout=5)
        assert delivered == [1, 2, 3, 4] and len(errors) == 1
    finally:
        writer.close(1.0)


def test_a_tally_writer_drops_a_failed_batch(make: Made) -> None:
    """A tally's failed batch is reported and not written later."""
    writer, destination, errors, dropped = make(Tally, linger=0.0, backoff=0.05)
    destination.failing = 1
    writer.add("a")
    wait_for(lambda: errors, timeout=2)
    writer.add("b")
    writer.flush(2)
    assert destination.batches == [{"b": 1}] and dropped == []


def test_a_batch_that_no_longer_fits_is_reported_dropped(make: Made) -> None:
    """Items added while a failing batch was out fill the queue: what of the batch finds no
    room is dropped and reported."""
    gate = threading.Event()

    def write(batch: list[int]) -> None:
        gate.wait(5)
        raise ConnectionError("down")

    dropped: list[int] = []
    writer: BackgroundWriter[ItemQueue] = BackgroundWriter(
        "test-refill", write, lambda: ItemQueue(3), linger=0.0, backoff=10.0,
        max_backoff=10.0, on_dropped=lambda: dropped.append(1))
    writer.add_all([1, 2])
    wait_for(lambda: writer.buffered == 0, timeout=2)  # the batch is out
    writer.add_all([3, 4])
    gate.set()
    wait_for(lambda: writer.buffered == 3, timeout=2)
    assert dropped == [1]
    with writer.locked() as pending:
        assert pending.take() == [1, 3, 4]
    writer.close(0.1)


def test_an_error_callback_that_raises_does_not_stop_the_writer(make: Made) -> None:
    """A reporter raising inside the writer thread: the thread lives and writes on."""
    destination = Destination()
    destination.failing = 1

    def report(exc: BaseException) -> None:
        raise RuntimeError("reporter broke")

    writer: BackgroundWriter[ItemQueue] = BackgroundWriter(
        "test-bad-reporter", destination, lambda: ItemQueue(10), linger=0.0, backoff=0.05,
        max_backoff=0.1, on_error=report)
    try:
        writer.add(1)
        wait_for(lambda: destination.items == [1], timeout=2)
    finally:
        writer.close(1.0)


# -- flush and close --------------------------------------------------------------------

def test_flush_writes_at_once_and_returns_when_written(make: Made) -> None:
    """A linger of a minute does not delay a flush; flush returns with everything written."""
    writer, destination, _, _ = make(linger=60.0)
    writer.add_all([1, 2])
    started = time.monotonic()
    writer.flush(5)
    assert destination.items == [1, 2] and time.monotonic() - started < 1.0


def test_flush_without_items_or_thread_returns_at_once(make: Made) -> None:
    """Nothing was ever added: flush does not wait."""
    writer, _, _, _ = make()
    started = time.monotonic()
    writer.flush(5)
    assert time.monotonic() - started < 0.1 and writer.thread is None


def test_flush_ends_a_long_backoff_once_and_waits_at_most_its_timeout(make: Made) -> None:
    """A write failed and the writer backs off for a minute: a flush tries once more at
    once; while the destination still fails, flush returns after its timeout and the writer
    does not retry in a loop."""
    writer, destination, errors, _ = make(linger=0.0, backoff=60.0, max_backoff=60.0)
    destination.failing = 100
    writer.add(1)
    wait_for(lambda: errors, timeout=2)
    started = time.monotonic()
    writer.flush(0.5)
    assert 0.45 <= time.monotonic() - started < 2.0
    assert len(destination.attempts) == 2 and writer.buffered == 1
    destination.failing = 0
    writer.flush(2)
    assert destination.items == [1]


def test_close_writes_what_is_buffered_and_stops_the_thread(make: Made) -> None:
    """close() flushes, then the thread ends."""
    writer, destination, _, _ = make(linger=60.0)
    writer.add(1)
    thread = writer.thread
    writer.close()
    assert destination.items == [1]
    assert thread is not None
    thread.join(2)
    assert not thread.is_alive()


def test_close_while_the_destination_fails_stops_the_thread(make: Made) -> None:
    """A closed writer whose write fails gives up instead of backing off for ever."""
    writer, destination, errors, _ = make(linger=0.0, backoff=0.05)
    destination.failing = 1000
    writer.add(1)
    wait_for(lambda: errors, timeout=2)
    thread = writer.thread
    writer.close(timeout=0.2)
    assert thread is not None
    thread.join(2)
    assert not thread.is_alive()


def test_exit_flush_writes_the_buffer_when_the_interpreter_exits(tmp_path: Path) -> None:
    """A writer lingering for a minute when the program ends: atexit writes its items."""
    out = tmp_path / "written.txt"
    program = textwrap.dedent(f"""
        from telemetry_guard.stores.background import BackgroundWriter, ItemQueue

        def write(batch):
            with open({str(out)!r}, "a") as f:
                f.write(",".join(batch))

        writer = BackgroundWriter("exit", write, lambda: ItemQueue(10), linger=60.0,
                                  backoff=1.0, max_backoff=1.0, exit_flush=2.0)
        writer.add_all(["a", "b"])
    """)
    subprocess.run([sys.executable, "-c", program], cwd=ROOT, check=True, timeout=30)
    assert out.read_text() == "a,b"


# -- fork ----------------------------------------------------------------------------------

def test_a_forked_child_writes_its_own_items_with_its_own_thread(make: Made) -> None:
    """Items buffered in the parent at fork time stay the parent's; the child starts its
    own thread and writes only what it added."""
    writer, destination, _, _ = make(linger=60.0)
    writer.add("parent")
    parent_thread = writer.thread

    def child() -> tuple[list[Any], bool]:
        writer.add("child")
        writer.flush(5)
        return destination.items, writer.thread is not parent_thread

    assert in_child(child) == (["child"], True)
    writer.flush(5)
    assert destination.items == ["parent"]


def test_flush_in_a_forked_child_does_not_wait_for_the_parents_items(make: Made) -> None:
    """The parent's buffer, copied by fork, is not the child's to wait for."""
    writer, _, _, _ = make(linger=60.0)
    writer.add("parent")

    def child() -> float:
        started = time.monotonic()
        writer.flush(5)
        return time.monotonic() - started

    assert in_child(child) < 1.0  # type: ignore[operator]


def test_a_lock_held_in_the_parent_at_fork_does_not_block_the_child(make: Made) -> None:
    """Forked while another thread held the buffer's lock, the child still adds and writes."""
    writer, destination, _, _ = make(linger=60.0)
    writer.add("parent")

    def child() -> list[Any]:
        writer.add("child")
        writer.flush(5)
        return destination.items

    with writer.lock:
        assert in_child(child) == ["child"]
