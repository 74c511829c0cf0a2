"""Running a function in a forked child, as a prefork worker's child runs the guard."""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable

FORK = multiprocessing.get_context("fork")


def in_child(target: Callable[[], object]) -> object:
    """Run ``target`` in a forked child; return its result or fail with its traceback."""
    results = FORK.Queue()

    def main() -> None:
        try:
            results.put(("ok", target()))
        except BaseException:
            results.put(("error", traceback.format_exc()))

    child = FORK.Process(target=main)
    child.start()
    status, value = results.get(timeout=20)
    child.join(10)
    assert status == "ok", value
    assert child.exitcode == 0
    return value
