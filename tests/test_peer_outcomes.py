"""The peer-suite runner's reading of JUnit XML and its comparison against bare."""

from __future__ import annotations

from pathlib import Path

from tests.peers.junit_outcomes import Outcome, new_failures, read_outcomes

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
