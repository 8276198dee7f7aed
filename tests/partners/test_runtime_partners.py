"""A Runtime takes the partners it is given (fakes in tests) and builds only the others."""

from __future__ import annotations

from config.settings import Settings
from offers_workers.partners.fakes import FakeArchive, FakeAuctionEvents, FakePayments
from offers_workers.partners.interfaces import BankFunds, RiskScoring
from offers_workers.partners.sift_risk import SiftRisk
from offers_workers.runtime import Runtime


def test_given_partners_are_used_and_the_rest_built_from_settings(settings: Settings) -> None:
    payments, events, archive = FakePayments(), FakeAuctionEvents(), FakeArchive()
    rt = Runtime(settings, stripe=payments, events=events, archive=archive)
    rt.warm_up()
    assert rt.stripe is payments and rt.events is events and rt.archive is archive
    assert isinstance(rt.sift, SiftRisk) and isinstance(rt.sift, RiskScoring)
    assert isinstance(rt.plaid, BankFunds)
    # warm_up touched the given fakes through attributes only: no partner call was made
    assert payments.calls == [] and events.calls == []
