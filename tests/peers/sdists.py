"""A peer suite's tests from the sdist of the installed version, and what they import."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from suites import PeerSuite


def installed_version(suite: PeerSuite) -> str:
    """The version of the suite's distribution installed in this interpreter."""
    return importlib.metadata.version(suite.distribution)


def archive_names(distribution: str, version: str) -> list[str]:
    """The names pip may give the sdist: as spelt, and normalised (``sentry_sdk-2.1.tar.gz``)."""
    normalised = re.sub(r"[-_.]+", "_", distribution).lower()
    return sorted({f"{distribution}-{version}.tar.gz", f"{normalised}-{version}.tar.gz"})


def cached_sdist(suite: PeerSuite, version: str, cache: Path) -> Path | None:
    """The sdist if it is in ``cache`` already."""
    found = [cache / name for name in archive_names(suite.distribution, version)]
    return next((path for path in found if path.is_file()), None)


def fetch_sdist(suite: PeerSuite, version: str, cache: Path) -> Path:
    """Download the sdist into ``cache`` unless it is there already."""
    cache.mkdir(parents=True, exist_ok=True)
    found = cached_sdist(suite, version, cache)
    if found is None:
        print(f"downloading the {suite.distribution} {version} sdist into {cache}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet",
                        f"{suite.distribution}=={version}", "--no-binary", ":all:",
                        "--no-deps", "-d", str(cache)], check=True)
        found = cached_sdist(suite, version, cache)
    if found is None:
        raise FileNotFoundError(f"pip downloaded no {suite.distribution} {version} sdist "
                                f"into {cache}")
    return found


def extract_tests(suite: PeerSuite, tarball: Path, cache: Path) -> Path:
    """Unpack the sdist once, without its package folders: the installed package is tested."""
    with tarfile.open(tarball) as archive:
        top = archive.getmembers()[0].name.split("/")[0]
        target = cache / top
        if (target / suite.marker).is_file():
            return target
        left_out = [f"{top}/{folder}" for folder in suite.package_dirs]
        members = [m for m in archive.getmembers() if m.name.startswith(top + "/")
                   and not any(m.name == d or m.name.startswith(d + "/") for d in left_out)]
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(scratch, members=members, filter="data")
            else:  # Python < 3.11.4
                archive.extractall(scratch, members=members)
            shutil.rmtree(target, ignore_errors=True)
            Path(scratch, top).rename(target)
    return target


def satisfied(requirement: str) -> bool:
    """Whether this interpreter has a distribution that meets ``requirement``."""
    wanted = Requirement(requirement)
    try:
        version = importlib.metadata.version(wanted.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return wanted.specifier.contains(version, prereleases=True)


def install_requirements(suite: PeerSuite, version: str) -> None:
    """Install into this interpreter what the suite's tests import and it lacks."""
    missing = [req for req in (r.format(version=version) for r in suite.requirements)
               if not satisfied(req)]
    if missing:
        print(f"[{suite.name}] installing the tests' requirements: {' '.join(missing)}",
              flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing],
                       check=True)
