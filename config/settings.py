"""Settings from the environment (prefix ``OFFERS_``), validated once at start-up.

Any secret may come from a file instead: ``OFFERS_STRIPE_API_KEY_FILE=/run/secrets/stripe`` (Vault
agent and Kubernetes secret mounts). ``OFFERS_SANDBOX=1`` points every partner at the local sandbox
and fills in test credentials, so a developer needs no setting at all.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config import links
from offers_workers.domain import authority
from offers_workers.domain.partners import PARTNERS
from offers_workers.domain.secrets import PaymentKeys
from offers_workers.redis_client import SENTINEL_SCHEME, is_sentinel, parse_sentinel_url

PREFIX = "OFFERS_"

#: Ports of the local sandbox partners (docs/development.md, "Sandbox"), from the partner table.
SANDBOX_PORTS = {p.name: p.sandbox_port for p in PARTNERS}

#: What OFFERS_SANDBOX=1 fills in where nothing is set. Test keys only: the sandbox accepts any.
SANDBOX_DEFAULTS: dict[str, str] = {
    name: value for p in PARTNERS for name, value in {**p.sandbox_settings, p.url_setting: p.sandbox_url}.items()
}

#: The keys the sandbox's AWS (moto) is signed with. moto takes any; boto3 needs some to sign at all.
SANDBOX_AWS_CREDENTIALS = ("testing", "testing")

#: OFFERS_PAYMENT_SECRET_KEYS in the sandbox, where nothing is set: a known key for test tokens only.
SANDBOX_PAYMENT_SECRET_KEYS = "sandbox=offers-sandbox-payment-secrets-not-for-real-tokens"

#: Settings a production deployment must give (the sandbox fills them in).
REQUIRED_OUTSIDE_SANDBOX = (
    "stripe_api_key",
    "sift_api_key",
    "sift_account_id",
    "plaid_client_id",
    "plaid_secret",
    "sns_submitted_topic_arn",
    "sns_cancelled_topic_arn",
    "audit_bucket",
)


REDIS_SCHEMES = ("redis://", "rediss://")
#: What redis-py and Celery's result backend both take as a rediss:// URL's ssl_cert_reqs.
SSL_CERT_REQS = ("required", "optional", "none")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
#: The failpoints a drill can arm (tasks/failpoints.py).
FAILPOINTS = ("crash_on_offer", "crash_after_hold")
#: What a failpoint takes: the start of an offer id.
FAILPOINT_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming it, never its value."""


def env_name(field: str) -> str:
    return f"{PREFIX}{field.upper()}"


