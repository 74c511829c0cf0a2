"""The pure side of the errors/dead CLI: time windows, stream IDs, filters, rows, replays."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from celery import Celery
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.utils.json import dumps as kombu_dumps

from telemetry_guard.cli import main
from telemetry_guard.cli.replay import Replay, dead_row
from telemetry_guard.cli.stream_query import (
    MAX_SEQ,
    SEVERITIES,
    Entry,
    FailureCounts,
    RecordFilter,
    Window,
    check_id,
    error_row,
    iso,
    line_for,
    next_id,
    parse_duration,
    parse_when,
    previous_id,
    severities_from,
)
from telemetry_guard.stores.redis_client import mask_url

NOW = 1_714_567_890.0


def entry(record: dict[str, object], entry_id: str = "1714567890123-0",
          replay: object = None) -> Entry:
    """An entry whose raw record is written the way the error-log sink writes it."""
    raw = None if replay is None else (replay if isinstance(replay, bytes)
                                       else str(kombu_dumps(replay)).encode())
    return Entry(entry_id, json.dumps(record).encode(), raw)


RECORD = {"task_name": "shop.charge", "task_id": "abc", "severity": "high",
          "decision": "give_up", "exception_type": "CardDeclined",
          "exception_module": "shop.errors", "message": "Card declined for order 7",
          "timestamp": NOW, "kwargs": {"token": "[REDACTED]"}}


# -- time ------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("1w", 604800),
    ("1h30m", 5400), ("1.5h", 5400), ("10M", 600), (" 2d ", 172800)])
def test_parse_duration_reads_units_and_sums(text: str, seconds: float) -> None:
    """Durations take s/m/h/d/w units, decimals, and sums such as 1h30m."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "h", "5x", "-5m", "5m junk", "1h 2"])
def test_parse_duration_rejects_anything_else(text: str) -> None:
    """A number without a unit, an unknown unit or trailing junk is not a duration."""
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_parse_when_reads_durations_as_time_ago() -> None:
    """``1h`` means an hour before now; ``now`` means now."""
    assert parse_when("1h", now=NOW) == NOW - 3600
    assert parse_when("now", now=NOW) == NOW


@pytest.mark.parametrize("text", ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00+00:00",
                                  "2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00",
                                  "2024-05-01 12:00:00"])
def test_parse_when_reads_iso_8601_with_naive_times_as_utc(text: str) -> None:
    """ISO 8601 with Z, an offset, or no zone (read as UTC, as every time is shown)."""
    expected = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc).timestamp()
    assert parse_when(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["bogus", "yesterday", "2024-13-01", "5", ""])
def test_parse_when_rejects_malformed_times_with_a_hint(text: str) -> None:
    """A malformed time says which forms are accepted."""
    with pytest.raises(ValueError, match="30s, 5m, 1h, 2d"):
        parse_when(text, now=NOW)


def test_window_maps_times_to_millisecond_stream_ids() -> None:
    """--since/--until become the XREVRANGE bounds in milliseconds; none: the stream's ends."""
    window = Window.parse("1h", "2024-05-01T12:00:00Z", now=NOW)
    assert window.lower == str(int((NOW - 3600) * 1000))
    assert window.upper == str(int(dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)
                                   .timestamp() * 1000))
    assert (Window().lower, Window().upper) == ("-", "+")


def test_window_refuses_since_after_until() -> None:
    """A window that ends before it starts is a usage error, not an empty answer."""
    with pytest.raises(ValueError, match="after --until"):
        Window.parse("5m", "1h", now=NOW)


def test_iso_prints_utc_to_the_second() -> None:
    """Times are shown as ISO 8601 UTC with a Z."""
    assert iso(dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc).timestamp() + 0.7) \
        == "2024-05-01T12:00:00Z"
    assert iso(None) is None


# -- stream IDs ------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1714567890123-0", "1714567890123", " 5-1 "])
def test_check_id_accepts_stream_ids(text: str) -> None:
    """Full and millisecond-only stream IDs are accepted."""
    assert check_id(text) == text.strip()


@pytest.mark.parametrize("text", ["abc", "1-2-3", "-1", "1-", "$", "+"])
def test_check_id_rejects_anything_else(text: str) -> None:
    """Anything that is not a stream ID is a usage error, never sent to Redis."""
    with pytest.raises(ValueError, match="not an entry id"):
        check_id(text)


def test_previous_and_next_id_step_over_sequence_and_millisecond_edges() -> None:
    """Exclusive paging bounds that work on every Redis version."""
    assert previous_id("5-3") == "5-2"
    assert previous_id("5-0") == f"4-{MAX_SEQ}"
    assert previous_id("0-0") is None
    assert next_id("5-3") == "5-4"
    assert next_id(f"5-{MAX_SEQ}") == "6-0"


