"""The periodic-task states of the monitoring contract as PromQL, for any grouping; the
alerts (:mod:`.periodic_rules`) and the periodic tasks dashboard (:mod:`.periodic`) read them
from here, so both judge a task as ``telemetry-guard periodic`` does.

Every process that serves ``/metrics`` exports the same state (read from Redis at scrape
time), so each series is taken as its ``max`` over the instances, never summed.

- beat down: ``now - heartbeat > 3 × heartbeat interval``.
- missed: ``now > missed_after`` (the deadline beat computes from the schedule: the first
  due time after the last run, plus (tolerance - 1) × that slot's gap), else, for a task
  without that series, ``now - (last run, else monitored since) > interval × tolerance``.
- late: ``last start delay > interval × (tolerance - 1)``.
- overlapping: more than one run in progress, or an overlap counted in the last 15 minutes.
- failing: ``last failure > (last success, else monitored since)``.
- waiting: never ran, not yet missed.
"""

from __future__ import annotations

from dataclasses import dataclass

LAST_RUN = "telemetry_guard_periodic_last_run_timestamp_seconds"
LAST_SUCCESS = "telemetry_guard_periodic_last_success_timestamp_seconds"
LAST_FAILURE = "telemetry_guard_periodic_last_failure_timestamp_seconds"
INTERVAL = "telemetry_guard_periodic_expected_interval_seconds"
TOLERANCE = "telemetry_guard_periodic_tolerance_ratio"
MONITORED_SINCE = "telemetry_guard_periodic_monitored_since_timestamp_seconds"
MISSED_AFTER = "telemetry_guard_periodic_missed_after_timestamp_seconds"
START_DELAY = "telemetry_guard_periodic_last_start_delay_seconds"
RUNNING = "telemetry_guard_periodic_running"
OVERLAPS = "telemetry_guard_periodic_overlaps_total"
HEARTBEAT = "telemetry_guard_beat_heartbeat_timestamp_seconds"
HEARTBEAT_INTERVAL = "telemetry_guard_beat_heartbeat_interval_seconds"

#: Beat is down after this many heartbeat intervals without a heartbeat.
BEAT_DOWN_INTERVALS = 3
#: How long a counted overlap keeps a task overlapping.
OVERLAP_WINDOW, OVERLAP_WINDOW_WORDS = "15m", "15 minutes"

#: The states as the dashboard's state column encodes them, worst last.
STATE_CODES = (("ok", 0), ("waiting", 1), ("late", 2), ("overlapping", 3), ("failing", 4),
               ("missed", 5), ("beat down", 6))


