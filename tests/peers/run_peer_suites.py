"""Run peer libraries' own test suites bare, with TelemetryGuard, and with GuardedTask; compare.

Usage: ``python tests/peers/run_peer_suites.py [--suite celery,otel-celery,sentry-celery]
[--modes guard,guarded_task] [-- PYTEST ARGS]``

For each suite (``suites.py``) it fetches the sdist of the installed version once (into
``.peers/``), installs the few packages its tests import, runs the same test paths once per
mode with the plugin ``guard_plugin`` and reports every test that fails or errors with the
guard but not bare. A new failure listed in ``deliberate_differences.py`` is reported as
deliberate. Exits 1 on any other new failure, or when the harness itself did not run right.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deliberate_differences import DELIBERATE_DIFFERENCES
from differences import Differences, DifferencesError, Verdict, judge, parse_differences
from junit_outcomes import Outcome, RunOutcomes, new_failures, read_outcomes
from sdists import extract_tests, fetch_sdist, install_requirements, installed_version
from suites import SUITES, PeerSuite

PEERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PEERS_DIR.parents[1]
DEFAULT_CACHE = REPO_ROOT / ".peers"
DIFFERENCES_FILE = PEERS_DIR / "deliberate_differences.py"
PLUGIN = "guard_plugin"
GUARDED_MODES = ("guard", "guarded_task")
#: pytest's exit codes for "ran, all passed" and "ran, some failed".
RAN = (0, 1)


@dataclass
class ModeRun:
    """One pytest run of a peer suite."""

    mode: str
    returncode: int
    seconds: float
    log: Path
    outcomes: RunOutcomes | None
    stats: dict[str, object] | None
    summary: str


@dataclass
class SuiteResult:
    """Every mode of one suite, and the verdict of each guarded mode against bare."""

    suite: PeerSuite
    version: str
    runs: list[ModeRun] = field(default_factory=list)
    verdicts: dict[str, Verdict[Outcome]] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(run.seconds for run in self.runs)

    @property
    def failed(self) -> bool:
        return any(self.problems.values()) or any(v.failed for v in self.verdicts.values())


def peer_environment(mode: str, stats_file: Path, redis_url: str | None) -> dict[str, str]:
    """This environment without TELEMETRY_GUARD_* settings, plus the mode and the paths."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_GUARD_")}
    env["TELEMETRY_GUARD_PEER_MODE"] = mode
    env["TELEMETRY_GUARD_PEER_STATS"] = str(stats_file)
    if redis_url:
        env["TELEMETRY_GUARD_PEER_REDIS_URL"] = redis_url
    # The plugins by their module names (a peer's own ``tests`` package must win), then
    # this repository for ``telemetry_guard``.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PEERS_DIR), str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def last_line(path: Path) -> str:
    """The last non-empty line of a file (pytest's summary)."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def run_mode(suite: PeerSuite, mode: str, where: Path, out: Path, extra: list[str],
             timeout: float, redis_url: str | None) -> ModeRun:
    """Run the suite's tests once in ``mode``; its results land in ``out``."""
    junit, log, stats_file = (out / f"{mode}.xml", out / f"{mode}.log",
                              out / f"{mode}.stats.json")
    for stale in (junit, log, stats_file):
        stale.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", *suite.test_paths, "-q", "-p", PLUGIN,
               "-c", str(where / suite.config_file), f"--rootdir={where}",
               "-p", "no:cacheprovider", "--continue-on-collection-errors",
               f"--junitxml={junit}", "-o", "junit_family=xunit1", *suite.pytest_args, *extra]
    print(f"[{suite.name}/{mode}] running (log: {log})", flush=True)
    started = time.monotonic()
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=where,
                                   env=peer_environment(mode, stats_file, redis_url),
                                   stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = -1
            handle.write(f"\n[peer runner] killed after {timeout:.0f}s\n")
    seconds = time.monotonic() - started
    outcomes = read_outcomes(junit) if junit.is_file() else None
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else None
    return ModeRun(mode, returncode, seconds, log, outcomes, stats, last_line(log))


