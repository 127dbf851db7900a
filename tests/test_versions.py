"""The lock files: they fit pyproject.toml's bounds, agree with each other, and are what is installed.

``make test-latest`` sets NEOFORGE_LATEST=1 and installs the newest releases inside the bounds
instead of the lock; there the comparison with the installed versions is skipped.
"""

from __future__ import annotations

import os
import re
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
