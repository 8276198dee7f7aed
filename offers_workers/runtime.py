"""What a stage needs at run time: settings, the database, Redis and the partner adapters.

Built once per process and lazily, so a forked worker child opens its own connections. Partners are
typed by their roles (``partners.interfaces``): a test passes fakes (``partners.fakes``) instead of
the SDK adapters, e.g. ``Runtime(settings, stripe=FakePayments())``.
"""

from __future__ import annotations

import functools
from functools import cached_property
from typing import TYPE_CHECKING

import redis
from redis import Redis

from config.settings import ConfigError, Settings, get_settings
from offers_workers.partners.table import PARTNERS
from offers_workers.store.db import Database
from offers_workers.store.policy import PolicyStore

if TYPE_CHECKING:
    from offers_workers.partners.interfaces import Archive, AuctionEvents, BankFunds, Payments, RiskScoring
    from offers_workers.saga.admission import SoftLaunch
    from offers_workers.store.flags import FlagStore


class Runtime:
    """Settings, stores and partners for one process.

    Parameters:
        settings: the validated settings.
        db_wait_s: how long the first database use waits for Postgres to come up.
        stripe, sift, plaid, events, archive: partners to use instead of the SDK adapters the
            settings would build (fakes in tests); None builds the real one on first use.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        db_wait_s: float = 10,
        stripe: Payments | None = None,
        sift: RiskScoring | None = None,
        plaid: BankFunds | None = None,
        events: AuctionEvents | None = None,
        archive: Archive | None = None,
    ) -> None:
        self.settings = settings
        self.db_wait_s = db_wait_s
        # A cached_property reads the instance dict first: a given partner is used as it is.
        given = {"stripe": stripe, "sift": sift, "plaid": plaid, "events": events, "archive": archive}
        self.__dict__.update({name: partner for name, partner in given.items() if partner is not None})

    @cached_property
    def db(self) -> Database:
        if not self.settings.database_url:
            raise ConfigError("invalid configuration: OFFERS_DATABASE_URL is required to run workers")
        return Database(
            self.settings.database_url,
            max_size=self.settings.db_pool_size,
            idle_in_transaction_timeout_s=self.settings.db_idle_in_transaction_timeout_seconds,
            lock_timeout_s=self.settings.db_lock_timeout_seconds,
            wait_s=self.db_wait_s,
            prepared_statements=self.settings.db_prepared_statements,
        )

    @cached_property
    def redis(self) -> redis.Redis | None:
        url = self.settings.effective_redis_url
        return redis.Redis.from_url(url, socket_timeout=5, health_check_interval=30) if url else None

    @property
    def required_redis(self) -> Redis:
        """Redis, for what cannot work without it (the bench's counters)."""
        if self.redis is None:
            raise RuntimeError("this needs Redis: set OFFERS_BROKER_URL to a Redis URL or OFFERS_REDIS_URL")
        return self.redis

    @cached_property
    def policies(self) -> PolicyStore:
        return PolicyStore(
            self.redis, key_prefix=self.settings.redis_key_prefix, cache_seconds=self.settings.policy_cache_seconds
        )

    @cached_property
    def stripe(self) -> Payments:
        from offers_workers.partners.stripe_payments import StripePayments

        return StripePayments(self.settings)

    @cached_property
    def sift(self) -> RiskScoring:
        from offers_workers.partners.sift_risk import SiftRisk

        return SiftRisk(self.settings)

    @cached_property
    def plaid(self) -> BankFunds:
        from offers_workers.partners.plaid_funds import PlaidFunds

        return PlaidFunds(self.settings)

    @cached_property
    def events(self) -> AuctionEvents:
        from offers_workers.partners.aws_events import EventPublisher

        return EventPublisher(self.settings)

    @cached_property
    def archive(self) -> Archive:
        from offers_workers.partners.aws_archive import AuditArchive

        return AuditArchive(self.settings)

    @cached_property
    def flags(self) -> FlagStore:
        from offers_workers.store.flags import FlagStore

        return FlagStore(self.db, self.settings.flag_cache_seconds)

    @cached_property
    def soft_launch(self) -> SoftLaunch:
        from offers_workers.saga.admission import SoftLaunch

        if self.redis is None:
            raise ConfigError("invalid configuration: SOFT_LAUNCH_MODE needs Redis (OFFERS_REDIS_URL)")
        s = self.settings
        return SoftLaunch(
            self.redis,
            key_prefix=s.redis_key_prefix,
            rate=s.soft_launch_rate,
            burst=s.soft_launch_burst or max(1, int(s.soft_launch_rate)),
            makers=frozenset(m.strip() for m in s.soft_launch_makers.split(",") if m.strip()),
        )

    def warm_up(self) -> None:
        """Import the partner SDKs and build their clients now, in one thread. Forty threads that
        each import a different SDK on their first task can deadlock on Python's import locks."""
        for partner in PARTNERS:
            for attribute in partner.runtime_attributes:
                getattr(self, attribute)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.close()


@functools.cache
def get_runtime() -> Runtime:
    return Runtime(get_settings())
