"""Peer suites: other projects' own tests, run with telemetry_guard installed."""