# -- filters ---------------------------------------------------------------------------
def test_severities_combine_exact_and_minimum_as_an_intersection() -> None:
    """--severity is exact, --min-severity is that and above; together, both must hold."""
    assert severities_from() is None
    assert severities_from(min_severity="high") == {"high", "critical"}
    assert severities_from(["LOW", "critical"]) == {"low", "critical"}
    assert severities_from(["low", "critical"], "medium") == {"critical"}
    with pytest.raises(ValueError, match="unknown severity"):
        severities_from(["severe"])


@pytest.mark.parametrize(("flt", "wanted"), [
    (RecordFilter(), True),
    (RecordFilter(tasks=("shop.charge",)), True),
    (RecordFilter(tasks=("shop.*",)), True),
    (RecordFilter(tasks=("shop.ship",)), False),
    (RecordFilter(tasks=("shop",)), False),
    (RecordFilter(severities=frozenset({"high", "critical"})), True),
    (RecordFilter(severities=frozenset({"low"})), False),
    (RecordFilter(exceptions=("CardDeclined",)), True),
    (RecordFilter(exceptions=("shop.errors.CardDeclined",)), True),
    (RecordFilter(exceptions=("other.CardDeclined",)), False),
    (RecordFilter(grep="CARD declined"), True),
    (RecordFilter(grep="carddecl"), True),
    (RecordFilter(grep="token"), False),  # only message, exception and task are searched
])
def test_record_filter_matches_and_its_precheck_agrees(flt: RecordFilter, wanted: bool) -> None:
    """Each filter decides on the parsed record; the raw pre-check never rejects a match."""
    e = entry(RECORD)
    assert flt.matches(e.record) is wanted
    if wanted:
        assert flt.may_match(e.raw)


def test_precheck_rejects_without_parsing() -> None:
    """A record lacking the quoted task name or severity is rejected on its raw bytes."""
    raw = json.dumps({**RECORD, "task_name": "shop.ship", "severity": "low"}).encode()
    assert not RecordFilter(tasks=("shop.charge",)).may_match(raw)
    assert not RecordFilter(severities=frozenset({"high"})).may_match(raw)
    assert not RecordFilter(grep="refund").may_match(raw)


TEXT = st.text(alphabet=st.sampled_from(list('abcAB.K_"\\ İßé\n\u212a-')), max_size=12)


@settings(max_examples=300, deadline=None)
@given(task=TEXT, message=TEXT, exc=TEXT, severity=st.sampled_from(SEVERITIES),
       want_task=TEXT, want_exc=TEXT, grep=TEXT,
       floor=st.sampled_from((None, *SEVERITIES)))
def test_precheck_is_never_stricter_than_the_filter(
        task: str, message: str, exc: str, severity: str, want_task: str, want_exc: str,
        grep: str, floor: str | None) -> None:
    """Whatever the text (quotes, escapes, non-ASCII case folding), a match passes the pre-check."""
    record = {"task_name": task, "message": message, "exception_type": exc,
              "exception_module": "m", "severity": severity}
    raw = json.dumps(record).encode()
    for flt in (RecordFilter(tasks=(want_task or task,)),
                RecordFilter(exceptions=(want_exc or exc,)),
                RecordFilter(grep=grep or None),
                RecordFilter(tasks=(task,), severities=severities_from(min_severity=floor),
                             grep=grep[:3] or None)):
        if flt.matches(record):
            assert flt.may_match(raw), flt


def test_select_parses_only_what_passes_the_precheck() -> None:
    """Entries failing the pre-check are never parsed."""
    other = entry({**RECORD, "task_name": "shop.ship"}, "2-0")
    kept = list(RecordFilter(tasks=("shop.charge",)).select([entry(RECORD, "1-0"), other]))
    assert [e.id for e in kept] == ["1-0"]
    assert other._record is None


# -- rows ------------------------------------------------------------------------------
def test_error_row_has_the_table_columns_and_full_rows_the_whole_record() -> None:
    """Table rows use short column names; JSON rows are id, time and the stored record."""
    row = error_row(entry(RECORD))
    assert row == {"id": "1714567890123-0", "time": iso(NOW), "task": "shop.charge",
                   "severity": "high", "exception": "CardDeclined", "decision": "give_up",
                   "message": "Card declined for order 7"}
    assert error_row(entry(RECORD), full=True) == {"id": "1714567890123-0", "time": iso(NOW),
                                                   **RECORD}


