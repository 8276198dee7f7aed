"""SiftRisk against the Sift sandbox, through the real ``sift`` SDK."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from config.settings import Settings
from offers_workers.domain.errors import PermanentError
from offers_workers.partners.sift_risk import SiftRisk
from tests.partners.orders import order_to_score


def score(risk: SiftRisk, buyer_id: str) -> float:
    return risk.score_order(order_to_score(buyer_id)).score


def test_risky_buyer_scores_high(settings: Settings) -> None:
    assert score(SiftRisk(settings), "risky_mallory") == 0.95


def test_normal_buyer_scores_low_and_deterministically(settings: Settings) -> None:
    risk = SiftRisk(settings)
    scores = {buyer: score(risk, buyer) for buyer in ("alice", "bob", "carol")}
    assert all(0.02 <= s <= 0.45 for s in scores.values())
    assert scores["alice"] == score(risk, "alice")


@pytest.mark.parametrize("key", ["bad key!", "short"])
def test_bad_api_key_is_permanent(settings: Settings, key: str) -> None:
    risk = SiftRisk(settings.model_copy(update={"sift_api_key": SecretStr(key)}))
    with pytest.raises(PermanentError) as info:
        score(risk, "alice")
    assert info.value.code == "status_51" and info.value.http_status == 200
    assert key not in str(info.value)
