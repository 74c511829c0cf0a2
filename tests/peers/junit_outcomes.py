"""Outcomes of one pytest run, read from its JUnit XML (``junit_family=xunit1``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: What pytest writes for a module it could not import (``--continue-on-collection-errors``).
COLLECTION_FAILURE = "collection failure"
MESSAGE_CHARS = 240


@dataclass(frozen=True)
class Outcome:
    """One test: passed, failed, error or skipped, and the first line of what went wrong."""

    status: str
    message: str = ""

    @property
    def broken(self) -> bool:
        """Whether the test failed or errored (in its call, setup or teardown)."""
        return self.status in ("failed", "error")


@dataclass
class RunOutcomes:
    """Every test of one run, by pytest node id."""

    tests: dict[str, Outcome] = field(default_factory=dict)

    def counts(self) -> Counter[str]:
        """How many tests passed, failed, errored, were skipped."""
        return Counter(outcome.status for outcome in self.tests.values())

    def broken(self) -> dict[str, Outcome]:
        """The failed and errored tests."""
        return {node: o for node, o in self.tests.items() if o.broken}

    def collection_failures(self) -> list[str]:
        """Node ids of the modules pytest could not collect."""
        return [node for node, o in self.tests.items()
                if o.status == "error" and COLLECTION_FAILURE in o.message]


def node_id(case: ET.Element) -> str:
    """``path.py::Class::name`` from an xunit1 testcase (``file``, ``classname``, ``name``)."""
    name = case.get("name", "")
    classname = case.get("classname", "")
    path = case.get("file", "")
    if not classname:
        return name
    if path:
        module = path[:-3].replace("/", ".") if path.endswith(".py") else path
        rest = classname[len(module):].lstrip(".") if classname.startswith(module) else classname
        return "::".join(part for part in (path, rest.replace(".", "::"), name) if part)
    return f"{classname}::{name}"


def first_line(text: str | None) -> str:
    """The first non-empty line of a message, cut to a readable length."""
    for line in (text or "").splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= MESSAGE_CHARS else line[:MESSAGE_CHARS - 3] + "..."
    return ""


def outcome_of(case: ET.Element) -> Outcome:
    """A testcase's outcome; a failure wins over a teardown error."""
    for tag, status in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        found = case.find(tag)
        if found is not None:
            return Outcome(status, first_line(found.get("message") or found.text))
    return Outcome("passed")


def read_outcomes(path: Path) -> RunOutcomes:
    """Parse a pytest JUnit XML file."""
    run = RunOutcomes()
    for case in ET.parse(path).getroot().iter("testcase"):
        run.tests[node_id(case)] = outcome_of(case)
    return run


def new_failures(bare: RunOutcomes, guarded: RunOutcomes) -> dict[str, Outcome]:
    """Tests broken in ``guarded`` but not bare, and bare's tests it never ran."""
    bare_broken = bare.broken()
    broken = {node: o for node, o in guarded.broken().items() if node not in bare_broken}
    for node in bare.tests.keys() - guarded.tests.keys():
        broken[node] = Outcome("error", "not run in this mode (missing from its results)")
    return dict(sorted(broken.items()))
