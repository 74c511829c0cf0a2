"""Workflow context, pure logic: reading a request, stamping headers, the chord callback's
event, the mail's workflow lines and the ``--root`` filter."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from telemetry_guard.cli.stream_query import RecordFilter
from telemetry_guard.core.classify import Severity
from telemetry_guard.core.events import FailureEvent
from telemetry_guard.integration.workflow import (
    CHAIN_LENGTH_HEADER,
    ROOT_TASK_HEADER,
    chord_callback_failure,
    stamp_workflow,
    workflow_fields,
)
from telemetry_guard.notify.message import body_for
from telemetry_guard.sinks.email import build_payload


def request(**attrs: Any) -> SimpleNamespace:
    base: dict[str, Any] = {"id": "t3", "root_id": "t1", "parent_id": "t2", "group": None,
                            "chord": None, "chain": None, "callbacks": None}
    return SimpleNamespace(**{**base, **attrs})


def step(name: str) -> dict[str, Any]:
    return {"task": name, "args": [], "kwargs": {}, "options": {}}


def test_third_of_five_chain_steps_giving_up_drops_the_two_left() -> None:
    req = request(chain=[step("s5"), step("s4")],
                  **{ROOT_TASK_HEADER: "shop.start", CHAIN_LENGTH_HEADER: 5})
    fields = workflow_fields(req, task_name="shop.charge", give_up=True)
    assert fields == {"root_id": "t1", "parent_id": "t2", "root_task": "shop.start",
                      "chain_position": 3, "chain_length": 5, "steps_dropped": 2}


def test_retry_and_fallback_drop_nothing_and_callbacks_count_when_dropped() -> None:
    req = request(chain=[step("s5")], callbacks=[step("audit")],
                  **{CHAIN_LENGTH_HEADER: 5})
    assert "steps_dropped" not in workflow_fields(req, task_name="x", give_up=False)
    assert "steps_dropped" not in workflow_fields(req, task_name="x", give_up=True,
                                                  falls_back=True)
    assert workflow_fields(req, task_name="x", give_up=True)["steps_dropped"] == 2
    assert workflow_fields(req, task_name="x", give_up=True)["chain_position"] == 4


def test_chord_member_names_the_callback_and_a_plain_task_is_its_own_root() -> None:
    callback = {"task": "shop.total", "options": {"task_id": "cb-1"}}
    fields = workflow_fields(request(group="g-1", chord=callback), task_name="m",
                             give_up=True)
    assert (fields["group_id"], fields["chord_id"], fields["chord_task"]) == (
        "g-1", "cb-1", "shop.total")
    assert fields["steps_dropped"] == 1
    plain = workflow_fields(request(id="a", root_id="a", parent_id=None), task_name="solo",
                            give_up=True)
    assert plain == {"root_id": "a", "parent_id": None, "root_task": "solo",
                     "steps_dropped": 0}


def test_an_unreadable_request_gives_no_context_and_never_raises() -> None:
    class Broken:
        @property
        def chain(self) -> Any:
            raise RuntimeError("boom")

    assert workflow_fields(Broken(), task_name="x", give_up=True) == {}


def test_publish_outside_a_task_stamps_root_task_and_the_chain_length_of_a_head() -> None:
    headers: dict[str, Any] = {"id": "t1", "root_id": "t1"}
    stamp_workflow(sender="shop.start", body=((1,), {}, {"chain": [step("c"), step("b")]}),
                   headers=headers)
    assert headers[ROOT_TASK_HEADER] == "shop.start" and headers[CHAIN_LENGTH_HEADER] == 3
    single: dict[str, Any] = {"id": "x", "root_id": "x"}
    stamp_workflow(sender="shop.one", body=((), {}, {"chain": None}), headers=single)
    assert single == {"id": "x", "root_id": "x", ROOT_TASK_HEADER: "shop.one"}
    stamp_workflow(sender="s", body=None, headers=None)  # nothing to stamp, no error


def event(**overrides: Any) -> FailureEvent:
    fields: dict[str, Any] = {
        "task_name": "shop.rate", "task_id": "m-2", "attempt": 1, "max_retries": 0,
        "exception_type": "KeyError", "exception_module": "builtins",
        "message": "token=[REDACTED]", "traceback": "tb", "severity": Severity.HIGH,
        "decision": "give_up", "root_id": "r", "group_id": "g", "chord_id": "cb",
        "chord_task": "shop.total", "steps_dropped": 1}
    return FailureEvent(**{**fields, **overrides})


def test_chord_callback_event_names_the_member_but_not_its_message() -> None:
    callback = chord_callback_failure(event())
    assert callback is not None
    assert (callback.task_name, callback.task_id, callback.exception_type, callback.reason) == (
        "shop.total", "cb", "ChordError", "chord_member_failed")
    assert callback.message == "Dependency shop.rate m-2 raised KeyError"
    assert (callback.root_id, callback.group_id, callback.parent_id) == ("r", "g", "m-2")
    assert callback.steps_dropped == 0 and callback.replay is None
    assert chord_callback_failure(event(decision="retry", steps_dropped=0)) is None
    assert chord_callback_failure(event(steps_dropped=0)) is None  # fell back
    assert chord_callback_failure(event(chord_id=None)) is None


def test_mail_shows_the_workflow_only_for_a_workflow() -> None:
    mail = body_for(build_payload(event(root_task="shop.start", chain_position=3,
                                        chain_length=5, steps_dropped=2)))
    assert "Workflow:    r (started by shop.start)" in mail
    assert "Chain step:  3 of 5" in mail and "Dropped:     2 step(s)" in mail
    plain = body_for(build_payload(event(chord_id=None, steps_dropped=0, group_id=None)))
    assert "Workflow" not in plain and "Dropped" not in plain


def test_root_filter_prechecks_and_matches_the_root_id() -> None:
    flt = RecordFilter(roots=("r-1",))
    mine = json.dumps({"task_name": "a", "root_id": "r-1"}).encode()
    other = json.dumps({"task_name": "a", "root_id": "r-2", "parent_id": "r-1"}).encode()
    assert flt.prechecks and not flt.empty
    assert flt.may_match(mine) and not flt.may_match(b'{"root_id": "r-2"}')
    assert flt.matches(json.loads(mine)) and not flt.matches(json.loads(other))