def harness_problems(run: ModeRun) -> list[str]:
    """Why a run cannot be trusted: it did not run, the plugin did nothing, bare broke."""
    problems = []
    if run.returncode not in RAN:
        problems.append(f"pytest exited {run.returncode} ({run.summary})")
    if run.outcomes is None or not run.outcomes.tests:
        problems.append("no test results (no JUnit XML or no test in it)")
    if run.stats is None:
        problems.append(f"the plugin {PLUGIN} wrote no stats: was it loaded?")
    elif run.stats.get("mode") != run.mode:
        problems.append(f"the plugin ran in mode {run.stats.get('mode')!r}")
    elif run.mode != "bare" and not run.stats.get("guards"):
        problems.append("no TelemetryGuard was created")
    elif run.mode == "guarded_task" and not run.stats.get("guarded_task_cls"):
        problems.append("no app got GuardedTask as its task_cls")
    if run.mode == "bare" and run.outcomes is not None:
        problems += [f"cannot collect {node}" for node in run.outcomes.collection_failures()]
    return problems


def print_tests(title: str, tests: dict[str, Outcome]) -> None:
    """A heading and one line per test with its first error line."""
    print(f"\n{title}")
    for node, outcome in tests.items():
        print(f"  {node}\n      {outcome.status}: {outcome.message or '(no message)'}")


def print_verdict(name: str, mode: str, verdict: Verdict[Outcome]) -> None:
    """The unexpected, deliberate and stale tests of one guarded mode."""
    if verdict.unexpected:
        print_tests(f"{name}/{mode}: {len(verdict.unexpected)} new failure(s)",
                    verdict.unexpected)
    if verdict.deliberate:
        print(f"\n{name}/{mode}: {len(verdict.deliberate)} deliberate difference(s)")
        for node, (outcome, reason) in verdict.deliberate.items():
            print(f"  {node}\n      {outcome.status}: {outcome.message or '(no message)'}"
                  f"\n      deliberate: {reason}")
    if verdict.stale:
        print(f"\n{name}/{mode}: WARNING {len(verdict.stale)} stale deliberate difference(s) "
              f"(no longer failing: remove from {DIFFERENCES_FILE.name})")
        for node, reason in verdict.stale.items():
            print(f"  {node}\n      listed: {reason}")


def run_suite(suite: PeerSuite, modes: list[str], cache: Path, extra: list[str],
              timeout: float, install: bool, redis_url: str | None,
              differences: Differences) -> SuiteResult:
    """Fetch, run every mode, and judge each guarded mode against bare."""
    version = installed_version(suite)
    where = extract_tests(suite, fetch_sdist(suite, version, cache), cache)
    if install:
        install_requirements(suite, version)
    out = cache / "runs" / f"{suite.name}-{version}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"\n== {suite.name}: {suite.distribution} {version}, {' '.join(suite.test_paths)}; "
          f"modes {', '.join(modes)}", flush=True)
    for note in suite.notes:
        print(f"   note: {note}")
    result = SuiteResult(suite, version)
    suite_redis = redis_url if suite.needs_redis else None
    for mode in modes:
        if suite_redis:
            flush_redis(suite_redis)
        result.runs.append(run_mode(suite, mode, where, out, extra, timeout, suite_redis))
    for run in result.runs:
        result.problems[run.mode] = harness_problems(run)
    bare = result.runs[0]
    for run in result.runs[1:]:
        if bare.outcomes is not None and run.outcomes is not None:
            result.verdicts[run.mode] = judge(new_failures(bare.outcomes, run.outcomes),
                                              differences.get((suite.name, run.mode), {}))
    report_suite(result)
    return result


def report_suite(result: SuiteResult) -> None:
    """The suite's table, its harness problems, bare's failures and each mode's verdict."""
    name = result.suite.name
    print(f"\n{'mode':<13}{'passed':>7}{'failed':>7}{'errors':>7}{'skipped':>8}{'seconds':>9}"
          f"  apps/guards")
    for run in result.runs:
        counts = run.outcomes.counts() if run.outcomes else {}
        stats = run.stats or {}
        print(f"{run.mode:<13}{counts.get('passed', 0):>7}{counts.get('failed', 0):>7}"
              f"{counts.get('error', 0):>7}{counts.get('skipped', 0):>8}{run.seconds:>9.1f}"
              f"  {stats.get('apps', '?')}/{stats.get('guards', '?')}")
    for run in result.runs:
        print(f"[{name}/{run.mode}] pytest: {run.summary}")
    stats = result.runs[-1].stats or {}
    print(f"{result.suite.distribution} {result.version}; telemetry_guard from "
          f"{stats.get('telemetry_guard_file', '?')}")
    for run in result.runs:
        if result.problems.get(run.mode):
            print(f"\n{name}/{run.mode}: HARNESS FAILURE (see {run.log}):")
            for problem in result.problems[run.mode]:
                print(f"  {problem}")
    bare = result.runs[0]
    if bare.outcomes is not None and bare.outcomes.broken():
        print_tests(f"{name}/bare: {len(bare.outcomes.broken())} failing without the guard on "
                    "this machine (excluded from the comparison)", bare.outcomes.broken())
    for mode, verdict in result.verdicts.items():
        print_verdict(name, mode, verdict)