@dataclass(frozen=True)
class PeriodicStates:
    """The states aggregated by ``labels`` (the grouping labels; ``task`` is added for the
    states of a task). Each expression keeps the series of the tasks in that state; its value
    is the one an alert shows (an age, a delay, a timestamp)."""

    labels: tuple[str, ...] = ()
    #: Matchers put on every series with a ``task`` label (e.g. ``task=~"$task"``).
    task_matchers: str = ""

    def by(self, *, task: bool = True) -> str:
        """``by (<labels>, task)``, or ``by (<labels>)`` (empty: no ``by`` at all)."""
        labels = (*self.labels, "task") if task else self.labels
        return f" by ({', '.join(dict.fromkeys(labels))})" if labels else ""

    def latest(self, metric: str, *, task: bool = True, around: str = "{}") -> str:
        """``metric`` (inside ``around``, e.g. ``"{} offset 15m"``) across the processes that
        export it."""
        series = f"{metric}{{{self.task_matchers}}}" if task and self.task_matchers else metric
        return f"max{self.by(task=task)} ({around.format(series)})"

    def beat_down(self) -> str:
        """Beat's heartbeat is older than 3 intervals; the value is its age in seconds."""
        return (f"time() - {self.latest(HEARTBEAT, task=False)}\n"
                f"> {BEAT_DOWN_INTERVALS} * {self.latest(HEARTBEAT_INTERVAL, task=False)}")

    def since_last_run(self) -> str:
        """Seconds since the last start, or since monitoring first saw a task never run."""
        return (f"time() - (\n"
                f"    {self.latest(LAST_RUN)}\n"
                "  or\n"
                f"    {self.latest(MONITORED_SINCE)}\n"
                ")")

    def missed_after(self) -> str:
        """Seconds without a run after which a task is missed: interval × tolerance."""
        return f"{self.latest(INTERVAL)}\n  * {self.latest(TOLERANCE)}"

    def allowed_silence(self) -> str:
        """Seconds without a run after which a task is missed: from the last run (else the
        start of monitoring) to its deadline, else interval × tolerance."""
        base = (f"(\n      {self.latest(LAST_RUN)}\n    or\n"
                f"      {self.latest(MONITORED_SINCE)}\n  )")
        return (f"(\n  {self.latest(MISSED_AFTER)}\n  - {base}\n)\n"
                f"or\n  {self.missed_after()}")

    def missed(self) -> str:
        """Past the task's deadline, else (no deadline exported) no run within interval ×
        tolerance (whether beat is down or not); the value is the time since the last run
        (or since monitoring began)."""
        deadline = self.latest(MISSED_AFTER)
        past_deadline = (f"{self.since_last_run()}\n"
                         f"and\n  {deadline} < time()")
        without_deadline = (f"{self.since_last_run()}\n"
                            f"> {self.missed_after()}\n"
                            f"unless\n  {deadline}")
        # one parenthesised whole: an ``unless``/``and`` after it binds to both branches
        return (f"(\n  (\n{_indent(past_deadline, 4)}\n  )\n"
                f"  or\n  (\n{_indent(without_deadline, 4)}\n  )\n)")

    def late(self) -> str:
        """The last run started more than interval × (tolerance - 1) after beat sent it; the
        value is that delay."""
        return (f"{self.latest(START_DELAY)}\n"
                f"> {self.latest(INTERVAL)}\n  * ({self.latest(TOLERANCE)} - 1)")

    def overlapping(self) -> str:
        """More than one run in progress, or an overlap counted within the window (also the
        first one, whose counter series is born at 1: ``increase()`` cannot see that step)."""
        counted = self.latest(OVERLAPS, around=f"increase({{}}[{OVERLAP_WINDOW}])")
        before = self.latest(OVERLAPS, around=f"{{}} offset {OVERLAP_WINDOW}")
        return (f"{self.latest(RUNNING)} > 1\n"
                f"or {counted} > 0\n"
                f"or (\n    {self.latest(OVERLAPS)} > 0\n  unless {before}\n)")

    def failing(self) -> str:
        """The last run that ended, ended in failure: the last failure is newer than the last
        success (or than the start of monitoring); the value is the failure's timestamp."""
        return (f"{self.latest(LAST_FAILURE)}\n"
                f"> (\n    {self.latest(LAST_SUCCESS)}\n  or\n"
                f"    {self.latest(MONITORED_SINCE)}\n)")

    def waiting(self) -> str:
        """Never ran (monitored, no start yet)."""
        return f"{self.latest(MONITORED_SINCE)}\nunless {self.latest(LAST_RUN)}"

    def state_code(self) -> str:
        """Each periodic task's state as a number of :data:`STATE_CODES`, the worst that
        holds; while beat is down every task is ``beat down``."""
        codes = dict(STATE_CODES)
        tasks = self.latest(INTERVAL).replace("max", "group", 1)
        on = f"on({', '.join(self.labels)})"
        worst_first = [
            f"{codes['beat down']} * {tasks}\n  and {on} (\n{_indent(self.beat_down(), 4)}\n  )",
            *(f"{codes[name]} * group{self.by()} (\n{_indent(expr, 4)}\n  )"
              for name, expr in (("missed", self.missed()), ("failing", self.failing()),
                                 ("overlapping", self.overlapping()), ("late", self.late()),
                                 ("waiting", self.waiting()))),
            f"{codes['ok']} * {tasks}",
        ]
        return "\nor\n".join(f"  {part}" for part in worst_first)


def _indent(text: str, width: int) -> str:
    return "\n".join(" " * width + line for line in text.split("\n"))
