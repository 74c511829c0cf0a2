"""Celery: TelemetryGuard composes everything; GuardedTask, signals, request."""
