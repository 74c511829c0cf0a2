"""The scrubber on Celery's own loggers, through the standard logging machinery."""

from __future__ import annotations

import io
import logging
import sys
import traceback
from collections.abc import Iterator

import pytest

from telemetry_guard.core.redact import Redactor
from telemetry_guard.integration.celery_logs import CeleryLogScrubber

TOKEN = "ghp_0123456789abcdefghijABCDEFGHIJ"


@pytest.fixture
def worker_request_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """``celery.worker.request`` with the scrubber installed and a text handler attached."""
    logger = logging.getLogger("celery.worker.request")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    scrubber = CeleryLogScrubber(Redactor().redact_text).install()
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        scrubber.uninstall()


def test_an_exception_argument_and_its_traceback_are_scrubbed(
        worker_request_log: tuple[logging.Logger, io.StringIO]) -> None:
    """``error('... %r', exc, exc_info=...)``: the repr and the traceback lose the token."""
    logger, stream = worker_request_log
    try:
        raise PermissionError(f"denied: api_key={TOKEN}")
    except PermissionError as exc:
        logger.error("Task handler raised error: %r", exc, exc_info=sys.exc_info())
    text = stream.getvalue()
    assert "Task handler raised error: PermissionError('denied: api_key=[REDACTED]')" in text
    assert "Traceback (most recent call last)" in text and TOKEN not in text


def test_a_record_without_failure_content_is_left_as_it_was(
        worker_request_log: tuple[logging.Logger, io.StringIO]) -> None:
    """An INFO line with no exception is not touched (success lines cost nothing extra)."""
    logger, stream = worker_request_log
    logger.setLevel(logging.INFO)
    try:
        logger.info("Task %s[%s] received: token=%s", "t.x", "id-1", "kept-as-is")
    finally:
        logger.setLevel(logging.NOTSET)
    assert "token=kept-as-is" in stream.getvalue()


def test_uninstalled_scrubber_no_longer_touches_records() -> None:
    """``uninstall`` detaches from every Celery task logger."""
    scrubber = CeleryLogScrubber(Redactor().redact_text).install().install()
    scrubber.uninstall()
    for name in scrubber.loggers:
        assert scrubber not in logging.getLogger(name).filters


def test_celerys_failure_context_is_scrubbed_once_and_its_identifiers_kept() -> None:
    """``raised unexpected``: Celery's own formatted traceback becomes the record's scrubbed
    ``exc_text`` (scrubbed once, not formatted again); the task's name and id stay as sent."""
    logger = logging.getLogger("celery.app.trace")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    seen: list[str] = []
    redactor = Redactor()

    def scrub_traceback(text: str) -> str:
        seen.append(text)
        return redactor.redact_tail(text)

    scrubber = CeleryLogScrubber(redactor.redact_text, scrub_traceback).install()
    logger.addHandler(handler)
    try:
        try:
            raise PermissionError(f"denied: api_key={TOKEN}")
        except PermissionError as exc:
            context = {"hostname": "w@h", "id": "id-1", "name": "t.secretive",
                       "exc": repr(exc), "traceback": "".join(traceback.format_exception(exc)),
                       "args": f"('{TOKEN}',)", "kwargs": "{}", "description": "raised unexpected",
                       "internal": False}
            logger.error("Task %(name)s[%(id)s] %(description)s: %(exc)s", context,
                         exc_info=sys.exc_info(), extra={"data": context})
    finally:
        logger.removeHandler(handler)
        scrubber.uninstall()
    text = stream.getvalue()
    assert "Task t.secretive[id-1] raised unexpected: PermissionError(" in text
    assert "Traceback (most recent call last)" in text and "raise PermissionError" in text
    assert TOKEN not in text
    assert len(seen) == 1 and seen[0] == context["traceback"].rstrip("\n")
