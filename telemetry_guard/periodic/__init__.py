"""Periodic monitoring: beat's schedule, each periodic task's runs, beat's heartbeat.

Beat registers its entries and beats a heartbeat in Redis; workers record each run's start
and end off the task's thread; a watcher in beat and in each worker's main process tells a
missed run and a beat outage once, as failure events; a collector exports the shared state
at scrape time; ``telemetry-guard periodic`` shows it.
"""

from __future__ import annotations
