"""The states of the contract: beat down, missed, late, overlapping, failing, ok, waiting;
and the periodic settings' checks."""

from __future__ import annotations

import pytest
from celery import Celery

from telemetry_guard.integration.config import Settings
from telemetry_guard.periodic.states import beat_status, task_state
from telemetry_guard.periodic.store import BeatRecord, TaskRecord

NOW = 1_000_000.0
ALIVE = BeatRecord(heartbeat=NOW - 1, interval=10, started=NOW - 3600)
DOWN = BeatRecord(heartbeat=NOW - 31, interval=10, started=NOW - 3600)


def task(**fields: float) -> TaskRecord:
    values = {"interval": 60.0, "tolerance": 1.5, "monitored_since": NOW - 3600, **fields}
    return TaskRecord("t", "every 60s", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("record", "beat", "state"), [
    (task(), ALIVE, "missed"),                               # never ran since monitored
    (task(monitored_since=NOW - 30), ALIVE, "waiting"),
    (task(last_run=NOW - 89, last_success=NOW - 88), ALIVE, "ok"),
    (task(last_run=NOW - 91, last_success=NOW - 88), ALIVE, "missed"),
    (task(last_run=NOW - 91), DOWN, "beat down"),
    (task(last_run=NOW - 10, last_success=NOW - 9), DOWN, "ok"),  # not overdue yet
    (task(last_run=NOW - 10, last_start_delay=31.0), ALIVE, "late"),
    (task(last_run=NOW - 10, last_start_delay=29.0), ALIVE, "ok"),
    (task(last_run=NOW - 10, running=2), ALIVE, "overlapping"),
    (task(last_run=NOW - 10, last_overlap=NOW - 899), ALIVE, "overlapping"),
    (task(last_run=NOW - 10, last_overlap=NOW - 901), ALIVE, "ok"),
    (task(last_run=NOW - 10, last_success=NOW - 70, last_failure=NOW - 9), ALIVE, "failing"),
    (task(last_run=NOW - 10, last_success=NOW - 9, last_failure=NOW - 70), ALIVE, "ok"),
    (task(last_run=NOW - 10, last_failure=NOW - 9), ALIVE, "failing"),
])
def test_task_states(record: TaskRecord, beat: BeatRecord, state: str) -> None:
    """Each definition of the contract, at its edges."""
    assert task_state(record, beat, NOW) == state


def test_beat_status() -> None:
    """Down after three heartbeat intervals without one; never seen without any."""
    assert beat_status(ALIVE, NOW) == "alive"
    assert beat_status(BeatRecord(heartbeat=NOW - 29, interval=10), NOW) == "alive"
    assert beat_status(DOWN, NOW) == "down"
    assert beat_status(BeatRecord(), NOW) == "never seen"


def test_periodic_settings_defaults_and_checks() -> None:
    """Defaults of the contract; a tolerance of at most 1, a heartbeat of 0 s or a port out
    of range are errors naming the setting and where it came from."""
    app = Celery("s", broker="memory://", set_as_current=False)
    settings = Settings.from_app(app, {}, {})
    assert (settings.periodic_monitoring, settings.periodic_tolerance,
            settings.beat_heartbeat_interval, settings.beat_metrics_port) == (
        True, 1.5, 10.0, None)
    env = {"TELEMETRY_GUARD_PERIODIC_MONITORING": "false",
           "TELEMETRY_GUARD_PERIODIC_TOLERANCE": "2.5",
           "TELEMETRY_GUARD_BEAT_HEARTBEAT_INTERVAL": "0.5",
           "TELEMETRY_GUARD_BEAT_METRICS_PORT": "9809"}
    settings = Settings.from_app(app, {}, env)
    assert (settings.periodic_monitoring, settings.periodic_tolerance,
            settings.beat_heartbeat_interval, settings.beat_metrics_port) == (
        False, 2.5, 0.5, 9809)
    for name, bad in (("periodic_tolerance", 1), ("periodic_tolerance", "x"),
                      ("beat_heartbeat_interval", 0), ("beat_metrics_port", 70000)):
        with pytest.raises(ValueError, match=name):
            Settings.from_app(app, {name: bad}, {})
    app.conf.telemetry_guard_periodic_tolerance = 0.5
    with pytest.raises(ValueError, match="app.conf.telemetry_guard_periodic_tolerance"):
        Settings.from_app(app, {}, {})
    app.close()
