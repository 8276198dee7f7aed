"""What the on-call engineer looks at: the runbook's thresholds that ``health`` checks on the figures
(``ops.figures``), each with the runbook symptom and its first checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from config import links
from config.settings import Settings
from offers_workers.ops.figures import Figures
from offers_workers.runtime import Runtime
from offers_workers.store import connections

#: The runbook's SLOs.
SUCCESS_RATE_MIN = 0.98
VALIDATION_P95_MAX_MS = 400
AUCTION_LAG_P95_MAX_MS = 1000
#: Postgres connections in use, as a share of what a non-superuser may open: warn, then breach
#: (at 100 % every new connection of the fleet is refused, and its stages wait and retry).
DB_CONNECTIONS_WARN = 0.80
DB_CONNECTIONS_MAX = 0.95

RUNBOOK: dict[str, tuple[str, list[str]]] = {
    "success_rate": (
        "Submission Success Rate Drops",
        [
            "Find the partner behind it: `offers-workers dlq list` and the logs' stripe_error / sift_error / plaid_error.",
            "If a partner is down and impact is severe: `offers-workers flags set SOFT_LAUNCH_MODE on`; tell the vendor; note it in #eng-offers.",
            "Release holds of offers that cannot proceed: `offers-workers holds release --dead-lettered`.",
        ],
    ),
    "validation_p95": (
        "Validation Latency >400ms p95",
        [
            "Check Redis latency (the policy cache) and Postgres; scale if CPU > 70 %.",
            "Review recent maker policy changes (`offers-workers policy load`).",
            "Check the `offers.validation` queue depth below: add `worker` processes if it grows.",
        ],
    ),
    "auction_lag_p95": (
        "Auction Trigger Lag >1000ms",
        [
            "Check EventBridge for throttling (auction retries in the logs: aws ThrottlingException).",
            "Look for auction dead letters: `offers-workers dlq list --stage auction`; replay with `dlq replay --all --stage auction`.",
            "Check the payment and risk queues ahead of it: add `worker_partners` if they grow.",
        ],
    ),
    "dead_letters": (
        "Dead letters waiting",
        [
            "`offers-workers dlq list` shows each entry's stage and error.",
            "Once the cause is fixed: `offers-workers dlq replay --all --stage S`.",
            "Offers that will not proceed: `offers-workers holds release --dead-lettered`.",
        ],
    ),
    "stuck_offers": (
        "Offers stuck mid-saga",
        [
            "Are the workers up? `celery -A tasks.app inspect ping`; is the single beat running (recovery sweep)?",
            "Check queue depths below and the workers' logs.",
            "The recovery sweep re-sends their stage; `offers-workers offers list --state S` shows them.",
        ],
    ),
    "hold_findings": (
        "Holds that do not match Stripe",
        [
            "`offers-workers holds reconcile --dry-run` lists each finding with its reason.",
            "held_not_at_stripe: the offer's hold is gone at Stripe: check the offer (`offers show`) before it is captured.",
            "amount/currency mismatch or release_refused: compare the PaymentIntent in Stripe's dashboard with the offer.",
        ],
    ),
    "audit_sealing": (
        "Audit rows not sealed into the chain",
        [
            "Is the single beat running (it seals every OFFERS_AUDIT_SEAL_INTERVAL_SECONDS) and a `worker` consuming `offers.maintenance`?",
            "A transaction left open holds sealing back: look in pg_stat_activity for `idle in transaction` sessions.",
            "`offers-workers audit seal` seals what is written now and says what it is waiting for.",
        ],
    ),
    "audit_privileges": (
        "The fleet's database login can rewrite the audit trail",
        [
            "The fleet must log in (OFFERS_DATABASE_URL) as a role that is no superuser and owns nothing; the owner's login (OFFERS_DATABASE_OWNER_URL) is for `db migrate` alone.",
            "Run `offers-workers db migrate` with both set: it grants the fleet's role what it needs and revokes the rest.",
            "Someone granted more by hand: `\\dp audit_*` in psql shows who may do what; then run `offers-workers audit verify`.",
        ],
    ),
    "links": (
        "A link to another server is not verified TLS",
        [
            "The detail names each link, its target and its security; `health --json` gives the same.",
            'Move the link to verified TLS (docs/production.md, "Links and TLS"): rediss:// with ssl_cert_reqs=required, amqps://, sslmode=verify-full, https://.',
            "Then take its name out of OFFERS_ALLOW_INSECURE_LINKS.",
        ],
    ),
    "high_value_cancellations": (
        "High-Value Cancellation Spike",
        [
            "Look at the reason distribution (`offers-workers stats --window 1h`).",
            "Confirm the maker policies are not misconfigured (auto-reject threshold, SLA window).",
            "Talk to the Maker Success team if it is a legitimate business shift.",
        ],
    ),
    "db_connections": (
        "Postgres connections near max_connections",
        [
            "Count the fleet against its budget (docs/operations.md, section 3): the detail above gives this database's connections by process type.",
            "Lower a type's pool (OFFERS_DB_POOL_SIZE_THREADS, …) or its processes per host, raise max_connections, or put PgBouncer in front.",
            "Sessions in state unknown or idle from other roles or databases: find their owner in pg_stat_activity (usename, application_name).",
        ],
    ),
}


@dataclass
class Check:
    name: str
    value: str
    threshold: str
    ok: bool
    detail: list[str] = field(default_factory=list)
    #: Past a warning level while still ok: shown, with its first checks, without failing `health`.
    warning: bool = False

    @property
    def symptom(self) -> str:
        return RUNBOOK[self.name][0]

    @property
    def first_checks(self) -> list[str]:
        return RUNBOOK[self.name][1]


def checks(rt: Runtime, found: Figures) -> list[Check]:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} ms"

    rate = found.success_rate
    validation_p95 = found.validation_ms.p95
    lag_p95 = found.auction_lag_ms.p95
    dlq = sum(found.dead_letters.values())
    hv = found.high_value_cancellations
    return [
        Check(
            "success_rate",
            "-" if rate is None else f"{rate:.1%}",
            f"≥ {SUCCESS_RATE_MIN:.0%}",
            rate is None or rate >= SUCCESS_RATE_MIN,
        ),
        Check(
            "validation_p95",
            ms(validation_p95),
            f"< {VALIDATION_P95_MAX_MS} ms",
            validation_p95 is None or validation_p95 < VALIDATION_P95_MAX_MS,
        ),
        Check(
            "auction_lag_p95",
            ms(lag_p95),
            f"< {AUCTION_LAG_P95_MAX_MS} ms",
            lag_p95 is None or lag_p95 < AUCTION_LAG_P95_MAX_MS,
        ),
        Check(
            "dead_letters",
            f"{dlq:,} pending",
            "0",
            dlq == 0,
            [f"{stage}: {n}" for stage, n in found.dead_letters.items()],
        ),
        Check(
            "stuck_offers",
            f"{found.stuck_offers:,}",
            f"0 older than {rt.settings.recovery_after_seconds:g} s",
            found.stuck_offers == 0,
        ),
        Check(
            "hold_findings",
            f"{sum(found.hold_findings.values()):,} open",
            "0",
            not found.hold_findings,
            [f"{kind}: {n}" for kind, n in found.hold_findings.items()],
        ),
        Check(
            "audit_sealing",
            f"{found.audit_seal.unsealed_rows:,} rows, the oldest {found.audit_seal.lag_seconds:,.0f} s"
            if found.audit_seal.unsealed_rows
            else "all sealed",
            f"none older than {rt.settings.audit_seal_max_lag_seconds:g} s",
            found.audit_seal.lag_seconds < rt.settings.audit_seal_max_lag_seconds,
        ),
        Check(
            "audit_privileges",
            "append and read" if not found.audit_privileges else f"{len(found.audit_privileges)} breach(es)",
            "append and read only",
            not found.audit_privileges,
            found.audit_privileges,
        ),
        Check(
            "high_value_cancellations",
            f"{hv.recent} in the last {rt.settings.cancel_spike_window_seconds / 3600:g} h ({hv.trailing_rate:.1f} trailing)",
            f"< {rt.settings.cancel_spike_ratio:g}× trailing or < {rt.settings.cancel_spike_min}",
            not hv.spike,
            [f"{reason}: {n}" for reason, n in hv.by_reason.items()],
        ),
        *([db_connections_check(found.db_connections)] if found.db_connections else []),
        links_check(rt.settings),
    ]


def links_check(settings: Settings) -> Check:
    """Each configured link and its security. A link start-up would refuse never gets here; one the
    deployment allowed in clear (or any in the sandbox that leaves this host) is a warning."""
    configured = [link for link in links.links(settings) if link.security != "none"]
    weak = [link for link in configured if not link.acceptable]
    return Check(
        "links",
        f"{sum(link.verified for link in configured)} of {len(configured)} verified TLS",
        "verified TLS, or this host only",
        True,
        [
            f"{link.name}: {link.target}: {link.security}{', this host only' if link.local and not link.verified else ''}"
            f" ({link.detail})"
            for link in configured
        ],
        warning=bool(weak),
    )


def db_connections_check(used: connections.ConnectionUsage) -> Check:
    """Connections in use against what the fleet's role may open: warn at 80 %, breach at 95 %."""
    return Check(
        "db_connections",
        f"{used.in_use:,} of {used.available:,} ({used.share:.0%})",
        f"< {DB_CONNECTIONS_WARN:.0%} (warn), < {DB_CONNECTIONS_MAX:.0%}",
        used.share < DB_CONNECTIONS_MAX,
        [f"{state}: {n}" for state, n in used.by_state.items()]
        + [f"this database, {process}: {n}" for process, n in used.fleet_by_process.items()],
        warning=DB_CONNECTIONS_WARN <= used.share < DB_CONNECTIONS_MAX,
    )
