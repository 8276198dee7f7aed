"""`make audit`: the lock's pinned packages against a vulnerability service, with pip-audit.

pip-audit asks the service about each pinned name and version. A package the service has no answer for
it reports as skipped, and it still exits 0: a service out of reach, or one that answers "not found" for
everything, would pass as a clean audit. So this asks the service about the lock's first pin before
anything else, and counts what pip-audit skipped. Exit codes: 0 every pin audited and none known to be
vulnerable; 1 known vulnerabilities (each listed with the versions that fix it); 2 nothing or not
everything was audited, said in one line (service unreachable or not answering, pip-audit missing).

Standard library only: it runs with any Python 3.11, before the project is installed. pip-audit lives in
a venv of its own under the tools folder (not a dependency of the project), made on first use.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICES = {
    # What pip-audit itself asks (its PyPI and OSV services).
    "pypi": "https://pypi.org/pypi",
    "osv": "https://api.osv.dev/v1/query",
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
TIMEOUT_SECONDS = 15


@dataclass(frozen=True)
class Outcome:
    code: int
    lines: list[str]


def read_pins(lock: Path) -> list[tuple[str, str]]:
    """The (name, version) pairs of a lock file's requirement lines."""
    return [(m[1], m[2]) for line in lock.read_text().splitlines() if (m := PIN.match(line))]


def probe(service: str, url: str, name: str, version: str) -> str | None:
    """None if the service answers for a release the lock pins (which exists), else why not, in words."""
    if service == "osv":
        body = json.dumps({"package": {"name": name, "ecosystem": "PyPI"}, "version": version}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        where = url
    else:
        where = f"{url}/{name}/{version}/json"
        request = urllib.request.Request(where, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
            json.load(answer)
    except urllib.error.HTTPError as e:
        return f"{where} answered HTTP {e.code} for {name} {version}, a release the lock pins"
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"{where} is not reachable from here ({reason})"
    except ValueError:
        return f"{where} answered something other than JSON for {name} {version}"
    return None


def ensure_pip_audit(tools: Path, version: str) -> Path:
    """pip-audit==VERSION in a venv of its own under TOOLS, made the first time."""
    venv = tools / f"pip-audit-{version}"
    program = venv / "bin" / "pip-audit"
    if not program.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"pip-audit=={version}"], check=True
        )
    return program


def judge(report: dict[str, Any], service: str, pinned: int) -> Outcome:
    """What pip-audit's JSON report says, as an exit code and lines for people."""
    dependencies = report.get("dependencies", [])
    skipped = [d for d in dependencies if d.get("skip_reason")]
    vulnerable = [d for d in dependencies if d.get("vulns")]
    lines = []
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
            aliases = ", ".join(vuln.get("aliases") or [])
            lines.append(
                f"{dep['name']} {dep['version']}: {vuln['id']}{f' ({aliases})' if aliases else ''}, fixed in {fixes}"
            )
    if skipped:
        first = skipped[0]["skip_reason"]
        lines.append(
            f"make audit: {service} had no answer for {len(skipped)} of {pinned} pinned packages "
            f"(e.g. {first}): the lock was NOT fully audited"
        )
        return Outcome(2, lines)
    if vulnerable:
        count = sum(len(d["vulns"]) for d in vulnerable)
        lines.append(f"make audit: {count} known vulnerabilities in {len(vulnerable)} of {pinned} pinned packages")
        return Outcome(1, lines)
    return Outcome(0, [f"make audit: {pinned} pinned packages audited against {service}: no known vulnerabilities"])


def audit(lock: Path, service: str, url: str, pip_audit: Path | None, tools: Path, version: str) -> Outcome:
    pins = read_pins(lock)
    if not pins:
        return Outcome(2, [f"make audit: {lock} pins nothing: nothing was audited"])
    why = probe(service, url, *pins[0])
    if why is not None:
        return Outcome(
            2, [f"make audit: the {service} vulnerability service cannot be asked: {why}. Nothing was audited."]
        )
    try:
        program = pip_audit or ensure_pip_audit(tools, version)
    except (subprocess.CalledProcessError, OSError) as e:
        return Outcome(2, [f"make audit: pip-audit {version} could not be installed ({e}): nothing was audited"])
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "report.json"
        command = [str(program), "--requirement", str(lock), "--disable-pip", "--no-deps", "--format", "json",
                   "--output", str(output), "--vulnerability-service", service, "--progress-spinner", "off",
                   "--aliases", "on", "--desc", "off"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode not in (0, 1) or not output.exists():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return Outcome(2, [f"make audit: pip-audit failed (exit {done.returncode}: {last}): nothing was audited"])
        return judge(json.loads(output.read_text()), service, len(pins))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=Path("requirements/dev.lock"))
    parser.add_argument("--service", choices=sorted(SERVICES), default="pypi")
    parser.add_argument("--service-url", help="the service's address (default: the one pip-audit asks)")
    parser.add_argument("--tools", type=Path, default=Path(".offers-workers/tools"))
    parser.add_argument("--pip-audit-version", default="2.10.1")
    parser.add_argument("--pip-audit", type=Path, help="a pip-audit to run instead of the tools' own")
    args = parser.parse_args(argv)
    url = args.service_url or SERVICES[args.service]
    outcome = audit(args.lock, args.service, url, args.pip_audit, args.tools, args.pip_audit_version)
    for line in outcome.lines:
        print(line)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
