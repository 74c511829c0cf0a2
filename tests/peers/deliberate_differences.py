"""Peer tests that fail with the guard on purpose, each with a one-line reason.

Suite (``celery``, ``otel-celery``, ``sentry-celery``) → guarded mode (``guard``,
``guarded_task``) → pytest node id, as the runner prints it → reason. A new failure listed
here is reported as deliberate and does not fail ``make test-peers``; a listed test that no
longer fails is reported as stale. Only design decisions belong here (GuardedTask retrying an
error plain Celery would not retry), never a bug waiting for its fix. For example::

    "sentry-celery": {
        "guarded_task": {
            "tests/integrations/celery/test_celery.py::test_name":
                "GuardedTask retries ConnectionError; plain Celery fails the task at once",
        },
    },
"""

from __future__ import annotations

#: The guard adds a ``task.gave_up`` span event next to the instrumentation's one
#: ``exception`` event; the test counts every event of the span (with only ``exception``
#: events counted, it passes in both modes).
_GAVE_UP_EVENT = ("the guard adds its task.gave_up span event beside the instrumentation's "
                  "single exception event; the test counts all span events")

DELIBERATE_DIFFERENCES: dict[str, dict[str, dict[str, str]]] = {
    "otel-celery": {
        "guard": {"tests/test_tasks.py::TestCeleryInstrumentation::test_task_raises":
                  _GAVE_UP_EVENT},
        "guarded_task": {"tests/test_tasks.py::TestCeleryInstrumentation::test_task_raises":
                         _GAVE_UP_EVENT},
    },
}
