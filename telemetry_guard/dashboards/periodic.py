"""The periodic tasks dashboard: each beat entry's state, its last runs, start delays and
overlaps, and beat's heartbeat (the states of :mod:`.periodic_promql`)."""

from __future__ import annotations

from .grafana import (
    Column,
    Json,
    Query,
    dashboard,
    datasource_variable,
    stat,
    table,
    threshold_steps,
    timeseries,
)
from .labels import TASK, periodic_task_variable
from .periodic_promql import (
    BEAT_DOWN_INTERVALS,
    HEARTBEAT,
    HEARTBEAT_INTERVAL,
    INTERVAL,
    LAST_RUN,
    LAST_SUCCESS,
    OVERLAP_WINDOW_WORDS,
    OVERLAPS,
    RUNNING,
    START_DELAY,
    STATE_CODES,
    TOLERANCE,
    PeriodicStates,
)

#: The state column's colours.
STATE_COLOURS = {"ok": "green", "waiting": "blue", "late": "yellow", "overlapping": "orange",
                 "failing": "red", "missed": "dark-red", "beat down": "purple"}


def periodic_dashboard() -> Json:
    """The state of every periodic task and of beat."""
    states = PeriodicStates(task_matchers=TASK)
    code = dict(STATE_CODES)
    state = states.state_code()

    def in_state(name: str) -> Query:
        return Query(f"count(\n  (\n{state}\n  ) == {code[name]}\n) or vector(0)", name,
                     instant=True)

    latest = states.latest
    heartbeat_age = f"time() - {latest(HEARTBEAT, task=False)}"
    panels = [
        stat("Beat down",
             "1 while Celery beat's last heartbeat is older than "
             f"{BEAT_DOWN_INTERVALS} heartbeat intervals: no periodic task is being sent "
             "and every task shows 'beat down'. 0 also when no beat ever exported a "
             "heartbeat. Next: 'Beat heartbeat age', then the beat process.",
             Query(f"count(\n{states.beat_down()}\n) or vector(0)", "beat down",
                   instant=True),
             width=4, decimals=0, thresholds=threshold_steps((None, "green"), (1, "purple"))),
        stat("Missed now",
             "Periodic tasks past their deadline while beat is up: the first due time "
             "after their last run (or since monitoring first saw them) plus (tolerance - 1) "
             "× that slot's gap; without a deadline, no run within interval × tolerance. "
             "Bad: anything "
             "above 0. Next: the 'Periodic tasks' table and `telemetry-guard periodic`.",
             in_state("missed"), width=4, decimals=0,
             thresholds=threshold_steps((None, "green"), (1, "red"))),
        stat("Failing now",
             "Periodic tasks whose last run that ended gave up (no success since). Bad: "
             "anything above 0. Next: the task's give-ups on the 'Task failures' dashboard "
             "and the error log.",
             in_state("failing"), width=4, decimals=0,
             thresholds=threshold_steps((None, "green"), (1, "red"))),
        stat("Overlapping now",
             "Periodic tasks with more than one run in progress, or a run that started while "
             f"another was still going in the last {OVERLAP_WINDOW_WORDS}. Bad: anything "
             "above 0 for a "
             "task that must not run twice at once. Next: 'Runs in progress'.",
             in_state("overlapping"), width=4, decimals=0,
             thresholds=threshold_steps((None, "green"), (1, "orange"))),
        stat("Late now",
             "Periodic tasks whose last run started more than interval × (tolerance - 1) "
             "after beat sent it: the queue is backed up or short of workers. Next: 'Start "
             "delay per task'.",
             in_state("late"), width=4, decimals=0,
             thresholds=threshold_steps((None, "green"), (1, "yellow"))),
        stat("Periodic tasks monitored",
             "Beat entries the guard monitors (the selected ones). A task missing here is "
             "not in the beat schedule the guard read, or no process exports the periodic "
             "metrics (the guard's Redis is needed).",
             Query(f"count({latest(INTERVAL)}) or vector(0)", "tasks",
                   instant=True),
             width=4, decimals=0),
        table(
            "Periodic tasks",
            "One row per periodic task, worst state first: its state (as "
            "`telemetry-guard periodic` shows it), time since the last start and the last "
            "success ('never' before the first), the schedule's interval, the tolerance and "
            "the silence after which it is missed (to its deadline; else interval × "
            "tolerance), the last run's "
            "start delay, and the runs in progress now.",
            "task",
            [Column("State", Query(state), states=tuple(
                        (value, name, STATE_COLOURS[name]) for name, value in STATE_CODES)),
             Column("Since last run", Query(f"time() - {latest(LAST_RUN)}"), unit="s",
                    missing="never"),
             Column("Since last success", Query(f"time() - {latest(LAST_SUCCESS)}"),
                    unit="s", missing="never"),
             Column("Interval", Query(latest(INTERVAL)), unit="s"),
             Column("Tolerance", Query(latest(TOLERANCE)), unit="none", decimals=2),
             Column("Missed after", Query(states.allowed_silence()), unit="s"),
             Column("Last start delay", Query(latest(START_DELAY)), unit="s",
                    missing="never"),
             Column("Running", Query(latest(RUNNING)), decimals=0)],
            sort_desc="State"),
        timeseries(
            "Time since last success per task",
            "Seconds since each periodic task last succeeded; a healthy task saw-tooths "
            "between 0 and its interval. Bad: a line climbing past the interval (missed or "
            "failing runs). Next: the 'Periodic tasks' table for the state.",
            [Query(f"time() - {latest(LAST_SUCCESS)}", "{{task}}")], unit="s"),
        timeseries(
            "Missed window used",
            "Time since each task's last start (or since monitoring first saw a task that "
            "never ran) as a share of the silence allowed (to its deadline; else interval × "
            "tolerance). At 100 % the task is missed. "
            "Bad: a line approaching 100 %. Next: is beat up ('Beat heartbeat age'), are "
            "the task's messages consumed?",
            [Query(f"(\n{states.since_last_run()}\n)\n/ (\n{states.allowed_silence()}\n)",
                   "{{task}}")], unit="percentunit"),
        timeseries(
            "Start delay per task",
            "How long each periodic task's last run waited between beat sending it and a "
            "worker starting it. Bad: a delay growing towards the interval (late runs: a "
            "backlog on the task's queue, too few workers). Next: queue lengths and "
            "`celery -A APP inspect active`.",
            [Query(latest(START_DELAY), "{{task}}")], unit="s", width=8),
        timeseries(
            "Runs in progress",
            "Runs of each periodic task in progress now. Normal: 0 or 1. Bad: 2 or more, "
            "runs overlapping because one takes longer than the interval. Next: the task's "
            "run time on the 'Task failures' dashboard.",
            [Query(latest(RUNNING), "{{task}}")], unit="short", width=8),
        timeseries(
            "Overlapping runs started",
            "Runs that started while another run of the same task was still going, per "
            "rate window. Bad: any, for a task that must not run twice at once (add a lock "
            "or lengthen the interval).",
            [Query(latest(OVERLAPS, around="increase({}[$__rate_interval])"),
                   "{{task}}")], unit="short", width=8, bars=True),
        timeseries(
            "Beat heartbeat age",
            "Seconds since Celery beat's last heartbeat, and the age at which beat counts "
            f"as down ({BEAT_DOWN_INTERVALS} × its heartbeat interval). Normal: a saw-tooth "
            "below the line. Bad: the age crossing the line: beat is stopped, hung or cut "
            "off from Redis. Next: the beat process and its log.",
            [Query(heartbeat_age, "heartbeat age"),
             Query(f"{BEAT_DOWN_INTERVALS} * "
                   f"{latest(HEARTBEAT_INTERVAL, task=False)}", "down after")],
            unit="s", width=24),
    ]
    return dashboard(
        "telemetry-guard-periodic", "telemetry_guard / Periodic tasks",
        "Whether every periodic task of the beat schedule runs on time, succeeds and does "
        "not overlap itself, and whether Celery beat is up.",
        panels, [datasource_variable(), periodic_task_variable()])
