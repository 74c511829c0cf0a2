"""Tests for telemetry_guard.core.tracebacks: every printed piece is scrubbed before any cut."""

from __future__ import annotations

import sys

from sentry_sdk.utils import event_from_exception

from telemetry_guard.core.redact import REDACTED, Redactor
from telemetry_guard.core.tracebacks import format_traceback
from telemetry_guard.sinks.sentry_redaction import redact_event

SECRET = "hunter2-canary-5b1e"


def _fail_with_secret_in_source() -> None:
    dsn = "postgres://app:hunter2-canary-5b1e@db/prod"; raise ValueError(f"to {dsn}")  # noqa: E702


def _raised() -> BaseException:
    try:
        try:
            _fail_with_secret_in_source()
        except ValueError as exc:
            error = RuntimeError(f"retry failed: token={SECRET}")
            error.add_note(f"while calling with password={SECRET}")
            raise error from exc
    except RuntimeError as exc:
        return exc
    raise AssertionError("unreachable")


def test_source_lines_messages_causes_and_notes_are_scrubbed() -> None:
    """The source line, both messages of the chain and the note are printed, all scrubbed."""
    text = format_traceback(_raised(), Redactor().redact_text)
    assert SECRET not in text
    assert 'dsn = "postgres://app:[REDACTED]@db/prod"' in text  # the source line, scrubbed
    assert "while calling with password=[REDACTED]" in text  # the note is shown
    assert "RuntimeError: retry failed: token=[REDACTED]" in text
    assert "direct cause" in text


def test_format_traceback_scrubs_by_default() -> None:
    """Without an explicit scrubber the default Redactor's scrubber is used."""
    assert SECRET not in format_traceback(_raised())


def test_a_url_straddling_the_traceback_cut_never_leaks() -> None:
    """A long message is scrubbed before the traceback is cut, wherever the cut falls."""
    error = ValueError("x" * 300 + f" redis://:{SECRET}/{SECRET}@cache " + "y" * 10)
    redactor = Redactor(max_value_chars=40)
    for limit in range(20, 120, 7):
        tail = Redactor(max_value_chars=limit)
        assert SECRET[:8] not in tail.truncate_head(format_traceback(error, redactor.redact_text))
        assert SECRET[:8] not in tail.redact_tail(f"Traceback ...\nValueError: {error}\n")


def test_sentry_context_lines_get_the_same_scrubbing_as_traceback_source_lines() -> None:
    """Sentry's frames are scrubbed by the same method: the same line comes out the same."""
    exc = _raised()
    redactor = Redactor()
    event, _ = event_from_exception((type(exc), exc, exc.__traceback__),
                                    client_options={"include_source_context": True,
                                                    "include_local_variables": True,
                                                    "max_value_length": 1024})
    redact_event(event, redactor)
    text = repr(event)
    assert SECRET not in text and REDACTED in text
    lines = [frame.get("context_line") for value in event["exception"]["values"]
             for frame in value["stacktrace"]["frames"]]
    source = [line.strip() for line in lines if line and "postgres://" in line]
    assert source and all(f"    {line}\n" in format_traceback(exc, redactor.redact_text)
                          for line in source)
    assert sys.exc_info() == (None, None, None)
