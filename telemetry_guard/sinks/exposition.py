"""The ``/metrics`` endpoint, served by the worker's main process only.

With ``PROMETHEUS_MULTIPROC_DIR`` set (prefork), every child writes its own
files; the main process cleans the directory when the worker starts, and
before each scrape folds the files of exited children into one ``merged``
file per metric type, so that child churn (``worker_max_tasks_per_child``)
neither grows the directory nor slows scrapes.
"""

from __future__ import annotations

import glob
import os
import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .breaker_states import BreakerStateCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: File-name prefixes whose dead-process files are folded into a merged file.
ARCHIVED_TYPES = ("counter", "histogram")
MERGED = "merged"
#: A metrics file shorter than this has not been initialised by its process yet.
MMAP_HEADER_BYTES = 8
#: Installers of the collectors read at scrape time; a multiprocess registry gets them too.
SCRAPE_COLLECTORS: list[Any] = [BreakerStateCollector.install]


def multiproc_dir() -> str | None:
    """The multiprocess directory when multiprocess mode is on."""
    return os.environ.get(MULTIPROC_ENV) or None


def clean_multiproc_dir(path: str) -> None:
    """Remove every metrics file left by an earlier run (called when the worker starts)."""
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def _pid_of(filename: str) -> str:
    return os.path.basename(filename)[:-3].rsplit("_", 1)[-1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def archive_dead_processes(path: str) -> int:
    """Fold the counter and histogram files of exited processes into ``<type>_merged.db``.

    Returns how many files were folded. Live-gauge files of dead processes are
    removed (``mark_process_dead``).
    """
    by_pid: dict[str, list[str]] = {}
    for name in glob.glob(os.path.join(path, "*.db")):
        pid = _pid_of(name)
        if pid != MERGED:
            by_pid.setdefault(pid, []).append(name)
    folded = 0
    for pid, files in by_pid.items():
        if not pid.isdigit() or _alive(int(pid)):
            continue
        mark_process_dead(int(pid), path)
        for typ in ARCHIVED_TYPES:
            dead = [f for f in files if os.path.basename(f).startswith(typ + "_")]
            for empty in [f for f in dead if os.path.getsize(f) < MMAP_HEADER_BYTES]:
                os.remove(empty)  # the process died before writing anything
                dead.remove(empty)
            if dead:
                _fold(path, typ, dead)
                folded += len(dead)
    return folded


def _fold(path: str, typ: str, dead_files: list[str]) -> None:
    merged = os.path.join(path, f"{typ}_{MERGED}.db")
    sources = ([merged] if os.path.exists(merged) else []) + dead_files
    metrics = MultiProcessCollector.merge(sources, accumulate=False)
    tmp = merged + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    out = MmapedDict(tmp)
    try:
        for metric in metrics:
            for sample in metric.samples:
                key = mmap_key(metric.name, sample.name, list(sample.labels),
                               list(sample.labels.values()), metric.documentation)
                out.write_value(key, sample.value, 0.0)
    finally:
        out.close()
    os.replace(tmp, merged)
    for name in dead_files:
        os.remove(name)


class ArchivingCollector(MultiProcessCollector):  # type: ignore[misc]
    """A multiprocess collector that folds exited children's files before each scrape."""

    def __init__(self, registry: Any, path: str) -> None:
        self._lock = threading.Lock()
        super().__init__(registry, path)

    def collect(self) -> Any:
        with self._lock:
            try:
                archive_dead_processes(self._path)
            except (OSError, ValueError):
                pass  # folding is an optimisation: serve every file as it is
            return self.merge(_initialised_files(self._path), accumulate=True)


def _initialised_files(path: str) -> list[str]:
    """The ``*.db`` files past their header: a child that just started may have an empty one."""
    files = []
    for name in glob.glob(os.path.join(path, "*.db")):
        try:
            if os.path.getsize(name) >= MMAP_HEADER_BYTES:
                files.append(name)
        except FileNotFoundError:
            continue
    return files


def metrics_registry() -> Any:
    """The registry to expose: multiprocess-aware when ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    path = multiproc_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    ArchivingCollector(registry, path)
    for install in tuple(SCRAPE_COLLECTORS):
        install(registry)
    return registry


def serve_metrics(port: int, address: str = "0.0.0.0") -> Any:
    """Start the ``/metrics`` HTTP server in a daemon thread; returns the server."""
    server, _thread = start_http_server(port, addr=address, registry=metrics_registry())
    return server
