"""Benchmarks of telemetry_guard against bare Celery and the do-it-yourself stack."""
