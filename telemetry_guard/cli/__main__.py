"""``python -m telemetry_guard.cli``: the ``telemetry-guard`` command."""

from __future__ import annotations

from . import main

main(prog_name="telemetry-guard")
