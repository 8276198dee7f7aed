"""The unit layer runs with no network at all: any attempt to open a connection fails the test.

Nothing here starts or needs Postgres, Redis, a broker or the sandbox (the top-level conftest's
fixtures are all requested by name, never autouse), so ``tests/unit`` passes on a machine with no
services and no network, in seconds.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from offers_workers.domain import states
from offers_workers.domain.events import EventDetail


class NetworkUsed(AssertionError):
    """A unit test (or the code under it) tried to reach the network."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise NetworkUsed(f"unit tests must not open connections (tried {args[1:] or args!r})")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OFFERS_* setting of the shell the tests run in: only what a test sets."""
    for key in list(os.environ):
        if key.startswith("OFFERS_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse every outgoing connection and name lookup for the duration of each unit test."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    yield


def submitted_event(event_id: str = "evt_1") -> EventDetail:
    """A submitted offer's event, as the auction stage publishes it."""
    return EventDetail(
        event_id=event_id,
        offer_id="off_1",
        listing_id="lst_1",
        maker_id="mkr_1",
        state=states.SUBMITTED,
        reason=None,
        amount_cents=1000,
        currency="usd",
        payment_method="card",
        synthetic=False,
    )
