"""The circuit breakers dashboard: state, transitions and calls of each breaker."""

from __future__ import annotations

from .grafana import (
    Json,
    Query,
    dashboard,
    datasource_variable,
    stat,
    state_timeline,
    threshold_steps,
    timeseries,
)
from .labels import BREAKER, CALL_COLOURS, breaker_variable


def breakers_dashboard() -> Json:
    """State, transitions and calls of every circuit breaker."""
    state = "telemetry_guard_breaker_state"
    calls = "telemetry_guard_breaker_calls_total"
    # a breaker whose calls all succeeded shows 0, not nothing ("or 0 * attempted")
    attempted = (f'sum by (breaker) (rate({calls}{{{BREAKER}, outcome=~"success|failure"}}'
                 "[$__rate_interval]))")
    transitions = "telemetry_guard_breaker_transitions_total"
    state_value = (
        "max by (breaker) (\n"
        f'  0 * ({state}{{{BREAKER}, state="closed"}} == 1)\n'
        f'  or 1 * ({state}{{{BREAKER}, state="half_open"}} == 1)\n'
        f'  or 2 * ({state}{{{BREAKER}, state="open"}} == 1)\n'
        ")")
    panels = [
        stat("Breakers open now",
             "Breakers whose current state is open: calls through them are rejected with "
             "CircuitOpenError (or served by the task's fallback) until reset_timeout "
             "passes. Bad: anything above 0. Next: 'Breaker state' to see which and "
             "since when, then the health of that dependency.",
             Query(f'count(max by (breaker) ({state}{{{BREAKER}, state="open"}}) == 1) '
                   "or vector(0)", "open", instant=True),
             decimals=0, thresholds=threshold_steps((None, "green"), (1, "red"))),
        stat("Breakers half-open now",
             "Breakers letting a few trial calls through to test whether the dependency "
             "recovered. Normal for a short while after an open period. Bad: a breaker "
             "that stays half-open or flips back to open again and again (see "
             "'Transitions').",
             Query(f'count(max by (breaker) ({state}{{{BREAKER}, state="half_open"}}) '
                   "== 1) or vector(0)", "half_open", instant=True),
             decimals=0, thresholds=threshold_steps((None, "green"), (1, "yellow"))),
        stat("Rejected calls in range",
             "Calls refused by an open or saturated half-open breaker in the selected time "
             "range; the dependency was not called. Each one became a CircuitOpenError, a "
             "fallback result or a retry. Bad: large numbers for a breaker whose "
             "dependency is healthy again (check reset_timeout). Next: 'Rejected calls "
             "rate'.",
             Query(f'sum(increase({calls}{{{BREAKER}, outcome="rejected"}}[$__range])) '
                   "or vector(0)", "rejected", instant=True),
             decimals=0, thresholds=threshold_steps((None, "green"), (1, "orange"))),
        stat("Trips to open in range",
             "How many times breakers moved to open in the selected time range. Bad: more "
             "than a handful: a flapping dependency, or a failure_threshold set too low. "
             "Next: 'Transitions by breaker' to see which breaker flaps.",
             Query(f'sum(increase({transitions}{{{BREAKER}, to_state="open"}}[$__range])) '
                   "or vector(0)", "trips", instant=True),
             decimals=0, thresholds=threshold_steps((None, "green"), (1, "orange"))),
        state_timeline(
            "Breaker state",
            "Each breaker's state over time: green closed (calls pass), yellow half_open "
            "(trial calls), red open (calls rejected). Breaker state is shared in Redis, "
            "so every worker should agree; when they do not, the worst state is shown. "
            "Bad: long red bands, or rapid red/yellow flapping. Next: the dependency "
            "behind the breaker, and breaker.state_changed log events.",
            Query(state_value, "{{breaker}}"),
            [(0, "closed", "green"), (1, "half_open", "yellow"), (2, "open", "red")]),
        timeseries(
            "Transitions by breaker",
            "State changes per rate window, by breaker and direction (from → to). "
            "closed → open is a trip; open → half_open a recovery probe; half_open → "
            "closed a recovery; half_open → open a failed probe. Bad: repeated "
            "half_open → open (the dependency is still down) or many trips an hour "
            "(flapping).",
            [Query(f"sum by (breaker, from_state, to_state) "
                   f"(increase({transitions}{{{BREAKER}}}[$__rate_interval]))",
                   "{{breaker}}: {{from_state}} → {{to_state}}")],
            unit="short", bars=True),
        timeseries(
            "Rejected calls rate",
            "Calls per second refused by each breaker without calling the dependency. "
            "Non-zero exactly while a breaker is open (or half-open and full). Bad: "
            "rejections continuing after the dependency recovered, or on a breaker whose "
            "tasks have no fallback (those tasks fail). Next: 'Breaker state'.",
            [Query(f'sum by (breaker) (rate({calls}{{{BREAKER}, outcome="rejected"}}'
                   "[$__rate_interval]))", "{{breaker}}")]),
        timeseries(
            "Calls by outcome",
            "Calls per second through each breaker, by outcome: success, failure (the "
            "call raised an error that counts against the breaker) and rejected (not "
            "attempted). Bad: failure growing toward the trip threshold, or rejected "
            "replacing success. Next: 'Failure ratio of attempted calls'.",
            [Query(f"sum by (breaker, outcome) (rate({calls}{{{BREAKER}}}"
                   "[$__rate_interval]))", "{{breaker}} {{outcome}}")],
            colours=CALL_COLOURS),
        timeseries(
            "Failure ratio of attempted calls",
            "Per breaker, failures / (successes + failures) of the calls that reached the "
            "dependency. How close each breaker is to tripping, and how sick its "
            "dependency is. Bad: a sustained rise; at 100 % the breaker opens after "
            "failure_threshold calls. Next: the dependency's own dashboards and logs.",
            [Query(f'(sum by (breaker) (rate({calls}{{{BREAKER}, outcome="failure"}}'
                   f"[$__rate_interval]))\nor 0 * {attempted})\n/\n{attempted}",
                   "{{breaker}}")],
            unit="percentunit", max_value=1),
    ]
    return dashboard(
        "telemetry-guard-breakers", "telemetry_guard / Circuit breakers",
        "State, transitions and calls of the circuit breakers shared through Redis.",
        panels, [datasource_variable(), breaker_variable()])
