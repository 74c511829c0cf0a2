"""The peer suites: which library's own tests are run, from its sdist, and what they need."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PeerSuite:
    """One library's test suite, taken from the sdist of the installed version."""

    name: str
    #: The distribution whose installed version is tested (and whose sdist is fetched).
    distribution: str
    #: Paths given to pytest, relative to the unpacked sdist.
    test_paths: tuple[str, ...]
    #: A file that is there once the sdist is fully unpacked.
    marker: str
    #: Top-level folders of the sdist left out, so that the installed package is imported.
    package_dirs: tuple[str, ...]
    #: What the tests import beyond the library and pytest, installed when not met.
    #: ``{version}`` stands for the installed version of ``distribution``.
    requirements: tuple[str, ...] = ()
    #: The suite's own pytest configuration (``-c``); without a pytest section it is empty,
    #: so that the configuration of a folder above (this repository's) is never used.
    config_file: str = "pyproject.toml"
    #: Further pytest arguments, before the caller's.
    pytest_args: tuple[str, ...] = ()
    #: Whether the suite gets a private redis-server (its URL in TELEMETRY_GUARD_PEER_REDIS_URL).
    needs_redis: bool = False
    #: Why the suite is run the way it is, printed before it runs.
    notes: tuple[str, ...] = ()


CELERY = PeerSuite(
    name="celery",
    distribution="celery",
    test_paths=("t/unit/tasks", "t/unit/app/test_app.py", "t/unit/worker/test_request.py"),
    marker="t/unit/conftest.py",
    package_dirs=("celery",),
    # cryptography: celery.security, patched by test_App.test_setup_security.
    requirements=("freezegun>=1.5", "pydantic>=2.4", "cryptography>=42"),
    pytest_args=("-p", "no:forked"),
)

OTEL_CELERY = PeerSuite(
    name="otel-celery",
    distribution="opentelemetry-instrumentation-celery",
    test_paths=("tests",),
    marker="tests/test_tasks.py",
    package_dirs=("src",),
    requirements=("opentelemetry-test-utils=={version}",),
    pytest_args=("-p", "no:forked"),
)

SENTRY_CELERY = PeerSuite(
    name="sentry-celery",
    distribution="sentry-sdk",
    test_paths=("tests/integrations/celery",),
    marker="tests/conftest.py",
    package_dirs=("sentry_sdk",),
    # test_newrelic_interference imports newrelic's Celery hooks; sentry-sdk's own test
    # matrix pins the version below (later ones renamed the hooks it patches).
    requirements=("newrelic<10.17.0",),
    # The sdist's addopts want pytest-cov and -s; ours are enough. pytest-forked (1.7.5)
    # cannot send pytest 9.2's reports back from its child (every test ends "EXITED with
    # status 3"), so the @pytest.mark.forked tests run in-process, where they pass bare.
    pytest_args=("-o", "addopts=", "-p", "no:forked", "-p", "peer_redis"),
    needs_redis=True,
    notes=("integration_tests/ (Celery beat with a worker) runs against a private "
           "redis-server on a free port, not the 127.0.0.1:6379 it names",
           "@pytest.mark.forked tests run in-process (pytest-forked fails on pytest >= 9.2)"),
)

SUITES: dict[str, PeerSuite] = {s.name: s for s in (CELERY, OTEL_CELERY, SENTRY_CELERY)}
