"""Run Celery's own unit tests bare, with TelemetryGuard, and with GuardedTask; compare.

Usage: ``python tests/peers/run_celery_suite.py [--modes guard,guarded_task] [-- PYTEST ARGS]``

Fetches the sdist of the installed Celery once (into ``.peers/``), installs the few
packages its tests import, runs the same test paths once per mode with the plugin
``tests.peers.guard_plugin`` and reports every test that fails or errors with the guard
but not bare. Exits 1 on a new failure, or when the harness itself did not run right.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from junit_outcomes import Outcome, RunOutcomes, new_failures, read_outcomes

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / ".peers"
PLUGIN = "tests.peers.guard_plugin"
TEST_PATHS = ("t/unit/tasks", "t/unit/app/test_app.py", "t/unit/worker/test_request.py")
GUARDED_MODES = ("guard", "guarded_task")
#: What those paths import beyond Celery and pytest: module name → requirement
#: (cryptography: celery.security, patched by test_App.test_setup_security).
TEST_REQUIREMENTS = {"freezegun": "freezegun>=1.5", "pydantic": "pydantic>=2.4",
                     "cryptography": "cryptography>=42"}
#: pytest's exit codes for "ran, all passed" and "ran, some failed".
RAN = (0, 1)


@dataclass
class ModeRun:
    """One pytest run of the peer suite."""

    mode: str
    returncode: int
    seconds: float
    log: Path
    outcomes: RunOutcomes | None
    stats: dict[str, object] | None
    summary: str


def celery_version() -> str:
    """The version of the Celery installed in this interpreter."""
    return importlib.metadata.version("celery")


def fetch_sdist(version: str, cache: Path) -> Path:
    """Download Celery's sdist into ``cache`` unless it is there already."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"celery-{version}.tar.gz"))
    if found:
        return found[0]
    print(f"downloading the celery {version} sdist into {cache}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", f"celery=={version}",
                    "--no-binary", ":all:", "--no-deps", "-d", str(cache)], check=True)
    return cache / f"celery-{version}.tar.gz"


def extract_tests(tarball: Path, version: str, cache: Path) -> Path:
    """Unpack the sdist once, without its ``celery`` package: the installed one is tested."""
    target = cache / f"celery-{version}"
    if (target / "t" / "unit" / "conftest.py").is_file():
        return target
    top = f"celery-{version}/"
    with tempfile.TemporaryDirectory(dir=cache) as scratch, tarfile.open(tarball) as archive:
        members = [m for m in archive.getmembers()
                   if m.name.startswith(top) and not m.name.startswith(top + "celery/")]
        if hasattr(tarfile, "data_filter"):
            archive.extractall(scratch, members=members, filter="data")
        else:  # Python < 3.11.4
            archive.extractall(scratch, members=members)
        shutil.rmtree(target, ignore_errors=True)
        Path(scratch, top).rename(target)
    return target


