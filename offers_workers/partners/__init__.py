"""Partner adapters: the only modules that import the Stripe, Sift, Plaid and AWS SDKs.

Each adapter takes a ``Settings``, builds its SDK client once, returns plain typed results and raises
only ``OfferRejected``, ``TransientError`` or ``PermanentError`` (``offers_workers.domain.errors``).
"""
