"""The shipped alert rules: valid for promtool, each tested firing and quiet, and each documented in
docs/on-call.md's "Alerts" section with the link its `runbook_url` gives."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests import monitoring
from tests.conftest import project_root
from tests.contract.markdown import anchors, section

ON_CALL = project_root() / "docs" / "on-call.md"
RULES = monitoring.alert_rules()
TESTS = yaml.safe_load((monitoring.MONITORING / "alerts.test.yml").read_text())

needs_promtool = pytest.mark.skipif(bool(reason := monitoring.missing(monitoring.PROMTOOL)), reason=reason or "")


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(monitoring.ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in checked.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    tested = subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=monitoring.MONITORING,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for test in TESTS["tests"] for case in test.get("alert_rule_test", [])]
    for rule in RULES:
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']}: no case where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']}: no case where it stays quiet"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_every_alert_says_how_bad_what_and_where_to_read(rule) -> None:
    assert rule["labels"]["severity"] in {"page", "warning"}
    assert rule["annotations"]["summary"] and rule["annotations"]["first_checks"]
    link = rule["annotations"]["runbook_url"]
    assert link == f"docs/on-call.md#{rule['alert'].lower()}", link
    assert link.split("#")[1] in anchors(ON_CALL.read_text()), f"docs/on-call.md has no heading for {rule['alert']}"


def test_the_on_call_page_lists_every_alert_and_no_other() -> None:
    on_call = section(ON_CALL, "## Alerts")
    listed = re.findall(r"^### (Offers\w+)$", on_call, flags=re.M)
    assert listed == [rule["alert"] for rule in RULES]
    for rule in RULES:
        entry = on_call[on_call.index(f"### {rule['alert']}\n") :].split("\n\n")[0]
        assert f"`{rule['labels']['severity']}`" in entry, entry


needs_amtool = pytest.mark.skipif(bool(reason := monitoring.missing(("amtool",))), reason=reason or "")
ROUTING = monitoring.MONITORING / "alertmanager.example.yml"


@needs_amtool
def test_the_routing_example_is_valid() -> None:
    checked = subprocess.run(["amtool", "check-config", str(ROUTING)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_amtool
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_pages_reach_pagerduty_and_every_alert_the_team(rule) -> None:
    routed = subprocess.run(
        ["amtool", "config", "routes", "test", f"--config.file={ROUTING}"]
        + [f"{k}={v}" for k, v in {"alertname": rule["alert"], **rule["labels"]}.items()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    receivers = set(routed.stdout.strip().split(","))
    expected = {"offers-submission-pagerduty", "eng-offers"} if rule["labels"]["severity"] == "page" else {"eng-offers"}
    assert receivers == expected, routed.stdout + routed.stderr
