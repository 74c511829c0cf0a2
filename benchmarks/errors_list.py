"""How fast ``errors list`` answers over a 100,000-record error log, in-process and as a user.

Fills a private redis-server's ``telemetry_guard:errors`` stream with 100,000 realistic
records (built as the error-log sink builds them: ``FailureEvent.as_record()``, bounded,
JSON; ~1.5 KB each with a traceback), written through the sink's own script with each task's
index, or with ``--unindexed`` as an earlier release wrote them (the stream alone, IDs spread
over the last 55 minutes); ``--since 1h`` covers all of them. Then times, median of several
runs:

- ``worst``: ``errors list --task billing.reconcile --min-severity high --since 1h --limit 50``
  where only 40 records match, so every record of the task is read (and, unindexed, the
  whole stream);
- ``common``: the same query for a frequent task, which stops at the 50th match;
- ``grep``: ``--grep "ledger mismatch" --since 1h``, a free-text search of the whole stream;
- ``errors stats --since 1h`` over every record (counted inside Redis; reported, no target);

each in-process (click's CliRunner, app already imported) and as a subprocess of the
installed ``telemetry-guard`` console script (Python start-up and imports included; the
start-up alone is timed with ``telemetry-guard --help``). Also times the worst query's scan
read inside Redis and, for comparison, the whole stream pre-checked in Python. Target: < 1 s.

    .venv/bin/python benchmarks/errors_list.py [--records 100000] [--runs 5] [--unindexed]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from click.testing import CliRunner  # noqa: E402

from benchmarks._redis import start_redis  # noqa: E402
from telemetry_guard.cli import main  # noqa: E402
from telemetry_guard.cli.stream_query import RecordFilter, Window  # noqa: E402
from telemetry_guard.cli.streams import GuardStreams  # noqa: E402
from telemetry_guard.core.classify import Severity  # noqa: E402
from telemetry_guard.core.events import FailureEvent  # noqa: E402
from telemetry_guard.core.redact import Redactor  # noqa: E402
from telemetry_guard.stores.keys import index_key, indexed_since_key, writer_key  # noqa: E402
from telemetry_guard.stores.scripts import bind  # noqa: E402

APP = "benchmarks.apps.bare"
KEY = "telemetry_guard:errors"
RARE_TASK = "billing.reconcile"
#: Records of the rare task that are HIGH or above: fewer than --limit, so nothing stops early.
RARE_HIGH = 40
RARE_LOW = 160
COMMON_TASK = "shop.charge_card"
TASKS = [COMMON_TASK, "shop.ship_order", "shop.send_receipt", "inventory.reserve",
         "inventory.release", "search.reindex", "mail.digest", "users.sync_profile",
         "reports.nightly", "payments.capture", "payments.refund", "media.thumbnail"]
EXCEPTIONS = [("ConnectionError", "builtins", "upstream reset by peer"),
              ("TimeoutError", "builtins", "read timed out after 30.0 s"),
              ("OperationalError", "psycopg.errors", "could not obtain lock on relation orders"),
              ("ValueError", "builtins", "invalid order state 'shipped' for capture"),
              ("KeyError", "builtins", "'sku-4411'"),
              ("HTTPError", "requests.exceptions", "503 Server Error: Service Unavailable")]
SEVERITY_WEIGHTS = [(Severity.LOW, 50), (Severity.MEDIUM, 30), (Severity.HIGH, 15),
                    (Severity.CRITICAL, 5)]
SPAN_S = 55 * 60


def traceback_for(task: str, exc: str, message: str, rng: random.Random) -> str:
    """A plausible ten-frame traceback."""
    frames = [f'  File "/srv/app/{task.replace(".", "/")}.py", line {rng.randint(10, 400)}, '
              f"in {name}\n    {code}\n"
              for name, code in [("run", "return self.charge(order)"),
                                 ("charge", "resp = client.post(url, json=payload)"),
                                 ("post", "return self.request('POST', url, **kw)"),
                                 ("request", "resp = self.send(prep, **send_kwargs)"),
                                 ("send", "r = adapter.send(request, **kwargs)")] * 2]
    return "Traceback (most recent call last):\n" + "".join(frames) + f"{exc}: {message}\n"


def record_for(i: int, ts: float, task: str, severity: Severity, rng: random.Random) -> str:
    """One record exactly as the error-log sink writes it."""
    exc, module, message = rng.choice(EXCEPTIONS)
    if task == RARE_TASK:
        exc, module, message = "LedgerError", "billing.errors", f"ledger mismatch on batch {i}"
    order = rng.randint(10_000, 99_999)
    event = FailureEvent(
        task_name=task, task_id=f"{rng.getrandbits(128):032x}", attempt=rng.randint(1, 4),
        max_retries=3, exception_type=exc, exception_module=module,
        message=f"{message} (order {order})", traceback=traceback_for(task, exc, message, rng),
        severity=severity, decision=rng.choice(["retry", "give_up"]), reason="",
        args=[order], kwargs={"customer_id": rng.randint(1, 10**6), "api_key": "[REDACTED]"},
        queue="celery", hostname=f"worker-{rng.randint(1, 8)}@prod", pid=rng.randint(100, 60000),
        trace_id=f"{rng.getrandbits(128):032x}", span_id=f"{rng.getrandbits(64):016x}",
        timestamp=ts)
    return json.dumps(Redactor().bound_record(event.as_record()))


def fill(client: Any, records: int, seed: int = 7, *, indexed: bool = True
         ) -> tuple[int, float]:
    """Write ``records`` records (pipelined) as the error-log sink does, with each task's
    index, or as an earlier release did (``indexed=False``: the stream alone, IDs spread
    over the last 55 minutes); returns the bytes written and seconds taken."""
    add = bind(client, "error_log_add")
    rng = random.Random(seed)
    now = time.time()
    start_ms = int((now - SPAN_S) * 1000)
    step = SPAN_S * 1000 / records
    rare = set(rng.sample(range(records), RARE_HIGH + RARE_LOW))
    rare_high = set(rng.sample(sorted(rare), RARE_HIGH))
    severities, weights = zip(*SEVERITY_WEIGHTS, strict=True)
    started = time.perf_counter()
    size = 0
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for i in range(records):
        ms = start_ms + int(i * step)
        if i in rare:
            task = RARE_TASK
            severity = rng.choice([Severity.HIGH, Severity.CRITICAL]) if i in rare_high \
                else Severity.LOW
        else:
            task = rng.choice(TASKS)
            severity = rng.choices(severities, weights)[0]
        raw = record_for(i, ms / 1000, task, severity, rng)
        size += len(raw)
        if indexed:
            add(keys=[KEY, index_key(KEY, task), indexed_since_key(KEY), writer_key(KEY, "bench")],
                args=[records, 0, "record", raw], client=pipe)
        else:
            pipe.xadd(KEY, {"record": raw}, id=f"{ms}-{i}")
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    return size, time.perf_counter() - started


def median_time(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    """Median seconds of ``runs`` calls, and the last result."""
    samples, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), result


def main_(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--unindexed", action="store_true",
                        help="fill as an earlier release wrote (no per-task index): "
                             "every --task query scans the whole stream")
    opts = parser.parse_args(argv)
    server = start_redis()
    try:
        url = server.url()
        os.environ["BENCH_BROKER_URL"] = url
        size, took = fill(server.client(), opts.records, indexed=not opts.unindexed)
        print(f"redis-server {server.version()}, Python {sys.version.split()[0]}")
        print(f"filled {opts.records:,} records ({size / opts.records:,.0f} B each, "
              f"{size / 1e6:,.0f} MB) in {took:.1f} s, "
              + ("without the per-task index (an earlier release's records)"
                 if opts.unindexed else "with the per-task index, as the sink writes them"))
        queries = {
            "worst": ["--task", RARE_TASK, "--min-severity", "high", "--since", "1h",
                      "--limit", "50"],
            "common": ["--task", COMMON_TASK, "--min-severity", "high", "--since", "1h",
                       "--limit", "50"],
            "grep": ["--grep", "ledger mismatch", "--since", "1h"],
        }
        expected = {"worst": RARE_HIGH, "common": 50, "grep": 50}
        runner = CliRunner()
        script = str(Path(sys.executable).parent / "telemetry-guard")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        startup, _ = median_time(lambda: subprocess.run(
            [script, "--help"], cwd=ROOT, env=env, capture_output=True, check=True), opts.runs)
        print(f"{'query':<8} {'in-process':>11} {'subprocess':>11} {'records':>8}")
        ok = True
        for name, args in queries.items():
            argv_ = ["-A", APP, "--json", "errors", "list", *args]
            inproc, result = median_time(lambda a=argv_: runner.invoke(main, a), opts.runs)
            out = result.output  # type: ignore[attr-defined]
            assert result.exit_code == 0, out  # type: ignore[attr-defined]
            sub, proc = median_time(lambda a=argv_: subprocess.run(
                [script, *a], cwd=ROOT, env=env, capture_output=True, check=True), opts.runs)
            lines = proc.stdout.splitlines()  # type: ignore[attr-defined]
            assert len(lines) == len(out.splitlines()) == expected[name], (name, len(lines))
            ok = ok and sub < 1.0 and inproc < 1.0
            print(f"{name:<8} {inproc * 1000:9.0f} ms {sub * 1000:9.0f} ms {len(lines):>8}")
        print(f"(python start-up and imports alone, `telemetry-guard --help`: "
              f"{startup * 1000:.0f} ms)")
        stats_argv = ["-A", APP, "--json", "errors", "stats", "--since", "1h"]
        took, result = median_time(lambda: runner.invoke(main, stats_argv), opts.runs)
        groups = result.output.splitlines()  # type: ignore[attr-defined]
        total = sum(json.loads(line)["count"] for line in groups)
        assert total == opts.records, total
        print(f"errors stats --since 1h (not a target): {took * 1000:.0f} ms in-process, "
              f"{total:,} records in {len(groups)} groups")
        streams = GuardStreams(url, "telemetry_guard:")
        flt = RecordFilter((RARE_TASK,), frozenset({"high", "critical"}))
        window = Window(since=time.time() - 3600)
        for label, use_script in (("read inside Redis", True),
                                  ("whole stream, pre-check in Python", False)):
            def scan(flag: bool = use_script) -> int:
                streams._use_script = flag
                return sum(1 for _ in streams.scan(KEY, window, flt, limit=50))
            took, found = median_time(scan, opts.runs)
            print(f"worst query's scan, {label}: {took * 1000:.0f} ms ({found} records)")
        print("target < 1 s:", "met" if ok else "MISSED")
        return 0 if ok else 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main_())
