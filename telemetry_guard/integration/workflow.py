"""Workflow context: where a task stands in a Celery canvas (chain, group, chord).

Celery tells a worker the workflow's ``root_id`` and ``parent_id``, the ``group``, the
chord's callback and the chain's remaining steps; it does not tell the workflow's first
task's name, nor the chain's length. :func:`stamp_workflow` adds both to the headers of
every published task, so :func:`workflow_fields` can give each failure event its chain
position and the number of steps a give-up abandons.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from celery._state import get_current_task

from ..core.events import FailureEvent
from ..sinks.tracing import LINK_HEADER, SPAN_REMEMBERED, traceparent

#: Message header: the name of the workflow's first task.
ROOT_TASK_HEADER = "telemetry_guard_root_task"
#: Message header: the number of steps of the chain the task is a step of.
CHAIN_LENGTH_HEADER = "telemetry_guard_chain_length"
#: The ``reason`` of the failure event told for a chord callback a member's give-up fails.
CHORD_MEMBER_FAILED = "chord_member_failed"


def header(request: Any, name: str) -> Any:
    """A custom message header of a request (an attribute in the worker, else in
    ``request.headers``), or None."""
    value = getattr(request, name, None)
    if value is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, dict):
            value = headers.get(name)
    return value


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _callback_id(chord: Any) -> str | None:
    """The task id of a chord's callback signature (a dict once it crossed the broker)."""
    if not isinstance(chord, Mapping):
        return None
    options = chord.get("options")
    return options.get("task_id") if isinstance(options, Mapping) else None


def workflow_fields(request: Any, *, task_name: str, give_up: bool,
                    falls_back: bool = False) -> dict[str, Any]:
    """The ``FailureEvent`` fields of a request's workflow context (empty when there is
    none, or when the request cannot be read: telemetry never raises into a task)."""
    try:
        return _fields(request, task_name, give_up, falls_back)
    except Exception:
        return {}


def _fields(request: Any, task_name: str, give_up: bool, falls_back: bool) -> dict[str, Any]:
    task_id = getattr(request, "id", None)
    root_id = getattr(request, "root_id", None)
    chain = getattr(request, "chain", None) or ()
    callbacks = getattr(request, "callbacks", None) or ()
    chord = getattr(request, "chord", None)
    fields: dict[str, Any] = {}
    if root_id:
        fields["root_id"] = root_id
        fields["parent_id"] = getattr(request, "parent_id", None)
        root_task = header(request, ROOT_TASK_HEADER)
        if root_task is None and root_id == task_id:  # published by a process without us
            root_task = task_name
        fields["root_task"] = None if root_task is None else str(root_task)
    group_id = getattr(request, "group", None)
    if group_id:
        fields["group_id"] = group_id
    chord_id = _callback_id(chord)
    if chord_id:
        fields["chord_id"] = chord_id
        fields["chord_task"] = chord.get("task")
    length = _int(header(request, CHAIN_LENGTH_HEADER))
    if length is not None:
        fields["chain_length"] = length
        fields["chain_position"] = max(1, length - len(chain))
    if give_up and not falls_back:
        fields["steps_dropped"] = len(chain) + len(callbacks) + (1 if chord else 0)
    return fields


def chord_callback_failure(member: FailureEvent) -> FailureEvent | None:
    """The failure of a chord's callback that a member's give-up causes (Celery fails the
    callback with a ``ChordError`` and sends no signal for it), or None.

    Named after the member: its task, id and exception type, never its message.
    """
    if member.decision != "give_up" or not member.chord_id or member.steps_dropped <= 0:
        return None
    return replace(
        member, task_name=member.chord_task or "chord_callback", task_id=member.chord_id,
        attempt=1, max_retries=None, exception_type="ChordError",
        exception_module="celery.exceptions",
        message=(f"Dependency {member.task_name} {member.task_id} raised "
                 f"{member.exception_type}"),
        traceback="", delay_s=None, reason=CHORD_MEMBER_FAILED, expected=False, args=None,
        kwargs=None, parent_id=member.task_id, chain_position=None, chain_length=None,
        steps_dropped=0, exception=None, replay=None)


def _running_request() -> Any:
    """The request of the task running in this thread, or None."""
    task = get_current_task()
    return None if task is None else task.request_stack.top


def _next_chain_step(current: Any, name: Any, chain: Any) -> bool:
    """Whether a publish is Celery's tracer sending the step after ``current``."""
    remaining = getattr(current, "chain", None)
    return (bool(remaining) and len(chain or ()) == len(remaining) - 1
            and isinstance(remaining[-1], Mapping) and remaining[-1].get("task") == name)


def stamp_workflow(sender: Any = None, body: Any = None, headers: Any = None,
                   **_: Any) -> None:
    """``before_task_publish``: the workflow's first task's name, the chain's length and a
    link to the publishing task's span, in the headers (process-wide; never raises)."""
    if not isinstance(headers, dict):
        return
    try:
        current = _running_request()
        embedded = body[2] if isinstance(body, tuple) and len(body) == 3 else None
        chain = embedded.get("chain") if isinstance(embedded, dict) else None
        same_root = (current is not None and current.id is not None
                     and getattr(current, "root_id", None) == headers.get("root_id"))
        if ROOT_TASK_HEADER not in headers:
            root_task = header(current, ROOT_TASK_HEADER) if same_root else None
            headers[ROOT_TASK_HEADER] = root_task or sender
        if CHAIN_LENGTH_HEADER not in headers:
            length = None
            if same_root and (headers.get("id") == current.id
                              or _next_chain_step(current, sender, chain)):
                length = header(current, CHAIN_LENGTH_HEADER)
            elif chain:
                length = len(chain) + 1
            if length is not None:
                headers[CHAIN_LENGTH_HEADER] = length
        span = None if current is None else getattr(current, SPAN_REMEMBERED, None)
        link = None if span is None else traceparent(span)
        if link:  # replaces a link a retry copied from the previous attempt's headers
            headers[LINK_HEADER] = link
    except Exception:  # telemetry fails open: the publish goes on unstamped
        return