def print_summary(results: list[SuiteResult], seconds: float) -> None:
    """One line per suite and guarded mode: new failures, deliberate, stale."""
    print(f"\n{'suite':<15}{'mode':<14}{'new':>5}{'deliberate':>12}{'stale':>7}  verdict")
    for result in results:
        for run in result.runs[1:]:
            verdict = result.verdicts.get(run.mode)
            if verdict is None or result.problems.get(run.mode):
                status, counts = "HARNESS FAILURE", ("?", "?", "?")
            else:
                status = "FAILED" if verdict.failed else "ok"
                counts = (str(len(verdict.unexpected)), str(len(verdict.deliberate)),
                          str(len(verdict.stale)))
            print(f"{result.suite.name:<15}{run.mode:<14}{counts[0]:>5}{counts[1]:>12}"
                  f"{counts[2]:>7}  {status}")
    per_suite = ", ".join(f"{r.suite.name} {r.seconds:.0f}s" for r in results)
    print(f"\npeer suites: {per_suite}; {seconds:.0f}s in all"
          f"{' (FAILED)' if any(r.failed for r in results) else ''}")


def flush_redis(url: str) -> None:
    """Empty the private server between runs, so every mode starts alike."""
    import redis

    redis.Redis.from_url(url).flushall()


def parse_list(value: str, valid: tuple[str, ...], what: str,
               parser: argparse.ArgumentParser) -> list[str]:
    """A comma-separated choice, in ``valid``'s order."""
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(valid))
    if unknown:
        parser.error(f"unknown {what}(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return [v for v in valid if v in chosen]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The runner's options; whatever follows ``--`` goes to pytest."""
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=",".join(SUITES),
                        help=f"comma-separated suites to run; default {','.join(SUITES)}")
    parser.add_argument("--modes", default=",".join(GUARDED_MODES),
                        help="comma-separated guarded modes to run (bare always runs as the "
                             f"baseline); default {','.join(GUARDED_MODES)}")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="where the sdists and the results are kept (default: .peers/)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds one mode of one suite may take before it is killed "
                             "(default 900)")
    parser.add_argument("--skip-install", action="store_true",
                        help="do not install the peer tests' requirements")
    args = parser.parse_args(argv)
    args.suites = [SUITES[name] for name in parse_list(args.suite, tuple(SUITES), "suite",
                                                       parser)]
    if not args.suites:
        parser.error("no suite chosen")
    modes = parse_list(args.modes, ("bare", *GUARDED_MODES), "mode", parser)
    args.modes = ["bare"] + [m for m in modes if m != "bare"]
    return args, extra


def main(argv: list[str]) -> int:
    """Run every suite in every mode and compare; 0 only when no unexpected failure."""
    args, extra = parse_args(argv)
    try:
        differences = parse_differences(DELIBERATE_DIFFERENCES, set(SUITES), set(GUARDED_MODES))
    except DifferencesError as exc:
        print(f"{DIFFERENCES_FILE}: {exc}")
        return 1
    cache = args.cache_dir.resolve()
    started = time.monotonic()
    redis_server = None
    if any(suite.needs_redis for suite in args.suites):
        sys.path.insert(0, str(REPO_ROOT))
        from tests.servers import start_redis

        redis_server = start_redis()
    try:
        results = [run_suite(suite, args.modes, cache, extra, args.timeout,
                             not args.skip_install, redis_server and redis_server.url,
                             differences)
                   for suite in args.suites]
    finally:
        if redis_server is not None:
            redis_server.stop()
            shutil.rmtree(redis_server.workdir, ignore_errors=True)
    print_summary(results, time.monotonic() - started)
    return 1 if any(result.failed for result in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
