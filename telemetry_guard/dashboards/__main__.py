"""``python -m telemetry_guard.dashboards [--out DIR] [--check]``."""

import sys

from .writer import main

sys.exit(main())
