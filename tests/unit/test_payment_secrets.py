"""Payment secrets: removed from what is only read, sealed (and re-sealed on rotation) where kept."""

from __future__ import annotations

import pytest

from config.settings import ConfigError, load_settings
from offers_workers.domain.secrets import REDACTED, PaymentKeys, SecretKeyMissing, placeholders, redact, redact_text

TOKEN = "access-production-8f1c2d3e-aaaa-bbbb"
OLD, NEW = "old=" + "o" * 40, "new=" + "n" * 40


def test_secret_fields_and_shaped_secrets_are_redacted_wherever_they_are() -> None:
    body = {
        "offer": {"payment": {"plaid_access_token": "anything", "plaid_account_id": "acc_1", "method": "bank_account"}},
        "notes": [f"token {TOKEN} and sk_live_abc123 and rk_test_Zz9"],
        "amount_cents": 5,
    }
    assert redact(body) == {
        "offer": {"payment": {"plaid_access_token": REDACTED, "plaid_account_id": REDACTED, "method": "bank_account"}},
        "notes": [f"token {REDACTED} and {REDACTED} and {REDACTED}"],
        "amount_cents": 5,
    }


@pytest.mark.parametrize(
    "text",
    [
        '[[], {"offer": {"payment": {"plaid_access_token": "tok-1", "plaid_account_id": "acc-9"',  # not JSON
        '{"plaid_account_id":"acc-9\\"x", "plaid_access_token" : "tok-1"}',
        '{"plaid_access_token": "tok-1',
        "plaid_account_id acc-9 tok-1",  # cut off; a bare mention is left alone
    ],
)
def test_secret_fields_are_redacted_from_text_that_is_not_json(text: str) -> None:
    kept = redact_text(text)
    assert "tok-1" not in kept.replace("plaid_account_id acc-9 tok-1", "") and '"acc-9' not in kept


def test_a_sealed_secret_opens_under_any_listed_key_and_rotation_reseals_it() -> None:
    old = PaymentKeys.parse(OLD, "OFFERS_PAYMENT_SECRET_KEYS")
    payload = {"payment": {"method": "bank_account", "plaid_access_token": TOKEN, "plaid_account_id": "acc_1"}}
    sealed = old.seal_within(payload)
    token = sealed["payment"]["plaid_access_token"]
    assert token.startswith("enc:v1:old:") and TOKEN not in str(sealed)
    assert placeholders(sealed)["payment"]["plaid_access_token"] == "[sealed]"
    rotated = PaymentKeys.parse(f"{NEW},{OLD}", "OFFERS_PAYMENT_SECRET_KEYS")
    assert rotated.open_within(sealed) == payload and rotated.needs_resealing(sealed)
    resealed = rotated.seal_within(sealed)
    assert resealed["payment"]["plaid_access_token"].startswith("enc:v1:new:") and not rotated.needs_resealing(resealed)
    with pytest.raises(SecretKeyMissing, match="key old"):
        PaymentKeys.parse(NEW, "OFFERS_PAYMENT_SECRET_KEYS").open(token)


def test_the_keys_are_required_outside_the_sandbox_and_named_when_malformed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    assert load_settings().payment_keys.current == "sandbox"
    clean_env.setenv("OFFERS_PAYMENT_SECRET_KEYS", "k1=short-secret-value")
    with pytest.raises(ConfigError) as bad:
        load_settings()
    assert str(bad.value) == (
        "invalid configuration: OFFERS_PAYMENT_SECRET_KEYS: key 1 (k1) is shorter than 32 characters"
    )
    assert "short-secret-value" not in str(bad.value)
