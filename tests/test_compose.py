"""Tests for docker-compose.yml and deploy/: the stack validates and is wired as documented.

No Docker engine is needed: ``docker-compose config`` validates and resolves the file
(Debian package ``docker-compose``), ``promtool check config`` the Prometheus
configuration with the alert rules as the stack mounts them (Debian package
``prometheus``) and ``amtool check-config`` Alertmanager's configuration as the stack
rewrites it (Debian package ``prometheus-alertmanager``). Without these binaries the
tests fail, they never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from celery import Celery

from telemetry_guard.integration.config import Settings
from telemetry_guard.notify import EmailConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
COMPOSE_PACKAGE = "docker-compose"
PROMETHEUS_PACKAGE = "prometheus"
ALERTMANAGER_PACKAGE = "prometheus-alertmanager"
NOTIFICATION_QUEUE = "telemetry_guard.notifications"
SMTP_CATCHERS = ("axllent/mailpit", "mailhog/mailhog")
#: The YAML → JSON conversion, run in an interpreter that has PyYAML.
TO_JSON = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: install the Debian package `{package}` "
                    f"(apt-get install {package})")
    return path


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f docker-compose.yml <args>``, without the caller's stack settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TELEMETRY_GUARD_", "GRAFANA_", "COMPOSE_"))}
    return subprocess.run(
        [_binary("docker-compose", COMPOSE_PACKAGE), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def _yaml_interpreter() -> str:
    """A Python that can import PyYAML: this one, or docker-compose v1's own."""
    candidates = [sys.executable]
    compose = shutil.which("docker-compose")
    if compose is not None:
        with open(compose, "rb") as script:
            first = script.readline().decode("utf-8", "replace")
        if first.startswith("#!") and "python" in first:
            candidates.append(first[2:].split()[0])
    candidates.append("/usr/bin/python3")
    for interpreter in candidates:
        if shutil.which(interpreter) and subprocess.run(
                [interpreter, "-c", "import yaml"], capture_output=True).returncode == 0:
            return interpreter
    pytest.fail("no Python with PyYAML to read YAML: install the Debian package `python3-yaml`")


def load_yaml(text: str) -> Any:
    """The YAML document ``text`` as plain data."""
    result = subprocess.run([_yaml_interpreter(), "-c", TO_JSON], input=text,
                            capture_output=True, text=True, timeout=30, check=True)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The resolved compose model: ``config --format json`` (v2), else ``config``'s YAML (v1)."""
    as_json = _compose("config", "--format", "json")
    if as_json.returncode == 0 and as_json.stdout.lstrip().startswith("{"):
        return json.loads(as_json.stdout)  # type: ignore[no-any-return]
    resolved = _compose("config")
    assert resolved.returncode == 0, resolved.stderr
    return load_yaml(resolved.stdout)  # type: ignore[no-any-return]


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (compose allows a list of ``K=V`` too)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(part) for part in cmd]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: container path → host path."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        elif volume.get("type", "bind") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        if source.startswith(("/", ".")):
            found[target] = str((ROOT / source).resolve())
    return found


def tmpfs_paths(service: dict[str, Any]) -> set[str]:
    paths = service.get("tmpfs") or []
    paths = [paths] if isinstance(paths, str) else paths
    found = {p.split(":")[0] for p in paths}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict) and volume.get("type") == "tmpfs":
            found.add(volume["target"])
    return found


def service_by_image(compose: dict[str, Any], *images: str) -> str:
    names = [name for name, s in services(compose).items()
             if str(s.get("image", "")).split(":")[0].removeprefix("docker.io/") in images]
    assert len(names) == 1, f"want one service running one of {images}, got {names}"
    return names[0]


def workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run a Celery worker."""
    return {name: s for name, s in services(compose).items()
            if command(s)[:1] == ["celery"] and "worker" in command(s)}


def targets_of_workers(compose: dict[str, Any]) -> list[str]:
    """``service:port`` of each worker's ``/metrics``."""
    return [f"{name}:{environment(service)['TELEMETRY_GUARD_METRICS_PORT']}"
            for name, service in workers(compose).items()]


