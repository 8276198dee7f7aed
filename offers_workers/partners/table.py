"""The partner table beside the adapters: its plain data is ``offers_workers.domain.partners``, which
``config`` reads without loading this package."""

from __future__ import annotations

from offers_workers.domain.partners import BY_NAME, PARTNER_NAMES, PARTNERS, SAGA_PARTNERS, Partner

__all__ = ["BY_NAME", "PARTNERS", "PARTNER_NAMES", "SAGA_PARTNERS", "Partner"]
