"""A dead letter's message, decoded, and whether this app may send it again.

The ``replay`` payload is the original message (task, id, args, kwargs, options) as the
broker held it, unredacted; :meth:`Replay.refusal` says why the app must not send it
again (see :mod:`.dead` for the rules), and :func:`dead_row` is a ``dead list`` row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .stream_query import Entry, error_row

#: The notification task: its dead letters carry a payload, not a failure record.
NOTIFY_TASK = "telemetry_guard.notify"
#: Task names that are Celery's own (``celery.backend_cleanup``, ``celery.chord_unlock``, ...).
CELERY_BUILTIN_PREFIX = "celery."
#: The tasks an app's workers run, by name (None: the app's registry).
Tasks = Mapping[str, Any] | None


@dataclass(frozen=True)
class Replay:
    """A dead letter's message, decoded; ``problem`` says why it cannot be re-sent."""

    task: str | None
    task_id: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    problem: str | None = None

    @classmethod
    def of(cls, entry: Entry) -> Replay:
        """Decode the entry's ``replay`` field (kombu JSON, as the error-log sink wrote it)."""
        if not entry.replay_raw:
            return cls(None, None, [], {}, {}, "no replay payload")
        from kombu.utils.json import loads

        try:
            data = loads(entry.replay_raw)  # type: ignore[no-untyped-call]
        except Exception as exc:
            return cls(None, None, [], {}, {}, f"unreadable replay payload ({type(exc).__name__})")
        if not isinstance(data, dict):
            return cls(None, None, [], {}, {}, "unreadable replay payload")
        task, args, kwargs = data.get("task"), data.get("args", []), data.get("kwargs", {})
        options = data.get("options") if isinstance(data.get("options"), dict) else {}
        task_id = data.get("id") if isinstance(data.get("id"), str) else None
        problem = None
        if data.get("replayable") is False:
            problem = "arguments could not be stored"
        elif not isinstance(task, str) or not task:
            problem = "no task name"
        elif not isinstance(args, list) or not isinstance(kwargs, dict):
            problem = "malformed arguments"
        return cls(task if isinstance(task, str) else None, task_id,
                   args if isinstance(args, list) else [],
                   kwargs if isinstance(kwargs, dict) else {}, options or {}, problem)

    @property
    def replayable(self) -> bool:
        """Whether this message can be sent again (before asking the app)."""
        return self.problem is None

    def refusal(self, entry: Entry, app: Any, tasks: Tasks = None) -> str | None:
        """Why ``app`` (whose tasks are ``tasks``, default its registry) must not send this
        message again, or None when it may."""
        if self.problem is not None:
            return self.problem
        task = str(self.task)
        if task.startswith(CELERY_BUILTIN_PREFIX):
            return f"{task} is a Celery built-in task: never replayed"
        if task not in _tasks(app, tasks):
            return f"task {task} is not registered in this app"
        if entry.task is not None and entry.task != task:
            return f"replay names task {task} but the entry is filed under {entry.task}"
        if not entry.readable:
            return "the record is unreadable: cannot check the replay against it"
        if task == NOTIFY_TASK:
            return None
        record = entry.record
        if record.get("task_name") != task:
            return (f"replay names task {task} but the record is of task "
                    f"{record.get('task_name')}")
        record_id = record.get("task_id")
        if self.task_id is not None and record_id is not None and record_id != self.task_id:
            return f"replay names task id {self.task_id} but the record is of {record_id}"
        return None

    def send_options(self, app: Any, queue: str | None = None,
                     tasks: Tasks = None) -> dict[str, Any]:
        """``send_task`` options: ``queue`` when given, else the registered task's own queue
        (its ``send_options``, as the guard's notify task has, or its ``queue``; the app's
        ``task_routes`` and default queue apply as for any ``send_task``), and the task's
        priority, else the one the message had."""
        task = _tasks(app, tasks).get(self.task) if self.task else None
        out: dict[str, Any] = {}
        own = getattr(task, "send_options", None)
        own = own if isinstance(own, dict) else {}
        own_queue = own.get("queue", getattr(task, "queue", None))
        if queue:
            out["queue"] = queue
        elif isinstance(own_queue, str) and own_queue:
            out["queue"] = own_queue
        priority = own.get("priority", getattr(task, "priority", None))
        if not _is_priority(priority):
            priority = self.options.get("priority")
        if _is_priority(priority):
            out["priority"] = priority
        return out

    def queue_name(self, app: Any, queue: str | None = None,
                   tasks: Tasks = None) -> str | None:
        """The queue the app routes this message to (what ``send_task`` will do)."""
        if not self.task:
            return None
        try:
            route = app.amqp.router.route(
                self.send_options(app, queue, tasks), self.task, self.args, self.kwargs,
                task_type=_tasks(app, tasks).get(self.task))
            target = route.get("queue")
            return str(getattr(target, "name", target)) if target is not None else None
        except Exception:
            return queue


def _is_priority(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def registered_tasks(app: Any) -> Any:
    """The app's task registry, with the modules it imports (``imports``, ``include``,
    autodiscovery) loaded first, as a worker would load them."""
    if not getattr(app, "_telemetry_guard_tasks_loaded", False):
        try:
            app.loader.import_default_modules()
        except Exception:  # a module that fails to import: its tasks are not registered
            pass
        app._telemetry_guard_tasks_loaded = True
    return app.tasks


def dead_row(entry: Entry, *, full: bool = False, app: Any = None,
             tasks: Tasks = None) -> dict[str, Any]:
    """A ``dead list`` row: the redacted record, never the replay arguments."""
    row = error_row(entry, full=full)
    if not full and not entry.readable:  # dead list has no message column: say it here
        row["task"] = row["message"]
    replay = Replay.of(entry)
    problem = replay.problem if app is None else replay.refusal(entry, app, tasks)
    row["replayable"] = problem is None if full else ("yes" if problem is None else "no")
    if full:
        row["replay_problem"] = problem
    return row


def _tasks(app: Any, tasks: Tasks) -> Mapping[str, Any]:
    return registered_tasks(app) if tasks is None else tasks


class GuardTask(NamedTuple):
    """A task an app's guard registers on its workers, as far as a replay needs to know it."""

    name: str
    send_options: dict[str, Any]


def workers_tasks(app: Any, settings: Any) -> Mapping[str, Any]:
    """The tasks the app's workers run: its registry and, when its module made no guard,
    those a guard adds (``telemetry_guard.notify`` when e-mail is configured), which this
    process does not build a guard to register."""
    from ..integration.task_guard import guard_of

    tasks = registered_tasks(app)
    if (guard_of(app) is not None or not settings.email
            or NOTIFY_TASK in tasks):
        return tasks
    from ..notify.task import send_options

    notify = GuardTask(NOTIFY_TASK, send_options(app, settings.notification_queue))
    return {**tasks, NOTIFY_TASK: notify}
