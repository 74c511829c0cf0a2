"""Tests for the package as users get it: the wheel's files and metadata, and no SDK needed."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import telemetry_guard

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "telemetry_guard"
#: What a wheel is built from: pyproject.toml names the readme; the license is found by name.
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE")
HOME = "https://github.com/telemetry-guard/telemetry-guard"
DOCS = ROOT / "docs"
#: A markdown link's target: ``[text](target)``.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")

#: Blocks ``opentelemetry.sdk`` in a subprocess, as if only opentelemetry-api were installed.
WITHOUT_SDK = textwrap.dedent('''
    import importlib.abc
    import sys

    class NoOpenTelemetrySdk(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry.sdk" or name.startswith("opentelemetry.sdk."):
                raise ImportError(f"No module named {name!r} (opentelemetry-sdk not installed)")
            return None

    sys.meta_path.insert(0, NoOpenTelemetrySdk())
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the import blocker let opentelemetry.sdk through")
''')


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel `pip wheel` builds from a copy of the sources (no build/ left in the tree)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / PACKAGE.name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = work / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
         str(source)],
        capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("telemetry_guard-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def metadata(wheel: zipfile.ZipFile) -> Message:
    """The wheel's METADATA file, parsed."""
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def run_without_sdk(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter importing this tree, opentelemetry.sdk blocked."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", WITHOUT_SDK + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def last_line(ran: subprocess.CompletedProcess[str]) -> str:
    """The script's answer: the last line it printed (log lines may come before it)."""
    return ran.stdout.splitlines()[-1]


def test_the_wheel_ships_py_typed_the_lua_scripts_and_the_license(
        wheel: zipfile.ZipFile) -> None:
    """py.typed, every lua script of the package and the MIT LICENSE are inside the wheel."""
    names = set(wheel.namelist())
    assert "telemetry_guard/py.typed" in names
    scripts = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.lua")}
    assert scripts, "the package has no lua scripts to ship"
    assert scripts <= names, sorted(scripts - names)
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    text = wheel.read(license_file).decode()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 The telemetry_guard authors" in text


def test_the_wheel_metadata_has_classifiers_urls_and_license(wheel: zipfile.ZipFile) -> None:
    """METADATA carries the classifiers, the four project URLs and the MIT license."""
    meta = metadata(wheel)
    assert meta["Name"] == "telemetry-guard"
    assert set(meta.get_all("Classifier")) >= {
        "Development Status :: 3 - Alpha",
        "Framework :: Celery",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: System :: Monitoring",
        "Typing :: Typed",
    }
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL"))
    assert urls == {
        "Homepage": HOME,
        "Documentation": f"{HOME}/tree/main/docs",
        "Changelog": f"{HOME}/blob/main/CHANGELOG.md",
        "Issues": f"{HOME}/issues",
    }
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]


def test_the_sdk_is_required_only_by_the_test_and_demo_extras(wheel: zipfile.ZipFile) -> None:
    """Requires-Dist has opentelemetry-api for everyone and opentelemetry-sdk only in extras."""
    requirements = [Requirement(line) for line in metadata(wheel).get_all("Requires-Dist")]
    unconditional = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    assert "opentelemetry-api" in unconditional
    assert "opentelemetry-sdk" not in unconditional
    sdk_extras = {
        extra for r in requirements if canonicalize_name(r.name) == "opentelemetry-sdk"
        for extra in ("test", "demo") if r.marker.evaluate({"extra": extra})
    }
    assert sdk_extras == {"test", "demo"}


def test_the_version_is_the_one_in_pyproject(wheel: zipfile.ZipFile) -> None:
    """telemetry_guard.__version__ is the installed distribution's version, from pyproject."""
    assert telemetry_guard.__version__ == metadata(wheel)["Version"]


