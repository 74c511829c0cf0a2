"""A short live demo on an embedded default: no services to start by hand.

``python -m telemetry_guard.demo`` (or ``telemetry-guard demo``, or ``make demo``):

- ``services``: the private servers (redis-server, the inventory HTTP service, the SMTP catcher);
- ``workload``: the Celery app, its guarded tasks and the schedule that sends them;
- ``view``: the live table (or plain status lines) read from the metrics registry and the log;
- ``summary``: what is printed at the end;
- ``runner``: puts them together, with an in-process worker, and tears everything down.
"""