def test_entry_time_falls_back_to_the_payload_time_then_the_stream_id() -> None:
    """Notification payloads carry an ISO time; a record without either uses its entry ID."""
    assert entry({"time": "2024-05-01T12:00:00.000+00:00"}).timestamp == \
        dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc).timestamp()
    assert entry({}, "1714567890123-4").timestamp == 1714567890.123


def test_unparsable_record_is_shown_not_raised() -> None:
    """A corrupt entry becomes a marker record, and its row says it is unreadable."""
    e = Entry("1-0", b"{not json")
    assert e.record == {"_unreadable": "not JSON (JSONDecodeError)"} and not e.readable
    assert not RecordFilter(tasks=("x",)).matches(e.record)
    assert error_row(e)["message"] == "unreadable record (not JSON (JSONDecodeError))"


def test_a_record_nested_fifty_thousand_deep_is_unreadable_not_a_recursion_error() -> None:
    """json.loads raising RecursionError marks the record; its row prints."""
    e = Entry("1-0", b"[" * 50_000 + b"]" * 50_000)
    assert e.record == {"_unreadable": "nested too deep"}
    assert error_row(e, full=True)["unreadable"] == "unreadable record (nested too deep)"


def test_the_entry_id_wins_over_a_record_field_named_id_or_time() -> None:
    """A record's own ``id``/``time`` are kept as ``record_id``/``record_time``."""
    row = error_row(entry({**RECORD, "id": "forged", "time": "then"}), full=True)
    assert (row["id"], row["time"]) == ("1714567890123-0", iso(NOW))
    assert (row["record_id"], row["record_time"]) == ("forged", "then")


def test_count_by_groups_and_sorts_by_count() -> None:
    """Stats count task × exception × severity, most frequent first, first/last by entry ID."""
    records = [entry(RECORD, f"{int(NOW) + i}000-0") for i in (2, 0, 1)]
    records.append(entry({**RECORD, "severity": "low"}, f"{int(NOW)}000-0"))
    counts = FailureCounts()
    for record in records:
        counts.add_entry(record)
    rows = counts.rows()
    assert [(r["severity"], r["count"]) for r in rows] == [("high", 3), ("low", 1)]
    assert (rows[0]["first"], rows[0]["last"]) == (iso(NOW), iso(NOW + 2))


def test_counts_merge_groups_counted_elsewhere() -> None:
    """Groups counted inside Redis page by page add up with entries counted here."""
    counts = FailureCounts()
    counts.add(("t", "E", "low"), 5, NOW, NOW + 10)
    counts.add(("t", "E", "low"), 2, NOW - 5, NOW + 1)
    counts.add_entry(entry({"task_name": "t", "exception_type": "E", "severity": "low"},
                           f"{int(NOW) + 20}000-0"))
    [row] = counts.rows()
    assert (row["count"], row["first"], row["last"]) == (8, iso(NOW - 5), iso(NOW + 20))


def test_line_for_cuts_long_cells() -> None:
    """Streaming output keeps its columns; long cells end with an ellipsis."""
    line = line_for({"a": "x" * 10, "b": None}, {"a": 5, "b": 3})
    assert line == "xxxx…  -"


def test_mask_url_hides_the_password() -> None:
    """Redis URLs in error messages never show a password."""
    assert mask_url("redis://:s3cret@host:6380/0") == "redis://***@host:6380/0"
    assert mask_url("redis://user:s3cret@host/1") == "redis://***@host/1"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"


# -- dead letters ----------------------------------------------------------------------
@pytest.fixture
def shop() -> Celery:
    """An app (never connected) that registers shop.charge, routed by ``task_routes``."""
    app = Celery("shop", broker="memory://", set_as_current=False)
    app.conf.update(task_default_queue="default",
                    task_routes={"shop.charge": {"queue": "payments"}})
    app.task(name="shop.charge", shared=False)(_charge)
    app.task(name="telemetry_guard.notify", queue="telemetry_guard.notifications",
             priority=9, shared=False)(_notify)
    return app


def _charge(order: int) -> None:
    """Charge an order."""


def _notify(payload: dict[str, object]) -> None:
    """Send a notification."""


def test_replay_decodes_the_original_message(shop: Celery) -> None:
    """The replay payload gives task, id and arguments, kombu types restored; the queue is
    the app's routing, never the one stored in the stream, unless --queue says so."""
    when = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    e = entry(RECORD, replay={
        "task": "shop.charge", "id": "abc", "args": [7, when], "kwargs": {"token": "t0k"},
        "options": {"queue": "admin-queue", "exchange": "admin", "priority": 3}})
    replay = Replay.of(e)
    assert replay.replayable and replay.refusal(e, shop) is None
    assert (replay.task, replay.task_id, replay.args, replay.kwargs) == (
        "shop.charge", "abc", [7, when], {"token": "t0k"})
    assert replay.send_options(shop) == {"priority": 3}
    assert replay.queue_name(shop) == "payments"
    assert replay.send_options(shop, "manual") == {"queue": "manual", "priority": 3}
    assert replay.queue_name(shop, "manual") == "manual"


