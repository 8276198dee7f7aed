"""Faults a drill arms through OFFERS_FAILPOINTS; honoured in the sandbox only (Settings refuses
them elsewhere, so a deployment cannot arm one by accident)."""

from __future__ import annotations

import logging
import os

from config.settings import Settings

log = logging.getLogger("offers_workers.tasks")


def crash_if_armed(settings: Settings, offer_id: str | None) -> None:
    """``crash_on_offer:PREFIX``: a worker starting a task of such an offer exits at once, as one
    killed by a poison message does: no cleanup, no acknowledgement, the broker gives it back."""
    if settings.sandbox and offer_id and offer_id.startswith(settings.crash_on_offer):
        log.error("failpoint crash_on_offer: the worker exits now", extra={"offer_id": offer_id})
        os._exit(1)
