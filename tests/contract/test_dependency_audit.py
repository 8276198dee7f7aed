"""`make audit` never passes silently: a service out of reach, or one with no answer, is said in one line
and exits 2; a known vulnerability exits 1 and names the version that fixes it.

The service is a server on a loopback port of this test's own and pip-audit a stand-in that writes the
report pip-audit writes, so nothing here leaves the machine (`make audit` itself asks the real one).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from offers_workers.local.dependency_audit import judge, read_pins

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "dev.lock"


def run_audit(
    service_url: str, tmp_path: Path, report: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "pip-audit"
    written = json.dumps(report or {"dependencies": [], "fixes": []})
    fake.write_text(
        f"#!{sys.executable}\nimport sys\nargs = sys.argv\nopen(args[args.index('--output') + 1], 'w').write({written!r})\n"
    )
    fake.chmod(0o755)
    return subprocess.run(
        [sys.executable, "-m", "offers_workers.local.dependency_audit", "--lock", str(LOCK),
         "--service-url", service_url, "--pip-audit", str(fake)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def service() -> Iterator[tuple[str, list[int]]]:
    """A stand-in for PyPI's JSON API on a free loopback port; the list holds the status it answers."""
    status = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status[0])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"info": {}, "vulnerabilities": []}')

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pypi", status
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_service_is_said_in_one_line_and_fails(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run_audit(f"http://127.0.0.1:{port}/pypi", tmp_path)
    assert done.returncode == 2, done
    assert done.stdout.strip().count("\n") == 0 and "is not reachable from here" in done.stdout, done.stdout
    assert "Nothing was audited" in done.stdout


def test_a_service_that_does_not_know_the_pinned_release_fails(tmp_path: Path, service: tuple[str, list[int]]) -> None:
    url, status = service
    status[0] = 404
    done = run_audit(url, tmp_path)
    assert done.returncode == 2 and "answered HTTP 404" in done.stdout, done


def test_a_clean_report_passes_and_a_vulnerable_pin_names_its_fix(
    tmp_path: Path, service: tuple[str, list[int]]
) -> None:
    url, _ = service
    name, version = read_pins(LOCK)[0]
    clean = {"dependencies": [{"name": name, "version": version, "vulns": []}], "fixes": []}
    done = run_audit(url, tmp_path, clean)
    assert done.returncode == 0 and "no known vulnerabilities" in done.stdout, done
    vuln = {"id": "PYSEC-0000-1", "fix_versions": ["99.0"], "aliases": ["CVE-0000-1"], "description": ""}
    vulnerable = {"dependencies": [{"name": name, "version": version, "vulns": [vuln]}], "fixes": []}
    done = run_audit(url, tmp_path, vulnerable)
    assert done.returncode == 1, done
    assert f"{name} {version}: PYSEC-0000-1 (CVE-0000-1), fixed in 99.0" in done.stdout


def test_packages_the_service_skipped_are_not_a_pass() -> None:
    report = {
        "dependencies": [{"name": "rich", "skip_reason": "Dependency not found on PyPI and could not be audited"}]
    }
    outcome = judge(report, "pypi", 140)
    assert outcome.code == 2 and "NOT fully audited" in outcome.lines[-1] and "1 of 140" in outcome.lines[-1]


def test_the_lock_has_pins_to_audit() -> None:
    pins = read_pins(LOCK)
    assert len(pins) > 100 and all("==" not in v for _, v in pins), pins[:3]
