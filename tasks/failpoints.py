"""Faults a drill arms through OFFERS_FAILPOINTS; honoured in the sandbox only (Settings refuses
them elsewhere, so a deployment cannot arm one by accident)."""

from __future__ import annotations

import logging
import os
from typing import Any

from config.settings import Settings
from offers_workers.partners.interfaces import Hold, Payments
from offers_workers.runtime import Runtime

log = logging.getLogger("offers_workers.tasks")


def crash_if_armed(settings: Settings, offer_id: str | None) -> None:
    """``crash_on_offer:PREFIX``: a worker starting a task of such an offer exits at once, as one
    killed by a poison message does: no cleanup, no acknowledgement, the broker gives it back."""
    if settings.sandbox and offer_id and offer_id.startswith(settings.crash_on_offer):
        log.error("failpoint crash_on_offer: the worker exits now", extra={"offer_id": offer_id})
        os._exit(1)


class CrashAfterHold:
    """``crash_after_hold:PREFIX``: the Stripe adapter, whose ``place_hold`` for such an offer returns
    to no one: the worker exits between Stripe's answer and the stage's commit (the kill window)."""

    def __init__(self, payments: Payments, prefixes: tuple[str, ...]) -> None:
        self._payments = payments
        self._prefixes = prefixes

    def place_hold(self, *, offer_id: str, **kwargs: Any) -> Hold:
        hold = self._payments.place_hold(offer_id=offer_id, **kwargs)
        if offer_id.startswith(self._prefixes):
            log.error("failpoint crash_after_hold: the worker exits now", extra={"offer_id": offer_id})
            os._exit(1)
        return hold

    def __getattr__(self, name: str) -> Any:
        return getattr(self._payments, name)


def arm_partners(rt: Runtime) -> None:
    """Put the partner failpoints in place on this worker's runtime (once; sandbox only)."""
    prefixes = rt.settings.crash_after_hold if rt.settings.sandbox else ()
    if prefixes and not isinstance(rt.__dict__.get("stripe"), CrashAfterHold):
        rt.__dict__["stripe"] = CrashAfterHold(rt.stripe, prefixes)
