"""The alerts on periodic tasks and Celery beat: missed, late, overlapping and failing runs,
and beat down (the states of :mod:`.periodic_promql`, per grouping labels and task).

A stopped beat sends nothing, so every task would look missed: while beat is down, the
missed, late and failing alerts are held back and TelemetryGuardBeatDown says it once.
"""

from __future__ import annotations

from .periodic_promql import (
    BEAT_DOWN_INTERVALS,
    HEARTBEAT_INTERVAL,
    INTERVAL,
    LAST_SUCCESS,
    MISSED_AFTER,
    OVERLAP_WINDOW,
    OVERLAP_WINDOW_WORDS,
    OVERLAPS,
    RUNNING,
    TOLERANCE,
    PeriodicStates,
)
from .rule_model import Rule, RuleWriter

PERIODIC_DASHBOARD = "telemetry-guard-periodic"


def periodic_alerts(writer: RuleWriter) -> list[Rule]:
    """The five periodic alerts for ``writer``'s config."""
    states = PeriodicStates(writer.config.group_by)
    beat_up = f"unless {writer.on()} (\n{_indented(states.beat_down())}\n)"

    def value(template: str, show: str, otherwise: str = "") -> str:
        return shown(writer, template, show, otherwise, "task")

    interval = value(f"max({INTERVAL}{{%s}})", "humanizeDuration")
    tolerance = value(f"max({TOLERANCE}{{%s}})", 'printf "%.4g"')
    deadline = value(f"max({MISSED_AFTER}{{%s}})",
                     'humanizeTimestamp | printf " (its deadline: %s)"')
    return [
        Rule(alert="TelemetryGuardPeriodicTaskMissed",
             comment="-- Periodic tasks " + "-" * 60 + "\nPast the task's deadline (the "
                     "first due time after the last run, or after\nmonitoring first saw a "
                     "task that never ran, plus (tolerance - 1) x that slot's gap;\nwithout "
                     "the deadline series: no run within interval x tolerance), while beat "
                     "is up.\nThe `for:` outlasts beat-down detection (3 heartbeat "
                     "intervals, 30s by default),\nso a stopped beat shows as "
                     "TelemetryGuardBeatDown, not as every task missed.",
             expr=writer.series(f"{states.missed()}\n{beat_up}"),
             for_="5m", severity="critical",
             summary="Periodic task {{ $labels.task }} missed its schedule",
             description=(
                 "{{ $labels.task }} has not started for {{ $value | humanizeDuration }}\n"
                 "(since its last run, or since monitoring first saw it if it never ran).\n"
                 f"It is due every {interval}\nwith a tolerance of {tolerance}: it is "
                 "missed once the next due time after its last run\nplus (tolerance - 1) x "
                 f"that slot's gap has passed{deadline}.\nBeat is up: the run was not sent, "
                 "not delivered or not started;\n`telemetry-guard periodic` shows every "
                 "periodic task's state."),
             dashboard=PERIODIC_DASHBOARD, dashboard_vars=("task",)),
        Rule(alert="TelemetryGuardPeriodicTaskLate",
             comment="The last run started more than interval x (tolerance - 1) after beat "
                     "sent it:\nthe queue is backed up or short of workers. Held back while "
                     "beat is down.",
             expr=writer.series(f"{states.late()}\n{beat_up}"),
             for_="5m", severity="warning",
             summary="Periodic task {{ $labels.task }} starts late",
             description=(
                 "The last run of {{ $labels.task }} started "
                 "{{ $value | humanizeDuration }} after beat\nsent it. It is due every "
                 f"{interval}\nwith a tolerance of {tolerance}: a start delayed by more "
                 "than\n(tolerance - 1) x the interval is late. Its messages wait in the "
                 "queue or the\nworkers that consume it are busy."),
             dashboard=PERIODIC_DASHBOARD, dashboard_vars=("task",)),
        Rule(alert="TelemetryGuardPeriodicTaskOverlapping",
             comment="A run started while another run of the same task was still going, "
                     f"counted\nin the last {OVERLAP_WINDOW_WORDS} (the first overlap too: its "
                     "counter is born at 1), or more\nthan one run in progress now.",
             expr=writer.series(states.overlapping()),
             for_="0m", severity="warning",
             summary="Periodic task {{ $labels.task }} overlaps its own runs",
             description=(
                 "{{ $labels.task }} has "
                 + value(f"max({RUNNING}{{%s}})", 'printf "%.0f"', "no")
                 + "\nrun(s) in progress now, and\n"
                 + value(f"max({OVERLAPS}{{%s}}) - max({OVERLAPS}{{%s}} offset "
                         f"{OVERLAP_WINDOW}) or max({OVERLAPS}{{%s}})",
                         'printf "%.0f"', "no")
                 + f"\nrun(s) in the last {OVERLAP_WINDOW_WORDS} started while another run of "
                 "it was still going: a run takes\nlonger than its interval, or the "
                 "runs held up by a backlog all start at once."),
             dashboard=PERIODIC_DASHBOARD, dashboard_vars=("task",)),
        Rule(alert="TelemetryGuardPeriodicTaskFailing",
             comment="The last run that ended, ended in failure (gave up; a retry is not "
                     "an end):\nthe last failure is newer than the last success. Held back "
                     "while beat is down.",
             expr=writer.series(f"{states.failing()}\n{beat_up}"),
             for_="5m", severity="warning",
             summary="Periodic task {{ $labels.task }} is failing",
             description=(
                 "The last run of {{ $labels.task }} gave up at "
                 "{{ $value | humanizeTimestamp }},\nand no run has succeeded since (last "
                 "success: "
                 + value(f"max({LAST_SUCCESS}{{%s}})", "humanizeTimestamp", "never")
                 + ").\nIts failures are in the telemetry_guard:errors stream and its "
                 "give-ups in\ntelemetry_guard:dead."),
             dashboard=PERIODIC_DASHBOARD, dashboard_vars=("task",)),
        Rule(alert="TelemetryGuardBeatDown",
             comment=f"No beat heartbeat for {BEAT_DOWN_INTERVALS} heartbeat intervals: "
                     "no periodic task is being sent.",
             expr=writer.series(states.beat_down()),
             for_="2m", severity="critical",
             summary="Celery beat is down",
             description=(
                 "Celery beat's last heartbeat was {{ $value | humanizeDuration }} ago; it "
                 "beats every\n"
                 + shown(writer, f"max({HEARTBEAT_INTERVAL}{{%s}})", "humanizeDuration")
                 + f"\nand counts as down after {BEAT_DOWN_INTERVALS} missed beats. No "
                 "periodic task is being sent.\nThe missed, late and failing alerts of "
                 "periodic tasks are held back while beat\nis down."),
             dashboard=PERIODIC_DASHBOARD),
    ]


def shown(writer: RuleWriter, template: str, show: str, otherwise: str = "",
          *labels: str) -> str:
    """An annotation's ``{{ with query }}`` of ``template`` (PromQL of exported series whose
    ``%s`` become the alert's grouping labels and ``labels``), its value shown with ``show``,
    else ``otherwise``."""
    query = writer.query(template, *labels, raw=True)
    fallback = f"{{{{ else }}}}{otherwise}" if otherwise else ""
    return (f"{{{{ with {query} | query }}}}{{{{ . | first | value | {show} }}}}"
            f"{fallback}{{{{ end }}}}")


def _indented(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.split("\n"))
