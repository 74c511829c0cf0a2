"""The peer-suite runner's reading of JUnit XML, its comparison against bare, and its
deliberate differences."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers.deliberate_differences import DELIBERATE_DIFFERENCES
from tests.peers.differences import DifferencesError, judge, parse_differences
from tests.peers.junit_outcomes import Outcome, new_failures, read_outcomes
from tests.peers.suites import SUITES as PEER_SUITES

XUNIT1 = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="6">
<testcase classname="t.unit.app.test_app.test_App" name="test_ok" file="t/unit/app/test_app.py"
          line="10" time="0.1"/>
<testcase classname="t.unit.app.test_app.test_App" name="test_bad" file="t/unit/app/test_app.py"
          line="20" time="0.1">
  <failure message="RuntimeError: Contract breach&#10;more">tb</failure></testcase>
<testcase classname="t.unit.tasks.test_trace" name="test_fn[a-b]" file="t/unit/tasks/test_trace.py"
          line="5" time="0.1"><error message="failed on setup with &quot;boom&quot;">tb</error>
</testcase>
<testcase classname="t.unit.tasks.test_trace" name="test_skip" file="t/unit/tasks/test_trace.py"
          line="6" time="0"><skipped message="no redis"/></testcase>
<testcase classname="t.unit.worker.test_request.test_Request" name="test_torn"
          file="t/unit/worker/test_request.py" line="7" time="0.1">
  <failure message="assert 1 == 2">tb</failure><error message="teardown">tb</error></testcase>
<testcase classname="" name="t.unit.broken" time="0">
  <error message="collection failure">ImportError</error></testcase>
</testsuite></testsuites>
"""


def write(tmp_path: Path, text: str = XUNIT1) -> Path:
    path = tmp_path / "run.xml"
    path.write_text(text)
    return path


def test_node_ids_outcomes_and_first_lines(tmp_path: Path) -> None:
    run = read_outcomes(write(tmp_path))
    assert run.tests == {
        "t/unit/app/test_app.py::test_App::test_ok": Outcome("passed"),
        "t/unit/app/test_app.py::test_App::test_bad":
            Outcome("failed", "RuntimeError: Contract breach"),
        "t/unit/tasks/test_trace.py::test_fn[a-b]":
            Outcome("error", 'failed on setup with "boom"'),
        "t/unit/tasks/test_trace.py::test_skip": Outcome("skipped", "no redis"),
        "t/unit/worker/test_request.py::test_Request::test_torn":
            Outcome("failed", "assert 1 == 2"),
        "t.unit.broken": Outcome("error", "collection failure"),
    }
    assert run.counts() == {"passed": 1, "failed": 2, "error": 2, "skipped": 1}
    assert run.collection_failures() == ["t.unit.broken"]


def test_new_failures_leave_out_bare_ones_and_count_tests_not_run(tmp_path: Path) -> None:
    bare = read_outcomes(write(tmp_path))
    guarded = read_outcomes(write(tmp_path))
    guarded.tests["t/unit/app/test_app.py::test_App::test_ok"] = Outcome("failed", "now broken")
    del guarded.tests["t/unit/tasks/test_trace.py::test_skip"]
    assert new_failures(bare, guarded) == {
        "t/unit/app/test_app.py::test_App::test_ok": Outcome("failed", "now broken"),
        "t/unit/tasks/test_trace.py::test_skip":
            Outcome("error", "not run in this mode (missing from its results)"),
    }
    assert new_failures(bare, read_outcomes(write(tmp_path))) == {}


KNOWN_SUITES = {"celery", "sentry-celery"}
MODES = {"guard", "guarded_task"}
NODE = "tests/integrations/celery/test_celery.py::test_retry"


def test_listed_new_failures_are_deliberate_and_listed_passing_tests_stale() -> None:
    new = {NODE: Outcome("failed", "assert 2 == 1"), "t/a.py::test_b": Outcome("error", "boom")}
    listed = {NODE: "GuardedTask retries it", "t/a.py::test_gone": "no longer fails"}
    verdict = judge(new, listed)
    assert verdict.unexpected == {"t/a.py::test_b": Outcome("error", "boom")}
    assert verdict.deliberate == {NODE: (Outcome("failed", "assert 2 == 1"),
                                         "GuardedTask retries it")}
    assert verdict.stale == {"t/a.py::test_gone": "no longer fails"}
    assert verdict.failed
    assert not judge({NODE: Outcome("failed")}, listed).failed


def test_differences_are_read_per_suite_and_mode() -> None:
    data = {"sentry-celery": {"guarded_task": {NODE: " GuardedTask retries it "}}}
    assert parse_differences(data, KNOWN_SUITES, MODES) == {
        ("sentry-celery", "guarded_task"): {NODE: "GuardedTask retries it"}}
    assert parse_differences({}, KNOWN_SUITES, MODES) == {}


@pytest.mark.parametrize(("data", "complaint"), [
    ({"sentry": {"guard": {}}}, "unknown suite 'sentry'"),
    ({"celery": {"bare": {}}}, "celery/bare: unknown mode"),
    ({"celery": {"guard": {NODE: ""}}}, "the reason must be one non-empty line"),
    ({"celery": {"guard": {NODE: "two\nlines"}}}, "the reason must be one non-empty line"),
    ({"celery": {"guard": [NODE]}}, "must map node ids to reasons"),
])
def test_a_malformed_listing_is_refused(data: dict[str, object], complaint: str) -> None:
    with pytest.raises(DifferencesError, match=complaint):
        parse_differences(data, KNOWN_SUITES, MODES)


def test_the_shipped_listing_is_well_formed() -> None:
    parse_differences(DELIBERATE_DIFFERENCES, set(PEER_SUITES), MODES)
