"""The structlog context of a running task.

Inside a task, ``task_id``, ``task_name`` and, where a span is active, ``trace_id`` and
``span_id`` are bound with ``structlog.contextvars``, so the application's own log lines
carry them (with ``merge_contextvars`` among its processors, as structlog's default set-up
has), and are restored to what they were when the task ends.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Any

import structlog

from ..sinks.tracing import current_ids, span_ids

Tokens = Mapping[str, contextvars.Token[Any]]

#: Tokens of the bindings made when each running task started, by task id.
_BOUND: dict[str, Tokens] = {}


def bind_task(task_id: str | None, task_name: str, span: Any) -> None:
    """Bind the task's ids (and those of ``span``) until :func:`unbind_task`."""
    if not task_id:
        return
    _BOUND[task_id] = structlog.contextvars.bind_contextvars(
        **_ids(task_id, task_name, span_ids(span)))


def unbind_task(task_id: str | None) -> None:
    """Restore what :func:`bind_task` replaced for this task."""
    tokens = _BOUND.pop(task_id, None) if task_id else None
    if tokens:
        restore(tokens)


def bind_run(task_id: str | None, task_name: str, span: Any) -> Tokens:
    """A GuardedTask's run: bind the task's ids and those of its span in one go.

    ``span``: the run's span; None when the guard opens none, and then the active span's
    ids (an instrumentation's) are bound, if any. The task's ids stay bound until
    :func:`unbind_task` (``task_postrun``, after Celery's own success handling and log
    line); the span's ids are given back as the tokens :func:`restore` takes at the end.
    """
    values = _ids(task_id, task_name, span_ids(span) if span is not None else current_ids())
    if not values:
        return {}
    tokens = structlog.contextvars.bind_contextvars(**values)
    if not task_id:
        return tokens
    _BOUND[task_id] = {"task_id": tokens["task_id"], "task_name": tokens["task_name"]}
    return ({"trace_id": tokens["trace_id"], "span_id": tokens["span_id"]}
            if "trace_id" in tokens else {})


def _ids(task_id: str | None, task_name: str,
         trace_ids: tuple[str | None, str | None]) -> dict[str, Any]:
    """The task's ids (when it has an id) and the span's (when it has a valid one)."""
    values: dict[str, Any] = {"task_id": task_id, "task_name": task_name} if task_id else {}
    trace_id, span_id = trace_ids
    if trace_id is not None:
        values["trace_id"] = trace_id
        values["span_id"] = span_id
    return values


def restore(tokens: Tokens) -> None:
    """Put back the values bound before ``tokens`` were made."""
    try:
        structlog.contextvars.reset_contextvars(**tokens)
    except ValueError:  # made in another context (a task ending in another thread)
        structlog.contextvars.unbind_contextvars(*tokens)