class _FileSecretsSource(PydanticBaseSettingsSource):
    """Reads ``OFFERS_<NAME>_FILE``: the setting's value is the named file's content."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        path = os.environ.get(env_name(field_name) + "_FILE")
        if not path:
            return None, field_name, False
        try:
            return Path(path).read_text().strip(), field_name, False
        except OSError as exc:
            raise ConfigError(f"{env_name(field_name)}_FILE: cannot read the file ({exc.strerror})") from None

    def __call__(self) -> dict[str, Any]:
        values = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", hide_input_in_errors=True)

    sandbox: bool = False

    # Stores. Unset database/broker means "start embedded ones" for dev, demo and tests.
    database_url: str | None = None
    #: The schema owner's login, read by `db migrate` alone (the Procfile's release): it applies the
    #: migrations and grants OFFERS_DATABASE_URL's role what the fleet needs, nothing more. Required
    #: by `db migrate` outside the sandbox; the fleet itself never holds it.
    database_owner_url: str | None = None
    broker_url: str | None = None
    redis_url: str | None = None
    #: Redis with Sentinel (a sentinel:// URL above): the name the sentinels monitor the master by,
    #: and the sentinels' own password where they require one (the master's goes in the URL).
    redis_sentinel_master: str | None = None
    redis_sentinel_password: SecretStr | None = None
    #: Every Redis key the fleet keeps for itself (caches, flags, locks, rate limits, the beat, partner
    #: error counters) starts with this prefix. Queues and results are not the fleet's own: upstream
    #: clients write and read them by their plain names (see broker_key_prefix).
    redis_key_prefix: str = "offers:"
    #: Redis broker only, opt-in: a prefix for Celery's keys too, queues and results (kombu's
    #: global_keyprefix). Every upstream client must then set the same prefix, or its offers wait
    #: where no worker looks.
    broker_key_prefix: str = ""
    #: RabbitMQ over TLS (amqps://): the CA bundle the broker's certificate must chain to (unset:
    #: the system's), and the fleet's client certificate and key where the broker asks for one.
    #: Every connection checks the chain and the host name of the node it reaches.
    broker_tls_ca_file: Path | None = None
    broker_tls_cert_file: Path | None = None
    broker_tls_key_file: Path | None = None
    #: Links outside the sandbox that may be plain or unverified TLS (config/links.py names them:
    #: database, broker, redis, smtp, a partner), comma-separated: a deployment's explicit choice,
    #: e.g. a broker reached through a sidecar that terminates TLS. Empty: every such link is refused.
    allow_insecure_links: str = ""
    #: Postgres connections per process whatever its type; unset, each type takes its own below
    #: (the connection budget, docs/operations.md section 3).
    db_pool_size: int | None = Field(default=None, ge=1, le=100)
    #: Per prefork child of `worker` (or a solo worker): it runs one task at a time, and no task
    #: takes a second pooled connection while it holds one.
    db_pool_size_prefork: int = Field(default=1, ge=1, le=100)
    #: Per worker whose pool runs tasks side by side (`worker_partners`' 40 threads): only threads
    #: reading or committing hold one, so 12 serve 40.
    db_pool_size_threads: int = Field(default=12, ge=1, le=100)
    #: The `metrics` process: it answers one scrape at a time.
    db_pool_size_metrics: int = Field(default=1, ge=1, le=100)
    #: Server-side prepared statements: off by default, so the fleet works behind a transaction
    #: pooler (PgBouncer in transaction mode); on for a direct connection or a pooler that tracks
    #: them (PgBouncer 1.21+ with max_prepared_statements).
    db_prepared_statements: bool = False
    #: Postgres ends a session left idle inside a transaction this long (seconds): a worker host
    #: cut off mid-transaction must not hold its row locks, or the audit chain's, until TCP gives up.
    #: No transaction of ours waits on anything outside Postgres, so this can be short.
    db_idle_in_transaction_timeout_seconds: int = Field(default=15, ge=1, le=3600)
    #: The longest a statement waits for a lock (seconds) before it fails and its task retries:
    #: well under the task's soft time limit, so waiting behind a vanished host ends in a retry.
    db_lock_timeout_seconds: float = Field(default=10, gt=0, le=600)

    # Partners.
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"
    sift_api_key: SecretStr | None = None
    sift_account_id: str | None = None
    sift_api_url: str = "https://api.sift.com"
    plaid_client_id: str | None = None
    plaid_secret: SecretStr | None = None
    plaid_host: str = "https://production.plaid.com"
    #: Segment's write key: the product funnel is off unless it is set (partners/segment_funnel.py).
    segment_write_key: SecretStr | None = None
    segment_host: str = "https://api.segment.io"
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    # The runbook's "commerce-offers-events@2025-09" is not a legal bus name ('@'); see docs/upstream.md, "Events".
    event_bus_name: str = Field(default="commerce-offers-events-2025-09", pattern=r"^[/\.\-_A-Za-z0-9]+$")
    sns_submitted_topic_arn: str | None = None
    sns_cancelled_topic_arn: str | None = None
    audit_bucket: str | None = None
    audit_storage_class: Literal["GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "STANDARD"] = "GLACIER"
    #: KMS key for the audit archive's server-side encryption (unset: S3-managed keys, AES256).
    audit_kms_key_id: str | None = None
    #: When the beat runs the nightly audit export: a crontab in UTC (minute hour day month weekday).
    audit_export_cron: str = Field(default="0 2 * * *", pattern=r"^\S+ \S+ \S+ \S+ \S+$")
    #: Postgres role the fleet connects as, when it is not the owner: `db migrate` grants it
    #: INSERT and SELECT on the audit trail and revokes UPDATE, DELETE and TRUNCATE.
    db_app_role: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    #: How long each audit export, manifest and chain anchor stays under S3 Object Lock (compliance
    #: mode: nobody, the AWS account's root included, deletes or overwrites it before then). PCI DSS
    #: 10.7 asks for a year; shorter is refused outside the sandbox.
    audit_retention_days: int = Field(default=400, ge=1, le=36500)
    #: How often the beat writes the audit chain's sealed head to S3 (an anchor): rows sealed since
    #: the last anchor are what an owner of the database could still rewrite unseen.
    audit_anchor_interval_seconds: float = Field(default=60, gt=0, le=3600)
    #: How often the beat checks Postgres's audit trail against the anchors in S3 (`audit verify`).
    audit_verify_interval_seconds: float = Field(default=3600, gt=0)

    #: Connect and read timeouts (seconds) for every partner call.
    partner_connect_timeout: float = Field(default=2.0, gt=0, le=30)
    partner_read_timeout: float = Field(default=5.0, gt=0, le=60)

    # Risk policy.
    #: A Sift payment-abuse score at or above this blocks the offer.
    risk_block_threshold: float = Field(default=0.8, ge=0, le=1)
    #: A Plaid Signal return-risk score (1-99) at or above this blocks a bank-funded offer.
    return_risk_block_threshold: int = Field(default=80, ge=1, le=99)

    #: Longest a task may run before the worker stops it.
    task_time_limit_seconds: int = Field(default=120, ge=5, le=3600)
    #: RabbitMQ broker: AMQP heartbeat (seconds) the workers propose. A host that goes silent for
    #: about twice this has its connection closed by the broker, and its unacked messages go to
    #: another worker.
    broker_heartbeat_seconds: int = Field(default=30, ge=2, le=600)
    #: Redis broker: seconds before a dead worker's unacked messages go to another worker.
    #: Unset: twice the task time limit plus the longest retry countdown.
    broker_visibility_timeout_seconds: int | None = Field(default=None, gt=0)
    #: Task events (sent, received, started, succeeded…) on the broker's celeryev exchange, for
    #: Flower; they carry ids only (tasks/redaction.py). Off saves a few broker messages per task.
    task_events: bool = True

    #: A message whose runs started this many times without one finishing (its worker died each
    #: time) is not run again: its next delivery is dead-lettered (tasks/deliveries.py). Well under
    #: RabbitMQ's own delivery limit (config.celery.BROKER_DELIVERY_LIMIT; 20 on 4.x without our
    #: policy), which also counts messages a dead worker had only reserved: ours decides first.
    poison_deliveries: int = Field(default=5, ge=1, le=10)
    #: Drills only: ``crash_on_offer:PREFIX`` (comma-separated for more) makes a worker exit at once
    #: when it starts a task for an offer whose id starts with PREFIX; ``crash_after_hold:PREFIX``
    #: when Stripe has answered such an offer's hold, before the stage commits (tasks/failpoints.py).
    failpoints: str = ""

    #: Multiplies every retry countdown (config/retry.py); tests and drills shorten the waits with it.
    retry_delay_scale: float = Field(default=1.0, gt=0, le=10)

    #: How often the beat sweeps for stuck work, and how long an open offer may sit before it is re-sent.
    recovery_interval_seconds: float = Field(default=30, gt=0)
    recovery_after_seconds: float = Field(default=300, gt=0)

    #: Holds older than this are released even if their offer is still open: Stripe lets an uncaptured
    #: card authorization lapse after about 7 days. ISO 8601 ("P6D") or seconds.
    hold_release_after: timedelta = Field(default=timedelta(days=6), gt=timedelta(0), le=timedelta(days=7))
    #: How often the beat looks for such holds.
    hold_watch_interval_seconds: float = Field(default=600, gt=0)
    #: How often the beat reconciles holds with Stripe, over the intents created in the last
    #: ``reconcile_window`` (Stripe lets an authorization lapse at 7 days); a hold younger than
    #: ``reconcile_grace_seconds`` is left to the stage that placed it, which may be about to commit.
    reconcile_interval_seconds: float = Field(default=3600, gt=0)
    reconcile_window: timedelta = Field(default=timedelta(days=8), gt=timedelta(0))
    reconcile_grace_seconds: float = Field(default=900, ge=0)
    #: How often the beat seals new audit rows into the hash chain, and how far sealing may fall
    #: behind (the age of the oldest committed row not sealed) before `health` fails.
    audit_seal_interval_seconds: float = Field(default=1, gt=0, le=60)
    audit_seal_max_lag_seconds: float = Field(default=60, gt=0)
    #: How often the beat cancels submitted offers past their maker's SLA window (policy sla_hours).
    sla_check_interval_seconds: float = Field(default=60, gt=0)
    #: How long each checked draft's row (draft_validations, the funnel's first step in `stats`) is
    #: kept; the beat deletes older ones every hour. ISO 8601 ("P35D") or seconds.
    draft_validations_kept: timedelta = Field(default=timedelta(days=35), ge=timedelta(days=1))

    # High-value cancellation watch (`stats`, `health`).
    #: An offer of at least this amount (minor units) is high-value.
    high_value_cents: int = Field(default=100_000, gt=0)
    #: Recent window, and the trailing window it is compared with.
    cancel_spike_window_seconds: float = Field(default=3600, gt=0)
    cancel_spike_trailing_seconds: float = Field(default=86400, gt=0)
    #: A spike: the recent window's rate of high-value cancellations is at least this many times the
    #: trailing rate, and there are at least `cancel_spike_min` of them.
    cancel_spike_ratio: float = Field(default=3.0, gt=1)
    cancel_spike_min: int = Field(default=5, ge=1)

    #: The synthetic journey: when the beat runs it (crontab, UTC) and the offer it submits. The
    #: journey creates its maker and listing (marked synthetic) unless these name real ones.
    synthetic_cron: str = Field(default="30 3 * * *", pattern=r"^\S+ \S+ \S+ \S+ \S+$")
    synthetic_listing_id: str = Field(default="lst_synthetic", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    synthetic_maker_id: str = Field(default="mkr_synthetic", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    synthetic_amount_cents: int = Field(default=15000, gt=0, le=100_000_000)
    synthetic_currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    synthetic_payment_method_id: str = "pm_card_visa"

    #: The audit export's summary email (ops.export_summary). No host: the summary is only logged.
    #: STARTTLS when the server offers it; login only with a username, and never in the clear.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = None
    #: Comma-separated recipients.
    smtp_to: str = ""
    smtp_timeout_seconds: float = Field(default=10, gt=0, le=120)

    # Who may send what (docs/production.md, "Trust boundary"): keys as ID=SECRET, comma-separated, the first signing.
    #: The fleet's keys: its workers and beat sign every message that carries authority with the first.
    message_keys: SecretStr | None = None
    #: Ops' keys: the CLI signs with the first (a cancel as ops, a replay); the workers accept each.
    ops_message_keys: SecretStr | None = None
    #: Upstreams' keys (ID is NAME or NAME.VERSION); with upstream_signing, offers.submit and
    #: offers.cancel must carry a MAC of one of them, and the offer records which upstream sent it.
    upstream_keys: SecretStr | None = None
    #: Keys sealing Plaid access tokens and account ids at rest (ID=SECRET, comma-separated): the first
    #: seals, every one opens (a rotation holds two; `secrets rotate` re-seals under the first).
    payment_secret_keys: SecretStr | None = None
    upstream_signing: bool = False
    #: Off only in the sandbox (the bench's comparison): nothing is signed or checked.
    message_auth: bool = True

    #: Port of `offers-workers metrics serve` (Prometheus /metrics).
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    #: /metrics over TLS (PEM files, read by `metrics serve` at start-up); off loopback it is required
    #: unless metrics_allow_plaintext says the network is private (a sidecar's, a VPN's).
    metrics_tls_cert_file: Path | None = None
    metrics_tls_key_file: Path | None = None
    #: Mutual TLS: only a scraper with a certificate of this CA is served.
    metrics_tls_client_ca_file: Path | None = None
    #: USER:PASSWORD a scrape must send (HTTP basic auth); refused in the clear off loopback.
    metrics_basic_auth: SecretStr | None = None
    metrics_allow_plaintext: bool = False

    #: Seconds a worker keeps feature flags before reading them again (a change is seen within it).
    flag_cache_seconds: float = Field(default=2, ge=0, le=60)
    #: SOFT_LAUNCH_MODE: offers admitted per second across the whole fleet, the bucket's size, and
    #: (optional) the comma-separated makers whose offers are admitted at all.
    soft_launch_rate: float = Field(default=10, gt=0)
    soft_launch_burst: int | None = Field(default=None, ge=1)
    soft_launch_makers: str = ""

    #: Seconds a worker keeps listings and maker policies cached in Redis.
    policy_cache_seconds: int = Field(default=300, ge=0)

    #: Where embedded Postgres/Redis and sandbox state live when no URLs are configured.
    state_dir: Path = Path(".offers-workers")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSecretsSource(settings_cls)

    @field_validator("hold_release_after", mode="before")
    @classmethod
    def _seconds_or_iso(cls, value: Any) -> Any:
        # Pydantic reads ISO 8601 durations but not a bare number of seconds from a string.
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            return float(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _sandbox_defaults(cls, values: dict[str, Any]) -> dict[str, Any]:
        if str(values.get("sandbox", "")).lower() in {"1", "true", "yes", "on"}:
            for name, value in SANDBOX_DEFAULTS.items():
                values.setdefault(name, value)
        return values

    @model_validator(mode="after")
    def _failpoints_in_the_sandbox_only(self) -> Settings:
        # A failpoint kills workers on purpose: a deployment must not be able to arm one by accident.
        if self.failpoints and not self.sandbox:
            raise ValueError("OFFERS_FAILPOINTS is for drills and is refused unless OFFERS_SANDBOX=1")
        for point in filter(None, (p.strip() for p in self.failpoints.split(","))):
            name, _, prefix = point.partition(":")
            if name not in FAILPOINTS or not FAILPOINT_PREFIX.fullmatch(prefix):
                raise ValueError(
                    "OFFERS_FAILPOINTS takes crash_on_offer:PREFIX or crash_after_hold:PREFIX (an offer id prefix),"
                    " comma-separated"
                )
        return self

    @model_validator(mode="after")
    def _required_outside_sandbox(self) -> Settings:
        if not self.sandbox:
            for name in REQUIRED_OUTSIDE_SANDBOX:
                if getattr(self, name) in (None, ""):
                    raise ValueError(f"{env_name(name)} is required (or set OFFERS_SANDBOX=1)")
        return self

    @model_validator(mode="after")
    def _audit_retention(self) -> Settings:
        if self.audit_retention_days < 365 and not self.sandbox:
            raise ValueError("OFFERS_AUDIT_RETENTION_DAYS below 365 is refused unless OFFERS_SANDBOX=1 (PCI DSS 10.7)")
        return self

    @model_validator(mode="after")
    def _message_keys(self) -> Settings:
        if not self.message_auth and not self.sandbox:
            raise ValueError(
                "OFFERS_MESSAGE_AUTH=off is refused unless OFFERS_SANDBOX=1 (messages would not be checked)"
            )
        rings = self.keyrings  # parses each setting: a malformed one fails here, in one line
        ids = [key_id for ring in rings for key_id, _ in ring.keys]
        if len(ids) != len(set(ids)):
            raise ValueError("a key id is in two of OFFERS_MESSAGE_KEYS, OFFERS_OPS_MESSAGE_KEYS, OFFERS_UPSTREAM_KEYS")
        if self.upstream_signing and not any(r.role == "upstream" and r.keys for r in rings) and not self.sandbox:
            raise ValueError("OFFERS_UPSTREAM_SIGNING needs OFFERS_UPSTREAM_KEYS (one key per upstream)")
        if not self.sandbox and self.message_auth and not any(r.keys for r in rings if r.role != "upstream"):
            raise ValueError(
                "OFFERS_MESSAGE_KEYS is required (OFFERS_OPS_MESSAGE_KEYS alone for an operator's CLI),"
                " or set OFFERS_SANDBOX=1"
            )
        return self

    @property
    def keyrings(self) -> tuple[authority.Keyring, ...]:
        """The keys of the fleet, ops and the upstreams, as set (the sandbox's own are added in tasks/)."""
        rings = []
        for name, role in (("message_keys", "fleet"), ("ops_message_keys", "ops"), ("upstream_keys", "upstream")):
            try:
                rings.append(authority.parse_keys(self.secret(name), env_name(name), role))  # type: ignore[arg-type]
            except authority.KeyringError as exc:
                raise ValueError(str(exc)) from None
        return tuple(rings)

    @model_validator(mode="after")
    def _payment_secret_keys(self) -> Settings:
        if self.payment_secret_keys is None and self.sandbox:
            # A fixed key: sandbox data holds only test tokens, and every process of a dev stack agrees.
            self.payment_secret_keys = SecretStr(SANDBOX_PAYMENT_SECRET_KEYS)
        if self.payment_secret_keys is None:
            raise ValueError("OFFERS_PAYMENT_SECRET_KEYS is required (or set OFFERS_SANDBOX=1)")
        if not self.payment_keys.keys:  # parses the setting: a malformed one fails here, in one line
            raise ValueError("OFFERS_PAYMENT_SECRET_KEYS holds no key")
        return self

    @property
    def payment_keys(self) -> PaymentKeys:
        """The key ring sealing payment secrets at rest (``offers_workers.domain.secrets``)."""
        try:
            return PaymentKeys.parse(self.secret("payment_secret_keys"), env_name("payment_secret_keys"))
        except authority.KeyringError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _broker_scheme(self) -> Settings:
        for name in ("broker_url", "redis_url"):
            if (getattr(self, name) or "").startswith("redis+socket://"):
                # kombu takes it, but redis-py (caches, flags, queue depths) refuses it: every offer would dead-letter.
                raise ValueError(f"{env_name(name)}: redis+socket:// is not supported; use redis:// or rediss://")
        if self.broker_url and not self.broker_url.startswith((*REDIS_SCHEMES, *AMQP_SCHEMES, SENTINEL_SCHEME)):
            raise ValueError(
                "OFFERS_BROKER_URL must be a Redis (redis://, or sentinel:// for Sentinel) or RabbitMQ (amqp://) URL"
            )
        if len({u.startswith(AMQP_SCHEMES) for u in links.broker_urls(self.broker_url or "")}) > 1:
            # Celery fails over along a ';' list with one transport for all: the first URL's.
            raise ValueError("OFFERS_BROKER_URL: a ';'-separated list takes RabbitMQ URLs only, or Redis ones only")
        for name in ("broker_url", "redis_url"):
            url = getattr(self, name)
            if not is_sentinel(url):
                continue
            try:
                parse_sentinel_url(url)
            except ValueError as exc:
                raise ValueError(f"{env_name(name)}: {exc}") from None
            if not self.redis_sentinel_master:
                raise ValueError(f"OFFERS_REDIS_SENTINEL_MASTER is required with a sentinel:// {env_name(name)}")
        if self.broker_is_rabbitmq and not self.redis_url:
            raise ValueError(
                "OFFERS_REDIS_URL is required with a RabbitMQ broker (results, caches, flags and the beat's lock live in Redis)"
            )
        if self.broker_is_rabbitmq and self.broker_key_prefix:
            raise ValueError(
                "OFFERS_BROKER_KEY_PREFIX applies to a Redis broker only (RabbitMQ separates fleets by virtual host)"
            )
        results = self.effective_redis_url or ""
        if (
            results.startswith("rediss://")
            and parse_qs(urlsplit(results).query).get("ssl_cert_reqs", [""])[0] not in SSL_CERT_REQS
        ):
            # Celery's result backend refuses a rediss:// URL without it, at the first task.
            name = "OFFERS_REDIS_URL" if self.redis_url else "OFFERS_BROKER_URL"
            raise ValueError(
                f"{name}: a rediss:// URL needs ssl_cert_reqs=required (or optional, none) in its query string"
            )
        return self

    @model_validator(mode="after")
    def _links(self) -> Settings:
        for name in sorted(links.allowed_insecure(self) - set(links.LINK_NAMES)):
            raise ValueError(f"OFFERS_ALLOW_INSECURE_LINKS: '{name}' is not a link ({', '.join(links.LINK_NAMES)})")
        tls_files = ("broker_tls_ca_file", "broker_tls_cert_file", "broker_tls_key_file")
        if any(getattr(self, n) for n in tls_files):
            if not (self.broker_url or "").startswith("amqps://"):
                raise ValueError(
                    f"{env_name(next(n for n in tls_files if getattr(self, n)))} applies to an amqps:// broker"
                    " (a rediss:// URL takes ssl_ca_certs, ssl_certfile and ssl_keyfile in its query)"
                )
            if bool(self.broker_tls_cert_file) != bool(self.broker_tls_key_file):
                raise ValueError("OFFERS_BROKER_TLS_CERT_FILE and OFFERS_BROKER_TLS_KEY_FILE go together")
            for n in tls_files:
                path = getattr(self, n)
                if path and not os.access(path, os.R_OK):
                    raise ValueError(f"{env_name(n)}: cannot read the file")
        if self.broker_is_rabbitmq and self.broker_url:
            for url in links.broker_urls(self.broker_url):
                if set(parse_qs(urlsplit(url).query)) & set(links.AMQP_TLS_QUERY):
                    raise ValueError(
                        "OFFERS_BROKER_URL: TLS options do not go in an AMQP URL's query;"
                        " use amqps:// and OFFERS_BROKER_TLS_CA_FILE (and _CERT_FILE, _KEY_FILE)"
                    )
        if refused := links.refusal(self):
            raise ValueError(refused)
        return self

    @model_validator(mode="after")
    def _metrics_endpoint(self) -> Settings:
        # The files themselves are read by `metrics serve` alone: a worker's host need not have them.
        if bool(self.metrics_tls_cert_file) != bool(self.metrics_tls_key_file):
            raise ValueError(
                "OFFERS_METRICS_TLS_CERT_FILE and OFFERS_METRICS_TLS_KEY_FILE go together: set both or neither"
            )
        if self.metrics_tls_client_ca_file and not self.metrics_tls_cert_file:
            raise ValueError(
                "OFFERS_METRICS_TLS_CLIENT_CA_FILE needs OFFERS_METRICS_TLS_CERT_FILE and OFFERS_METRICS_TLS_KEY_FILE"
            )
        if self.metrics_basic_auth is not None:
            user, colon, password = self.metrics_basic_auth.get_secret_value().partition(":")
            if not (user and colon and password):
                raise ValueError("OFFERS_METRICS_BASIC_AUTH takes USER:PASSWORD (a user without ':', a password)")
        return self

    @model_validator(mode="after")
    def _smtp(self) -> Settings:
        if self.smtp_from and not is_email_address(self.smtp_from):
            raise ValueError("OFFERS_SMTP_FROM is not one email address (name@domain or Name <name@domain>)")
        for n, address in enumerate(self.smtp_recipients, 1):
            if not is_email_address(address):
                # Its position, not its value: the one line never prints a setting's value.
                raise ValueError(f"OFFERS_SMTP_TO: address {n} is not an email address (name@domain)")
        if self.smtp_host:
            if not self.smtp_from:
                raise ValueError("OFFERS_SMTP_FROM is required with OFFERS_SMTP_HOST")
            if not self.smtp_recipients:
                raise ValueError("OFFERS_SMTP_TO is required with OFFERS_SMTP_HOST (comma-separated addresses)")
        if bool(self.smtp_username) != bool(self.smtp_password and self.smtp_password.get_secret_value()):
            raise ValueError("OFFERS_SMTP_USERNAME and OFFERS_SMTP_PASSWORD go together: set both or neither")
        return self

    @property
    def smtp_recipients(self) -> list[str]:
        """Who the audit export's summary goes to (OFFERS_SMTP_TO)."""
        return split_addresses(self.smtp_to)

    @property
    def broker_is_rabbitmq(self) -> bool:
        return bool(self.broker_url and self.broker_url.startswith(AMQP_SCHEMES))

    @property
    def effective_redis_url(self) -> str | None:
        """Redis for caches and results: OFFERS_REDIS_URL, else the broker when it is Redis."""
        if self.redis_url:
            return self.redis_url
        if self.broker_url and self.broker_url.startswith((*REDIS_SCHEMES, SENTINEL_SCHEME)):
            return self.broker_url
        return None

    def failpoint_prefixes(self, name: str) -> tuple[str, ...]:
        """Offer id prefixes armed for the failpoint ``name`` (OFFERS_FAILPOINTS, sandbox only)."""
        points = (p.strip() for p in self.failpoints.split(","))
        return tuple(p.removeprefix(f"{name}:") for p in points if p.startswith(f"{name}:"))

    @property
    def crash_on_offer(self) -> tuple[str, ...]:
        """Offer id prefixes whose tasks make a worker exit."""
        return self.failpoint_prefixes("crash_on_offer")

    @property
    def crash_after_hold(self) -> tuple[str, ...]:
        """Offer id prefixes whose card hold makes the worker exit after Stripe answered, before the commit."""
        return self.failpoint_prefixes("crash_after_hold")

    @property
    def aws_credentials(self) -> tuple[str, str] | None:
        """Explicit AWS keys for the AWS adapters: the sandbox's test keys, else None.

        None means boto3's standard chain (env vars, shared config, web identity, instance role):
        what a deployment uses, also behind a VPC or FIPS endpoint (OFFERS_AWS_ENDPOINT_URL).
        """
        return SANDBOX_AWS_CREDENTIALS if self.sandbox else None

    def secret(self, name: str) -> str:
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else (value or "")


def split_addresses(value: str) -> list[str]:
    """``a@example.com, Ops <b@example.com>``: the addresses, as given, blanks dropped."""
    return [a.strip() for a in value.split(",") if a.strip()]


def is_email_address(value: str) -> bool:
    """One ``name@domain`` or ``Display Name <name@domain>``, on one line."""
    if "," in value or any(c.isspace() and c != " " for c in value) or ("<" in value) != value.endswith(">"):
        return False
    _, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and not any(c.isspace() or c in "<>;@" for c in local + domain)


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    if field:
        return f"{env_name(field)}: {msg}"
    return msg


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the environment; raise ConfigError with one line naming the bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_one_line(exc)}") from None


@functools.cache
def get_settings() -> Settings:
    return load_settings()
