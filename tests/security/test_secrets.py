"""No secret is ever written out: a run with distinct fake secrets, partner errors and a failing
start-up leaves none of their values in any log line or CLI output.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

from offers_workers.local.demo import check, send_samples, settled, stripe_holds
from offers_workers.local.fleet import PROJECT_ROOT, process_env
from offers_workers.local.samples import make_samples
from offers_workers.local.sandbox import PARTNERS, clear_faults, set_fault
from tests.conftest import RUN_ID, cli, wait_until
from tests.drillkit import drill


def test_distinct_fake_secrets_appear_in_no_log_line_or_output(offers_env, sandbox, tmp_path: Path) -> None:
    token = secrets.token_hex(6)
    values = {
        "OFFERS_STRIPE_API_KEY": f"sk_test_{token}stripe",
        "OFFERS_SIFT_API_KEY": f"sift{token}key",
        "OFFERS_PLAID_SECRET": f"plaid{token}secret",
        # The funnel on too: its batches fail a fifth of the time as well, and are logged and counted
        "OFFERS_SEGMENT_WRITE_KEY": f"segment{token}writekey",
    }
    # One of them through a file, as a Vault agent or a Kubernetes secret mount delivers it
    secret_file = tmp_path / "plaid-secret"
    secret_file.write_text(values["OFFERS_PLAID_SECRET"] + "\n")
    env = {k: v for k, v in values.items() if k != "OFFERS_PLAID_SECRET"} | {
        "OFFERS_PLAID_SECRET_FILE": str(secret_file)
    }
    outputs: list[str] = []

    with drill("secrets", offers_env, tmp_path / "logs", **env) as d:
        # A run with partner errors: every partner fails a fifth of its requests
        for partner in PARTNERS:
            set_fault(sandbox, partner, status=503, rate=0.2)
        try:
            samples = make_samples(60, f"secrets-{RUN_ID}", seed=31)
            send_samples(lambda offer: d.app.send_task("offers.submit", kwargs={"offer": offer}), samples)
            wait_until(
                lambda: settled(d.runtime, samples)[0] == len(samples), timeout=180, message="the samples to settle"
            )
        finally:
            clear_faults(sandbox)
        # The fake keys worked (the Plaid one read from its file): every sample reached its outcome
        _, offers, rejections = settled(d.runtime, samples)
        assert check(samples, offers, rejections, stripe_holds(d.runtime)) == []
        for args in (("stats",), ("dlq", "list"), ("flags", "list"), ("holds", "list"), ("offers", "list", "--json")):
            result = cli(*args, env=env)
            outputs += [result.stdout, result.stderr]

    # A worker that cannot start, with the secrets in its environment
    failing = subprocess.run(
        ["celery", "-A", "tasks.app", "worker", "--pool", "solo"],
        env=process_env(offers_env | env | {"OFFERS_PARTNER_READ_TIMEOUT": "soon"}),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failing.returncode == 2 and "OFFERS_PARTNER_READ_TIMEOUT" in failing.stderr
    outputs += [failing.stdout, failing.stderr]
    # The settings' repr masks every secret
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "from config.settings import load_settings; s = load_settings(); print(repr(s)); print(s.model_dump())",
        ],
        env=process_env(offers_env | env),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "**********" in shown.stdout, shown.stderr
    outputs += [shown.stdout, shown.stderr]

    logs = [p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log")]
    assert sum(text.count("\n") for text in logs) > 100
    for name, value in values.items():
        for text in logs + outputs:
            assert value not in text, f"{name} leaked"