def host_file(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind ``container_path`` of a service, through its bind mounts."""
    path = PurePosixPath(container_path)
    for target, source in mounts(service).items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return Path(source, path.relative_to(target))
    raise AssertionError(f"{container_path} is not bind-mounted from the repository")


def test_compose_file_validates_with_docker_compose() -> None:
    """``docker-compose config -q`` accepts docker-compose.yml."""
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_every_service_runs_a_pinned_image_or_builds_from_the_repository(
        compose: dict[str, Any]) -> None:
    """No service runs ``latest`` or an untagged image; built images come from deploy/."""
    assert {"redis", "prometheus", "alertmanager", "grafana"} <= set(services(compose))
    for name, service in services(compose).items():
        build = service.get("build")
        if build is not None:
            context = Path(build["context"] if isinstance(build, dict) else build).resolve()
            dockerfile = context / (build.get("dockerfile", "Dockerfile")
                                    if isinstance(build, dict) else "Dockerfile")
            assert context == ROOT, f"{name}: build context {context}"
            assert dockerfile.resolve().parent == DEPLOY, f"{name}: {dockerfile}"
            continue
        image = str(service.get("image", ""))
        repository, _, tag = image.rpartition("@")[0].rpartition(":") if "@" in image \
            else image.rpartition(":")
        assert "@sha256:" in image or (repository and "/" not in tag and tag
                                       and tag != "latest"), f"{name}: unpinned image {image!r}"


def test_worker_image_installs_the_package_from_the_repository(
        compose: dict[str, Any]) -> None:
    """Every worker builds deploy/Dockerfile, which pip-installs this repository's package."""
    assert workers(compose)
    for name, service in workers(compose).items():
        assert service.get("build"), f"{name} does not build from the repository"
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^COPY .*\btelemetry_guard\b", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN .*\bpip install \.(\s|$)", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM \S+:\S+", dockerfile, re.MULTILINE), "unpinned base image"
    assert "latest" not in re.findall(r"^FROM \S+:(\S+)", dockerfile, re.MULTILINE)


def test_prefork_workers_have_a_tmpfs_metrics_dir_and_a_metrics_port(
        compose: dict[str, Any]) -> None:
    """Each worker: PROMETHEUS_MULTIPROC_DIR on a tmpfs and TELEMETRY_GUARD_METRICS_PORT."""
    for name, service in workers(compose).items():
        env = environment(service)
        assert "prefork" in command(service), name
        assert env.get("PROMETHEUS_MULTIPROC_DIR") in tmpfs_paths(service), name
        assert env.get("TELEMETRY_GUARD_METRICS_PORT", "").isdigit(), name
    queues = [command(s)[command(s).index("-Q") + 1].split(",")
              for s in workers(compose).values() if "-Q" in command(s)]
    assert [NOTIFICATION_QUEUE] in queues, "no worker dedicated to the notification queue"


def test_prometheus_loads_the_alert_rules_scrapes_the_workers_and_alerts_alertmanager(
        compose: dict[str, Any], tmp_path: Path) -> None:
    """promtool accepts the config with alerts/*.rules.yml as mounted; targets are the stack's."""
    promtool = _binary("promtool", PROMETHEUS_PACKAGE)
    prometheus = services(compose)["prometheus"]
    flags = dict(arg.split("=", 1) for arg in command(prometheus) if "=" in arg)
    config_path = flags.get("--config.file", "/etc/prometheus/prometheus.yml")
    config_file = host_file(prometheus, config_path)
    assert config_file == DEPLOY / "prometheus.yml"
    config = load_yaml(config_file.read_text(encoding="utf-8"))

    # The rule files, as the container sees them, are exactly the repository's rule files.
    rule_globs = config["rule_files"]
    mapped = [str(host_file(prometheus, pattern)) for pattern in rule_globs]
    assert sorted({p for g in mapped for p in map(str, Path(g).parent.glob(Path(g).name))}) \
        == sorted(str(p) for p in (ROOT / "alerts").glob("*.rules.yml"))
    text = config_file.read_text(encoding="utf-8")
    for pattern, host in zip(rule_globs, mapped, strict=True):
        text = text.replace(pattern, host)
    copy = tmp_path / "prometheus.yml"
    copy.write_text(text, encoding="utf-8")
    checked = subprocess.run([promtool, "check", "config", str(copy)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for rules in (ROOT / "alerts").glob("*.rules.yml"):
        assert f"Checking {rules}" in checked.stdout, checked.stdout

    targets = {t for job in config["scrape_configs"] for static in job.get("static_configs", [])
               for t in static["targets"]}
    for name, service in workers(compose).items():
        port = environment(service)["TELEMETRY_GUARD_METRICS_PORT"]
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}"
    # Beat serves the periodic state and its heartbeat, scraped under the workers' job
    # (the periodic alerts group by job).
    beat = services(compose)["beat"]
    assert command(beat)[:4] == ["celery", "-A", "stack_app", "beat"]
    beat_target = f"beat:{environment(beat)['TELEMETRY_GUARD_BEAT_METRICS_PORT']}"
    jobs = {job["job_name"]: {t for static in job.get("static_configs", [])
                              for t in static["targets"]} for job in config["scrape_configs"]}
    assert [name for name, job in jobs.items() if beat_target in job] == [
        name for name, job in jobs.items()
        if any(target in job for target in targets_of_workers(compose))]
    alertmanagers = {t for am in config["alerting"]["alertmanagers"]
                     for static in am["static_configs"] for t in static["targets"]}
    assert alertmanagers == {"alertmanager:9093"}
    assert "alertmanager" in services(compose)


def test_alertmanager_runs_the_repository_config_and_mails_the_smtp_catcher(
        compose: dict[str, Any], tmp_path: Path) -> None:
    """Alertmanager reads alerts/alertmanager.yml; its SMTP smarthost becomes the catcher."""
    amtool = _binary("amtool", ALERTMANAGER_PACKAGE)
    alertmanager = services(compose)["alertmanager"]
    assert str(ROOT / "alerts" / "alertmanager.yml") in mounts(alertmanager).values()
    script = " ".join(command(alertmanager))
    catcher = service_by_image(compose, *SMTP_CATCHERS)
    assert f"s/127\\.0\\.0\\.1:1025/{catcher}:1025/" in script, script
    source = (ROOT / "alerts" / "alertmanager.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s*smtp_smarthost:\s*127\.0\.0\.1:1025\b", source, re.MULTILINE), \
        "alerts/alertmanager.yml's smarthost changed: update the alertmanager service"
    # What the container runs: the same file with the catcher as smarthost.
    rewritten = tmp_path / "alertmanager.yml"
    rewritten.write_text(re.sub(r"127\.0\.0\.1:1025", f"{catcher}:1025", source),
                         encoding="utf-8")
    checked = subprocess.run([amtool, "check-config", str(rewritten)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards(
        compose: dict[str, Any]) -> None:
    """Grafana's provisioning points a file provider at dashboards/ as mounted."""
    grafana = services(compose)["grafana"]
    provisioning = host_file(grafana, "/etc/grafana/provisioning")
    assert provisioning == DEPLOY / "grafana" / "provisioning"

    providers = [p for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
                 for p in load_yaml(f.read_text(encoding="utf-8"))["providers"]]
    assert providers
    for provider in providers:
        assert provider["type"] == "file"
        assert host_file(grafana, provider["options"]["path"]) == ROOT / "dashboards"
    assert sorted((ROOT / "dashboards").glob("*.json")), "no dashboards to provision"

    sources = [d for f in sorted((provisioning / "datasources").glob("*.y*ml"))
               for d in load_yaml(f.read_text(encoding="utf-8"))["datasources"]]
    assert [(d["type"], d["url"], d.get("isDefault")) for d in sources] == [
        ("prometheus", "http://prometheus:9090", True)]


def test_worker_settings_are_valid_and_mail_the_smtp_catcher(compose: dict[str, Any]) -> None:
    """The workers' TELEMETRY_GUARD_* environment parses, and e-mail goes to the catcher."""
    catcher = service_by_image(compose, *SMTP_CATCHERS)
    for name, service in workers(compose).items():
        env = environment(service)
        app = Celery("compose", broker=env["CELERY_BROKER_URL"], set_as_current=False)
        try:
            settings = Settings.from_app(app, environ=env)
        finally:
            app.close()
        email = EmailConfig.from_settings(settings.email)
        assert (email.host, email.port) == (catcher, 1025), name
        assert settings.metrics_port is not None, name


def test_stack_app_defines_every_task_the_producer_sends(compose: dict[str, Any]) -> None:
    """deploy/stack_app.py imports and registers every task deploy/producer.py sends."""
    modules = {command(s)[command(s).index("-A") + 1] for s in workers(compose).values()}
    assert modules == {"stack_app"}
    check = ("import producer, stack_app; "
             "missing = sorted(set(producer.WORKLOAD) - set(stack_app.app.tasks)); "
             "assert not missing, missing; print(len(producer.WORKLOAD))")
    env = dict(os.environ, PYTHONPATH=f"{DEPLOY}{os.pathsep}{ROOT}",
               CELERY_BROKER_URL="memory://")
    env = {k: v for k, v in env.items() if not k.startswith("TELEMETRY_GUARD_")}
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True,
                            text=True, timeout=60, cwd=DEPLOY)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.splitlines()[-1]) >= 5  # after the log lines