def install_test_requirements() -> None:
    """Install into this interpreter what the peer tests import and it lacks."""
    missing = [req for module, req in TEST_REQUIREMENTS.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        print(f"installing the peer tests' requirements: {' '.join(missing)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing],
                       check=True)


def peer_environment(mode: str, stats_file: Path) -> dict[str, str]:
    """This environment without TELEMETRY_GUARD_* settings, plus the mode and the repo."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_GUARD_")}
    env["TELEMETRY_GUARD_PEER_MODE"] = mode
    env["TELEMETRY_GUARD_PEER_STATS"] = str(stats_file)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH"))
                                        if p)
    return env


def last_line(path: Path) -> str:
    """The last non-empty line of a file (pytest's summary)."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def run_mode(mode: str, suite: Path, out: Path, extra: list[str], timeout: float) -> ModeRun:
    """Run the peer tests once in ``mode``; its results land in ``out``."""
    junit, log, stats_file = (out / f"{mode}.xml", out / f"{mode}.log",
                              out / f"{mode}.stats.json")
    for stale in (junit, log, stats_file):
        stale.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", *TEST_PATHS, "-q", "-p", PLUGIN,
               "-p", "no:cacheprovider", "--continue-on-collection-errors",
               f"--junitxml={junit}", "-o", "junit_family=xunit1", *extra]
    print(f"[{mode}] running celery's tests (log: {log})", flush=True)
    started = time.monotonic()
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=suite, env=peer_environment(mode, stats_file),
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


def print_table(runs: list[ModeRun]) -> None:
    """One line per mode: counts and wall time."""
    print(f"\n{'mode':<13}{'passed':>7}{'failed':>7}{'errors':>7}{'skipped':>8}{'seconds':>9}"
          f"  apps/guards")
    for run in runs:
        counts = run.outcomes.counts() if run.outcomes else {}
        stats = run.stats or {}
        print(f"{run.mode:<13}{counts.get('passed', 0):>7}{counts.get('failed', 0):>7}"
              f"{counts.get('error', 0):>7}{counts.get('skipped', 0):>8}{run.seconds:>9.1f}"
              f"  {stats.get('apps', '?')}/{stats.get('guards', '?')}")


def print_tests(title: str, tests: dict[str, Outcome]) -> None:
    """A heading and one line per test with its first error line."""
    print(f"\n{title}")
    for node, outcome in tests.items():
        print(f"  {node}\n      {outcome.status}: {outcome.message or '(no message)'}")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The runner's options; whatever follows ``--`` goes to pytest."""
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(GUARDED_MODES),
                        help="comma-separated guarded modes to run (bare always runs as the "
                             f"baseline); default {','.join(GUARDED_MODES)}")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="where the sdist and the results are kept (default: .peers/)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds one mode may take before it is killed (default 1800)")
    parser.add_argument("--skip-install", action="store_true",
                        help="do not install the peer tests' requirements")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - {"bare", *GUARDED_MODES})
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; valid: bare, "
                     f"{', '.join(GUARDED_MODES)}")
    args.modes = ["bare"] + [m for m in GUARDED_MODES if m in modes]
    return args, extra


def main(argv: list[str]) -> int:
    """Run the modes and compare; 0 only when every guarded mode adds no failure."""
    args, extra = parse_args(argv)
    version = celery_version()
    cache = args.cache_dir.resolve()
    suite = extract_tests(fetch_sdist(version, cache), version, cache)
    if not args.skip_install:
        install_test_requirements()
    out = cache / "runs" / f"celery-{version}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"celery {version} peer suite: {' '.join(TEST_PATHS)}; modes {', '.join(args.modes)}",
          flush=True)
    runs = [run_mode(mode, suite, out, extra, args.timeout) for mode in args.modes]
    print_table(runs)
    for run in runs:
        print(f"[{run.mode}] pytest: {run.summary}")
    stats = runs[-1].stats or {}
    print(f"celery from {stats.get('celery_file', '?')}; "
          f"telemetry_guard from {stats.get('telemetry_guard_file', '?')}")
    bare, guarded = runs[0], runs[1:]
    failed = False
    for run in runs:
        problems = harness_problems(run)
        if problems:
            failed = True
            print(f"\n{run.mode}: HARNESS FAILURE (see {run.log}):")
            for problem in problems:
                print(f"  {problem}")
    if bare.outcomes is not None and bare.outcomes.broken():
        print_tests(f"bare: {len(bare.outcomes.broken())} failing without the guard on this "
                    "machine (excluded from the comparison)", bare.outcomes.broken())
    verdicts = []
    for run in guarded:
        if bare.outcomes is None or run.outcomes is None:
            continue
        new = new_failures(bare.outcomes, run.outcomes)
        verdicts.append(f"{run.mode} {len(new)}")
        if new:
            failed = True
            print_tests(f"{run.mode}: {len(new)} new failure(s)", new)
    print(f"\npeer suite, new failures against bare: {', '.join(verdicts) or 'none compared'}"
          f"{'' if not failed else ' (FAILED)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
