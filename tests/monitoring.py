"""Prometheus, Alertmanager and promtool as the tests run them: plain processes of the Debian
packages (`prometheus`, `prometheus-alertmanager`, which `.ci/run` installs), each stopped at the end.
Where a binary is missing the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from offers_workers.local.embedded import free_port
from offers_workers.local.fleet import Fleet, read_procfile
from tests.conftest import project_root, wait_until

MONITORING = project_root() / "monitoring"
ALERTS = MONITORING / "alerts.yml"


def binary(*names: str) -> str | None:
    """The first of ``names`` on PATH (Debian names Alertmanager `prometheus-alertmanager`)."""
    return next((found for name in names if (found := shutil.which(name))), None)


def missing(*tools: tuple[str, ...]) -> str | None:
    """Why the tools cannot run here, or None."""
    absent = [names[0] for names in tools if binary(*names) is None]
    if absent:
        return f"{', '.join(absent)} not installed (Debian packages prometheus, prometheus-alertmanager; .ci/run installs them)"
    return None


PROMTOOL = ("promtool",)
PROMETHEUS = ("prometheus",)
ALERTMANAGER = ("prometheus-alertmanager", "alertmanager")


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def fast_rules(target: Path, window: str = "20s", hold: str = "2s") -> Path:
    """The shipped rules with every range window set to ``window`` and every ``for`` to ``hold``:
    the same expressions and annotations, on a clock a test can wait for."""
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[\d+[smhd]\]", f"[{window}]", rule["expr"])
            if "for" in rule:
                rule["for"] = hold
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


class Receiver:
    """A webhook receiver standing for PagerDuty: records every notification Alertmanager sends."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/pagerduty"

    def alerts(self, status: str) -> list[dict[str, Any]]:
        """Every alert notified with ``status`` (firing or resolved), in arrival order."""
        return [a for n in list(self.notifications) for a in n["alerts"] if a["status"] == status]

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def _process(command: list[str], log: Path, ready_url: str, timeout: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"{command[0]} exited: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(ready_url, timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"{command[0]} not ready: {log.read_text()[-2000:]}"
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def alertmanager(workdir: Path, webhook_url: str) -> Iterator[str]:
    """Alertmanager routing every alert to the webhook at once, resolutions included; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {
            "receiver": "pagerduty",
            "group_by": ["alertname", "partner", "stage"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "pagerduty", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        str(binary(*ALERTMANAGER)),
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no peers: no gossip port
    ]
    url = f"http://127.0.0.1:{port}"
    with _process(command, workdir / "alertmanager.log", f"{url}/-/ready"):
        yield url


@contextmanager
def prometheus(workdir: Path, metrics_port: int, alertmanager_url: str, rules: Path) -> Iterator[str]:
    """Prometheus scraping the fleet's /metrics every second as job `offers-workers` and evaluating
    ``rules`` every second; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.split("//")[1]]}]}]},
        "scrape_configs": [
            {
                "job_name": "offers-workers",
                # A scrape asks the workers which queues they consume, which takes a second.
                "scrape_interval": "2s",
                "scrape_timeout": "2s",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        str(binary(*PROMETHEUS)),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--rules.alert.resend-delay=1s",
    ]
    url = f"http://127.0.0.1:{port}"
    with _process(command, workdir / "prometheus.log", f"{url}/-/ready"):
        yield url


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    with urllib.request.urlopen(
        f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=10
    ) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def read_metrics(port: int) -> str | None:
    """The text of a metrics process's /metrics, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()
    except OSError:
        return None


def scrape_once(env: dict[str, str], log_dir: Path) -> str:
    """Start the Procfile's `metrics` process in ``env``, read /metrics once, stop it."""
    port = free_port()
    metrics = next(t for t in read_procfile() if t.name == "metrics")
    with Fleet(env | {"OFFERS_METRICS_PORT": str(port)}, log_dir) as fleet:
        fleet.start(metrics)
        return wait_until(lambda: read_metrics(port), timeout=30, message=f"/metrics (log in {log_dir})")
