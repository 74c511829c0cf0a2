"""Sends the stack's workload to its Redis: ``python -m producer [--rate N] [--duration S]``.

Task names and weights are in ``WORKLOAD``; the tasks are in ``stack_app.py``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

#: Task name → (relative weight, a function of the sequence number giving its arguments).
WORKLOAD: dict[str, tuple[float, Any]] = {
    "shop.send_receipt": (40, lambda n: ((n,), {})),
    "shop.charge_card": (25, lambda n: ((n,), {"api_key": "sk_live_stack-demo"})),
    "shop.import_feed": (15, lambda n: (({"sku": f"SKU-{n}", "qty": n % 7},), {})),
    "shop.authorize_payment": (15, lambda n: ((n,), {})),
    "shop.reconcile_ledger": (5, lambda n: ((), {})),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Send tasks at ``--rate`` per second for ``--duration`` seconds (0: forever)."""
    parser = argparse.ArgumentParser(prog="python -m producer", description=__doc__)
    parser.add_argument("--rate", type=float, default=5.0, help="tasks per second (default 5)")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="seconds to run; 0 runs until stopped (default)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be > 0")

    from stack_app import app  # the same broker settings as the workers

    rng = random.Random(args.seed)
    names = list(WORKLOAD)
    weights = [WORKLOAD[name][0] for name in names]
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    interval = 1.0 / args.rate
    next_at = time.monotonic()
    for n in itertools.count(1):
        if deadline is not None and time.monotonic() >= deadline:
            break
        name = rng.choices(names, weights)[0]
        task_args, task_kwargs = WORKLOAD[name][1](n)
        app.send_task(name, args=task_args, kwargs=task_kwargs)
        if n % 100 == 0:
            print(f"producer: {n} tasks sent", flush=True)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
