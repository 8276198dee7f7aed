"""PlaidFunds against the Plaid sandbox, through the real ``plaid-python`` SDK (strict response models)."""

from __future__ import annotations

import pytest

from config.settings import Settings
from offers_workers.domain.errors import PermanentError
from offers_workers.partners.plaid_funds import PlaidFunds, client_transaction_id


@pytest.fixture(scope="module")
def funds(settings: Settings) -> PlaidFunds:
    return PlaidFunds(settings)


def test_balance(funds: PlaidFunds) -> None:
    assert funds.balance(access_token="access-sandbox-buyer-1", account_id="acc_1").available_cents == 5_000_000


def test_low_balance(funds: PlaidFunds) -> None:
    assert funds.balance(access_token="access-sandbox-low-balance", account_id="acc_1").available_cents == 0


def test_return_risk_normal_and_high(funds: PlaidFunds) -> None:
    normal = funds.return_risk(
        offer_id="off_1", access_token="access-sandbox-buyer-1", account_id="acc_1", amount_cents=12_345
    ).score
    assert 1 <= normal <= 20
    assert (
        normal
        == funds.return_risk(
            offer_id="off_2", access_token="access-sandbox-buyer-1", account_id="acc_1", amount_cents=99
        ).score
    )
    high = funds.return_risk(
        offer_id="off_1", access_token="access-sandbox-high-risk", account_id="acc_1", amount_cents=12_345
    ).score
    assert high == 95


@pytest.mark.parametrize(
    ("token", "code"),
    [("access-sandbox-login-required", "ITEM_LOGIN_REQUIRED"), ("public-sandbox-oops", "INVALID_ACCESS_TOKEN")],
)
def test_item_errors_are_permanent(funds: PlaidFunds, token: str, code: str) -> None:
    with pytest.raises(PermanentError) as info:
        funds.balance(access_token=token, account_id="acc_1")
    assert (info.value.code, info.value.http_status) == (code, 400)
    with pytest.raises(PermanentError):
        funds.return_risk(offer_id="off_1", access_token=token, account_id="acc_1", amount_cents=100)


def test_client_transaction_id_is_stable_and_short() -> None:
    ids = {client_transaction_id("off_" + "x" * 200) for _ in range(3)}
    assert len(ids) == 1 and len(ids.pop()) <= 36
    assert client_transaction_id("a") != client_transaction_id("b")
