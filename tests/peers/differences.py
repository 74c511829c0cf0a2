"""Deliberate differences: new peer failures listed, with a reason, as meant.

A new failure listed (``deliberate_differences.py``) is *deliberate* and does not fail the
run; a listed test that no longer fails (or no longer exists) is *stale*, a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

#: Node id → reason, per (suite, mode).
Differences = dict[tuple[str, str], dict[str, str]]
T = TypeVar("T")


class DifferencesError(ValueError):
    """The deliberate-differences file is not what the runner can use."""


def parse_differences(data: Mapping[str, object], suites: set[str],
                      modes: set[str]) -> Differences:
    """Check the listing (suite → mode → node id → reason): known suites and modes, and a
    non-empty one-line reason each."""
    differences: Differences = {}
    for suite, by_mode in data.items():
        if suite not in suites:
            raise DifferencesError(f"unknown suite {suite!r}; valid: {', '.join(sorted(suites))}")
        if not isinstance(by_mode, dict):
            raise DifferencesError(f"{suite}: must map modes to tests")
        for mode, tests in by_mode.items():
            if mode not in modes:
                raise DifferencesError(f"{suite}/{mode}: unknown mode; valid: "
                                       f"{', '.join(sorted(modes))}")
            if not isinstance(tests, dict):
                raise DifferencesError(f"{suite}/{mode}: must map node ids to reasons")
            for node, reason in tests.items():
                if not isinstance(reason, str) or not reason.strip() or "\n" in reason.strip():
                    raise DifferencesError(f"{suite}/{mode} {node}: the reason must be "
                                           "one non-empty line")
            differences[(suite, mode)] = {node: r.strip() for node, r in tests.items()}
    return differences


@dataclass
class Verdict(Generic[T]):
    """The new failures of one guarded run, split by whether they are listed."""

    unexpected: dict[str, T] = field(default_factory=dict)
    deliberate: dict[str, tuple[T, str]] = field(default_factory=dict)
    stale: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether the run adds a failure nobody meant."""
        return bool(self.unexpected)


def judge(new: dict[str, T], listed: dict[str, str]) -> Verdict[T]:
    """Split new failures into unexpected and deliberate; listed tests not failing are stale."""
    verdict: Verdict[T] = Verdict()
    for node, outcome in new.items():
        if node in listed:
            verdict.deliberate[node] = (outcome, listed[node])
        else:
            verdict.unexpected[node] = outcome
    verdict.stale = {node: reason for node, reason in listed.items() if node not in new}
    return verdict
