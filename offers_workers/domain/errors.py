"""The three ways a stage can fail, as every partner adapter sorts its errors.

- ``OfferRejected``: a business outcome (decline, risk block, policy). The offer ends ``rejected``;
  never retried.
- ``TransientError``: timeouts, 5xx, 429, lost connections. Retried with backoff.
- ``PermanentError``: anything a retry cannot fix (bad request, bad credentials, a malformed
  response). Not retried: the stage goes to its dead-letter queue for an operator.
"""

from __future__ import annotations

from offers_workers.domain.states import RejectionReason


class OfferRejected(Exception):
    """The offer cannot proceed for a business reason; ``reason`` is a contract reason code."""

    def __init__(self, reason: RejectionReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PartnerError(Exception):
    """A partner call failed. ``partner`` is stripe/sift/plaid/aws; ``code`` the partner's error code."""

    #: The SNS topic a failed publish was for, counted by topic for ``/metrics``.
    sns_topic: str | None = None

    def __init__(self, partner: str, code: str | None, message: str, http_status: int | None = None) -> None:
        super().__init__(f"{partner} {code or 'error'}: {message}")
        self.partner = partner
        self.code = code
        self.message = message
        self.http_status = http_status

    def log_fields(self) -> dict[str, str | int | None]:
        """The runbook searches logs for ``stripe_error`` / ``sift_error`` / ``plaid_error``."""
        return {f"{self.partner}_error": self.code or type(self).__name__, "http_status": self.http_status}


class TransientError(PartnerError):
    """Worth retrying: the same call may well succeed in a moment."""


class PermanentError(PartnerError):
    """A retry will not help; an operator must look."""
