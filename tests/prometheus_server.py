"""A private ``prometheus`` server for end-to-end tests: a free port, a throw-away TSDB, the
rule files and scrape targets a test gives it, and its HTTP API.

Needs the Debian package ``prometheus``: without it a test fails, it never skips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port, stop_process, wait_for

PROMETHEUS_PACKAGE = "prometheus"


class PrometheusAPIError(Exception):
    """Prometheus answered an API call with an error (e.g. a query that does not evaluate)."""


class Prometheus:
    """A private ``prometheus`` server on a free port with a throw-away TSDB."""

    def __init__(self, tmp: Path, targets: Mapping[str, int | Sequence[int]],
                 rule_files: Mapping[str, str]) -> None:
        """Scrapes each job of ``targets`` (job name to its metrics port, or ports: one
        instance each) on 127.0.0.1 every second, and evaluates ``rule_files`` (file name to
        text) every second."""
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus not found on PATH: install the Debian package "
                        f"`{PROMETHEUS_PACKAGE}` (apt-get install {PROMETHEUS_PACKAGE})")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = tmp / "rules"
        rules.mkdir()
        for name, text in rule_files.items():
            (rules / name).write_text(text, encoding="utf-8")
        config = {  # JSON is YAML: no YAML library needed
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(rules / name) for name in rule_files],
            "scrape_configs": [{
                "job_name": job,
                "static_configs": [{"targets": [f"127.0.0.1:{port}"
                                                for port in _ports(ports)]}],
            } for job, ports in targets.items()],
        }
        config_file = tmp / "prometheus.yml"
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.log_path = tmp / "prometheus.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log_text()}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=timeout, interval=0.1)

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of one API answer; raises PrometheusAPIError with Prometheus's message."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusAPIError(
                f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        """The result of an instant query at the current time."""
        data = self.api("query", query=expr)
        result = data["result"]
        return result if isinstance(result, list) else [result]

    def alerts_by_task(self, job: str, state: str = "firing",
                       names: Collection[str] | None = None) -> set[tuple[str, str]]:
        """(alert name, task) of ``job``'s alerts in ``state`` (task empty when the alert
        has none), of the alerts in ``names`` when given."""
        return {(a["labels"]["alertname"], a["labels"].get("task", ""))
                for a in self.api("alerts")["alerts"]
                if a["state"] == state and a["labels"].get("job") == job
                and (names is None or a["labels"]["alertname"] in names)}

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.proc, 10.0)
        self.log.close()


def _ports(ports: int | Sequence[int]) -> list[int]:
    return [ports] if isinstance(ports, int) else list(ports)
