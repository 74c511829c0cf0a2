"""``python -m telemetry_guard.demo``: the same as ``telemetry-guard demo``."""

from __future__ import annotations

from ..cli.demo import demo

if __name__ == "__main__":
    demo(prog_name="python -m telemetry_guard.demo")