def test_notification_dead_letters_replay_on_the_notify_tasks_own_queue(shop: Celery) -> None:
    """notify.py's dead letters go to the notify task's own queue and priority."""
    e = entry({"task_name": "x"}, replay=json.dumps(
        {"task": "telemetry_guard.notify", "args": [{"task_name": "x"}], "kwargs": {}}).encode())
    replay = Replay.of(e)
    assert replay.refusal(e, shop) is None
    assert replay.send_options(shop) == {"queue": "telemetry_guard.notifications",
                                         "priority": 9}
    assert replay.queue_name(shop) == "telemetry_guard.notifications"


@pytest.mark.parametrize(("record", "replay", "refusal"), [
    (RECORD, {"task": "shop.refund", "id": "abc", "args": [], "kwargs": {}},
     "task shop.refund is not registered in this app"),
    ({**RECORD, "task_name": "celery.backend_cleanup"},
     {"task": "celery.backend_cleanup", "id": "abc", "args": [], "kwargs": {},
      "options": {"queue": "admin-queue"}},
     "celery.backend_cleanup is a Celery built-in task: never replayed"),
    ({**RECORD, "task_name": "shop.refund"},
     {"task": "shop.charge", "id": "abc", "args": [], "kwargs": {}},
     "replay names task shop.charge but the record is of task shop.refund"),
    (RECORD, {"task": "shop.charge", "id": "other", "args": [], "kwargs": {}},
     "replay names task id other but the record is of abc"),
])
def test_a_replay_the_app_does_not_know_or_that_contradicts_its_record_is_refused(
        shop: Celery, record: dict[str, object], replay: dict[str, object],
        refusal: str) -> None:
    """Unregistered tasks, Celery's built-ins and mismatched records are refused with why."""
    e = entry(record, replay=replay)
    assert Replay.of(e).refusal(e, shop) == refusal
    assert dead_row(e, app=shop)["replayable"] == "no"
    assert dead_row(e, full=True, app=shop)["replay_problem"] == refusal


@pytest.mark.parametrize(("replay", "problem"), [
    (None, "no replay payload"),
    (b"{broken", "unreadable"),
    ({"task": "x", "id": "1", "replayable": False, "repr": "..."}, "could not be stored"),
    ({"args": [], "kwargs": {}}, "no task name"),
    ({"task": "x", "args": "oops", "kwargs": {}}, "malformed arguments"),
])
def test_unreplayable_dead_letters_say_why(replay: object, problem: str) -> None:
    """A dead letter that cannot be re-sent is marked, with the reason."""
    e = entry(RECORD, replay=replay)
    decoded = Replay.of(e)
    assert not decoded.replayable
    assert problem in (decoded.problem or "")
    assert dead_row(e)["replayable"] == "no"


def test_dead_rows_never_carry_the_replay_arguments() -> None:
    """``dead list`` shows the redacted record, never the unredacted replay arguments."""
    e = entry(RECORD, replay={"task": "shop.charge", "id": "abc", "args": [],
                              "kwargs": {"token": "t0k-secret"}})
    for full in (False, True):
        assert "t0k-secret" not in json.dumps(dead_row(e, full=full))


# -- usage errors, no Redis needed -----------------------------------------------------
@pytest.mark.parametrize(("argv", "message"), [
    (["errors", "list", "--since", "bogus"], "not a time: 'bogus'"),
    (["errors", "list", "--since", "5m", "--until", "1h"], "is after --until"),
    (["errors", "list", "--min-severity", "severe"], "unknown severity 'severe'"),
    (["errors", "show", "not-an-id"], "not an entry id"),
    (["dead", "show", "$"], "not an entry id"),
    (["dead", "replay"], "say which dead letters to replay"),
    (["dead", "purge"], "say which dead letters to purge"),
    (["-A", "tg_no_such_module_xyz", "errors", "list"], "cannot import app module"),
    (["errors", "list"], "no app given"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    """Bad input ends with one ``Error:`` line and exit code 2, never a traceback."""
    result = CliRunner().invoke(main, argv, env={"TELEMETRY_GUARD_APP": None})
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith("Error: ") and message in result.output
    assert "Traceback" not in result.output