def test_the_version_is_0_unknown_when_the_package_is_not_installed() -> None:
    """Imported from a tree with no installed distribution, __version__ is "0+unknown"."""
    ran = run_without_sdk('''
        import importlib.metadata

        def not_installed(name):
            raise importlib.metadata.PackageNotFoundError(name)

        importlib.metadata.version = not_installed
        import telemetry_guard
        print(telemetry_guard.__version__)
    ''')
    assert ran.returncode == 0, ran.stderr
    assert last_line(ran) == "0+unknown"


def test_every_module_but_the_demo_imports_without_the_sdk() -> None:
    """Each telemetry_guard module outside the demo imports with opentelemetry.sdk missing."""
    ran = run_without_sdk('''
        import importlib
        import pkgutil
        import telemetry_guard

        SKIPPED = ("telemetry_guard.demo", "telemetry_guard.cli.demo")
        imported = 0
        for module in pkgutil.walk_packages(telemetry_guard.__path__, "telemetry_guard."):
            if module.name.startswith(SKIPPED) or module.name.endswith(".__main__"):
                continue
            importlib.import_module(module.name)
            imported += 1
        assert not [m for m in sys.modules if m.startswith("opentelemetry.sdk")]
        print(imported)
    ''')
    assert ran.returncode == 0, ran.stderr
    assert int(last_line(ran)) > 20


def test_a_guarded_app_reports_failures_without_the_sdk() -> None:
    """Without opentelemetry-sdk a GuardedTask and a plain task still fail into events."""
    ran = run_without_sdk('''
        from celery import Celery

        from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard
        from telemetry_guard.testing import capture_events

        app = Celery("no_sdk", broker="memory://", set_as_current=False)
        app.conf.task_always_eager = True
        TelemetryGuard(app, redis_url=None)

        @app.task(bind=True, base=GuardedTask, name="no_sdk.charge",
                  retry_policy=RetryPolicy(max_retries=1, base_delay=0, max_delay=0.01))
        def charge(self, order_id):
            raise ConnectionError(f"gateway down for {order_id}")

        @app.task(name="no_sdk.plain")
        def plain(order_id):
            raise ValueError(f"bad order {order_id}")

        with capture_events() as events:
            guarded = charge.delay(7)
            observed = plain.delay(8)
        assert isinstance(guarded.result, ConnectionError), guarded.result
        assert isinstance(observed.result, ValueError), observed.result
        print(sorted((e.task_name, e.decision) for e in events))
        assert not [m for m in sys.modules if m.startswith("opentelemetry.sdk")]
    ''')
    assert ran.returncode == 0, ran.stderr
    assert last_line(ran) == str(sorted([
        ("no_sdk.charge", "retry"), ("no_sdk.charge", "give_up"), ("no_sdk.plain", "give_up"),
    ]))


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def outside_code_blocks(path: Path) -> str:
    """A markdown file's text without its fenced code blocks."""
    return FENCED.sub("", path.read_text(encoding="utf-8"))


def prose(path: Path) -> str:
    """A markdown file's text without its code blocks and code spans."""
    return CODE_SPAN.sub("", outside_code_blocks(path))


def anchors(path: Path) -> set[str]:
    """The fragments of every heading of a markdown file."""
    return {github_anchor(line.lstrip("#")) for line in outside_code_blocks(path).splitlines()
            if line.startswith("#")}


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    """Each relative link of README.md and docs/*.md names a file, and a heading in it."""
    broken = []
    for document in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in LINK.findall(prose(document)):
            if re.match(r"[a-z]+:", target):
                continue
            name, _, fragment = target.partition("#")
            linked = (document.parent / name).resolve() if name else document
            if not linked.exists():
                broken.append(f"{document.name}: {target} (no such file)")
            elif fragment and fragment not in anchors(linked):
                broken.append(f"{document.name}: {target} (no such heading)")
    assert broken == []


def test_the_readme_links_every_docs_page() -> None:
    """README.md's table of contents reaches every page under docs/."""
    linked = {target.partition("#")[0] for target in LINK.findall(prose(ROOT / "README.md"))}
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.md")}
    assert pages - linked == set()
