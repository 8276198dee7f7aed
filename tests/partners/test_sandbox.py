"""The Sandbox object itself: addresses, env for other processes, lifecycle, raw wire details."""

from __future__ import annotations

import json
import urllib.request

import pytest
import stripe

from config.settings import load_settings
from offers_workers.local.sandbox import Sandbox, advance_clock


def test_settings_env_points_settings_at_the_sandbox(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    env = sandbox.settings_env()
    assert set(env) == {
        "OFFERS_SANDBOX",
        "OFFERS_STRIPE_API_BASE",
        "OFFERS_SIFT_API_URL",
        "OFFERS_PLAID_HOST",
        "OFFERS_AWS_ENDPOINT_URL",
        "OFFERS_SEGMENT_HOST",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.sandbox and settings.stripe_api_base == sandbox.urls["stripe"]
    assert settings.aws_endpoint_url == sandbox.urls["aws"]
    assert all(port > 0 for port in sandbox.ports.values())


def test_start_stop_on_free_ports() -> None:
    with Sandbox(ports={"stripe": 0, "sift": 0, "plaid": 0, "aws": 0, "segment": 0}) as sb:
        url = sb.urls["sift"]
        with urllib.request.urlopen(url + "/__sandbox/faults", timeout=2) as resp:
            assert json.loads(resp.read())["fault"] is None
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/__sandbox/faults", timeout=2)


def test_stripe_requires_a_test_key(sandbox: Sandbox) -> None:
    req = urllib.request.Request(
        sandbox.urls["stripe"] + "/v1/payment_intents", headers={"Authorization": "Bearer sk_live_1"}
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=2)
    assert info.value.code == 401
    assert json.loads(info.value.read())["error"]["type"] == "invalid_request_error"


def test_idempotency_window_is_a_sandbox_setting() -> None:
    with Sandbox(ports=0, stripe_idempotency_ttl_s=60) as sb:
        raw = stripe.StripeClient("sk_test_window", base_addresses={"api": sb.urls["stripe"]}, max_network_retries=0)
        params = {"amount": 100, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
        first = raw.v1.payment_intents.create(params, {"idempotency_key": "k"})
        assert advance_clock(sb, 50)["idempotency_ttl_s"] == 60
        assert raw.v1.payment_intents.create(params, {"idempotency_key": "k"}).id == first.id
        advance_clock(sb, 10)
        assert raw.v1.payment_intents.create(params, {"idempotency_key": "k"}).id != first.id
