"""The Grafana dashboards of the runbook (monitoring/grafana/): every query parses as PromQL, and
every metric a dashboard or an alert rule reads is one the running fleet's /metrics serves."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import monitoring

pytestmark = pytest.mark.usefixtures("fleet")

DASHBOARDS = sorted((monitoring.MONITORING / "grafana").glob("*.json"))


def queries(dashboard: Path) -> list[str]:
    return [t["expr"] for panel in json.loads(dashboard.read_text())["panels"] for t in panel["targets"]]


def test_the_runbooks_two_dashboards_are_there() -> None:
    uids = {json.loads(d.read_text())["uid"] for d in DASHBOARDS}
    assert uids == {"offers-submission-overview", "offers-submission-slo"}
    for dashboard in DASHBOARDS:
        for panel in json.loads(dashboard.read_text())["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


@pytest.mark.skipif(bool(reason := monitoring.missing(monitoring.PROMTOOL)), reason=reason or "")
def test_every_query_parses(tmp_path: Path) -> None:
    # promtool parses PromQL when it checks rules: each query becomes a recording rule
    rules = [
        {"record": f"dashboard:{dashboard.stem.replace('-', '_')}:{i}", "expr": expr}
        for dashboard in DASHBOARDS
        for i, expr in enumerate(queries(dashboard))
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def served_names(offers_env: dict[str, str], log_dir: Path) -> set[str]:
    text = monitoring.scrape_once(offers_env, log_dir)
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_every_metric_read_is_served(offers_env, tmp_path: Path) -> None:
    served = served_names(offers_env, tmp_path)
    exprs = [(d.name, e) for d in DASHBOARDS for e in queries(d)]
    exprs += [(rule["alert"], rule["expr"]) for rule in monitoring.alert_rules()]
    unknown = []
    for where, expr in exprs:
        names = set(re.findall(r"\b(offers_[a-z0-9_]+)", expr))
        # The few that read none of ours read Prometheus' own series
        assert names or re.search(r"\b(ALERTS|up)\{", expr), f"{where}: {expr}"
        unknown += [f"{where}: {name}" for name in sorted(names - served)]
    assert unknown == []
