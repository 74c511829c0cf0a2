"""Scrubs Celery's own task-failure and retry log records before any handler sees them.

A worker logs every failure itself (``celery.app.trace``: ``Task x[id] raised unexpected:
OSError('... token=...')`` with the traceback, the task's args and kwargs; ``celery.worker.request``
for lost children and retries). That log is what log search indexes, so with the guard installed
those records pass through the guard's scrubber: the message arguments, the ``data`` extra Celery
attaches, and the traceback text (Celery's own, scrubbed once for both; ``exc_info`` is then
dropped so no handler formats the raw exception again). Records without failure content,
such as ``succeeded in`` lines, are left alone. ``telemetry_guard_redact_celery_logs =
False`` turns this off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

#: The Celery loggers that print task failures and retries.
CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.worker.request")

#: Fields of Celery's log context that name the task, never carry its data: not scrubbed.
CELERY_IDENTIFIERS = frozenset({"hostname", "id", "name", "description", "internal"})

_FORMATTER = logging.Formatter()


class _Scrubbed:
    """An argument shown through ``%s`` and ``%r`` as scrubbed text (an exception, say)."""

    __slots__ = ("_str", "_repr")

    def __init__(self, as_str: str, as_repr: str) -> None:
        self._str, self._repr = as_str, as_repr

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return self._repr


class CeleryLogScrubber(logging.Filter):
    """A logger filter: scrubs Celery's failure and retry records; never drops one."""

    def __init__(self, scrub: Callable[[str], str],
                 scrub_traceback: Callable[[str], str] | None = None,
                 loggers: tuple[str, ...] = CELERY_TASK_LOGGERS) -> None:
        super().__init__()
        self.scrub = scrub
        #: Tracebacks keep their end when they are cut; by default the same as ``scrub``.
        self.scrub_traceback = scrub_traceback or scrub
        self.loggers = loggers

    def install(self) -> CeleryLogScrubber:
        """Attach to Celery's task loggers, replacing the scrubber of an earlier guard
        (one per process: the latest guard's settings win)."""
        for name in self.loggers:
            logger = logging.getLogger(name)
            for old in [f for f in logger.filters
                        if isinstance(f, CeleryLogScrubber) and f is not self]:
                logger.removeFilter(old)
            if self not in logger.filters:
                logger.addFilter(self)
        return self

    def uninstall(self) -> None:
        """Detach from Celery's task loggers."""
        for name in self.loggers:
            logging.getLogger(name).removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if _carries_failure(record):
                self._scrub_record(record)
        except Exception:  # never lose a log line to the scrubber
            record.exc_info = None
        return True

    def _scrub_record(self, record: logging.LogRecord) -> None:
        args, data = record.args, getattr(record, "data", None)
        traceback = None
        if isinstance(args, dict):
            traceback = self._traceback_of(record, args)
            scrubbed = {key: self._field(key, value, traceback) for key, value in args.items()}
            record.args = scrubbed  # type: ignore[assignment]
            if data is args:
                record.data = scrubbed
        elif isinstance(args, tuple):
            record.args = tuple(self._value(value) for value in args)
        elif isinstance(record.msg, str):
            record.msg = self.scrub(record.msg)
        if isinstance(data, dict) and data is not args:
            record.data = {key: self._field(key, value, None) for key, value in data.items()}
        if traceback is not None:
            record.exc_text, record.exc_info = traceback, None
        elif record.exc_info:
            text = record.exc_text or _FORMATTER.formatException(record.exc_info)
            record.exc_text, record.exc_info = self.scrub_traceback(text), None
        elif record.exc_text:
            record.exc_text = self.scrub_traceback(record.exc_text)

    def _traceback_of(self, record: logging.LogRecord, context: dict[str, Any]) -> str | None:
        """The traceback Celery already formatted (``context["traceback"]``), scrubbed once
        for both the context and the record's ``exc_text``; None when it has none."""
        text = context.get("traceback")
        if not (record.exc_info and not record.exc_text and isinstance(text, str) and text):
            return None
        return self.scrub_traceback(text.rstrip("\n"))

    def _field(self, key: str, value: Any, traceback: str | None) -> Any:
        if key in CELERY_IDENTIFIERS:
            return value
        if key == "traceback" and traceback is not None:
            return traceback
        return self._value(value)

    def _value(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return self.scrub(value)
        return _Scrubbed(self.scrub(_text(value, str)), self.scrub(_text(value, repr)))


def _carries_failure(record: logging.LogRecord) -> bool:
    """Whether ``record`` can hold a failure's text (not a ``received``/``succeeded`` line)."""
    if record.levelno >= logging.WARNING or record.exc_info or record.exc_text:
        return True
    args = record.args
    if isinstance(args, dict):
        return "exc" in args
    return isinstance(args, tuple) and any(isinstance(a, BaseException) for a in args)


def _text(value: Any, show: Callable[[Any], str]) -> str:
    try:
        return show(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
