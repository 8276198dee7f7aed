"""The partners, once, as plain data: what settings, the sandbox, fault injection, logs and the CLI need of each.

Adding a partner starts here; ``config.settings`` (sandbox ports and defaults), the sandbox runner and
its fault helpers, and the CLI's ``sandbox faults`` choices all read this table (through
``offers_workers.partners.table`` beside the adapters). Pure data: it imports nothing, so settings can
read it at import time without loading the adapters' package.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Partner:
    """One partner as the rest of the code refers to it.

    Parameters:
        name: the partner's name in logs, metrics, errors (``PartnerError.partner``), sandbox URLs
            and the CLI's ``--partner`` choices.
        role: what the saga asks of it (the Protocol in ``partners.interfaces``).
        url_setting: the Settings field holding its base URL (the one the sandbox points elsewhere).
        sandbox_port: the port its local sandbox server listens on by default.
        sandbox_settings: Settings values ``OFFERS_SANDBOX=1`` fills in for it (test keys, resources),
            besides its URL.
        runtime_attributes: the ``Runtime`` attributes holding its per-process adapters.
        saga_waits: whether a stage waits on it (False: best effort, out of the stages' way: the funnel).
    """

    name: str
    role: str
    url_setting: str
    sandbox_port: int
    sandbox_settings: dict[str, str] = field(default_factory=dict)
    runtime_attributes: tuple[str, ...] = ()
    saga_waits: bool = True

    @property
    def error_field(self) -> str:
        """The log field a failure of this partner carries (``stripe_error``): what the runbook greps."""
        return f"{self.name}_error"

    @property
    def sandbox_url(self) -> str:
        """Its sandbox server's default base URL."""
        return f"http://127.0.0.1:{self.sandbox_port}"


#: Every partner, in the order the sandbox starts them and reports list them.
PARTNERS: tuple[Partner, ...] = (
    Partner(
        name="stripe",
        role="Payments",
        url_setting="stripe_api_base",
        sandbox_port=12111,
        sandbox_settings={"stripe_api_key": "sk_test_sandbox"},
        runtime_attributes=("stripe",),
    ),
    Partner(
        name="sift",
        role="RiskScoring",
        url_setting="sift_api_url",
        sandbox_port=12112,
        sandbox_settings={"sift_api_key": "sandbox-sift-key", "sift_account_id": "sandbox-account"},
        runtime_attributes=("sift",),
    ),
    Partner(
        name="plaid",
        role="BankFunds",
        url_setting="plaid_host",
        sandbox_port=12113,
        sandbox_settings={"plaid_client_id": "sandbox-client", "plaid_secret": "sandbox-secret"},
        runtime_attributes=("plaid",),
    ),
    Partner(
        name="aws",
        role="AuctionEvents, Archive",
        url_setting="aws_endpoint_url",
        sandbox_port=12114,
        sandbox_settings={
            "sns_submitted_topic_arn": "arn:aws:sns:us-east-1:123456789012:offers-submitted",
            "sns_cancelled_topic_arn": "arn:aws:sns:us-east-1:123456789012:offers-cancelled",
            "audit_bucket": "offers-audit",
        },
        # The archive is built on demand by the nightly export, not warmed up with the stages' clients.
        runtime_attributes=("events",),
    ),
    Partner(
        name="segment",
        role="Funnel",
        url_setting="segment_host",
        sandbox_port=12115,
        # No write key: the funnel stays off in the sandbox too unless OFFERS_SEGMENT_WRITE_KEY is set.
        runtime_attributes=("funnel",),
        saga_waits=False,
    ),
)

#: Partner names, for choices and validation (``("stripe", "sift", "plaid", "aws", "segment")``).
PARTNER_NAMES: tuple[str, ...] = tuple(p.name for p in PARTNERS)

#: The partners a stage waits on, whose faults retry or dead-letter offers (not the funnel).
SAGA_PARTNERS: tuple[str, ...] = tuple(p.name for p in PARTNERS if p.saga_waits)

#: The partners by name.
BY_NAME: dict[str, Partner] = {p.name: p for p in PARTNERS}
