"""Opt-in extras: nothing here is registered on an app unless the application asks for it.

The HTTP task ``resilient_request`` is one: see :mod:`telemetry_guard.http` and
``register_resilient_request(app)``.
"""
