"""A GuardedTask that fails its first attempt (a secret in the message) and then succeeds."""

from __future__ import annotations

from typing import Any

from celery import Celery

from telemetry_guard import GuardedTask, RetryPolicy

#: The secret in the first attempt's exception message.
SECRET = "hunter2"
#: One quick retry.
FLAKY = RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.02)


def register_flaky(app: Celery, name: str, log: Any = None) -> Any:
    """Register the task; ``log``, when given, logs ``charging`` at each attempt."""

    @app.task(bind=True, base=GuardedTask, name=name, retry_policy=FLAKY, shared=False)
    def flaky(self: Any) -> str:
        if log is not None:
            log.info("charging", attempt_no=self.request.retries)
        if self.request.retries == 0:
            raise ConnectionError(f"db refused password={SECRET}")
        return "ok"

    return flaky
