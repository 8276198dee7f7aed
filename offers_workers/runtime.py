"""What a stage needs at run time: settings, the database, Redis and the partner adapters.

Built once per process and lazily, so a forked worker child opens its own connections. Partners are
typed by their roles (``partners.interfaces``): a test passes fakes (``partners.fakes``) instead of
the SDK adapters, e.g. ``Runtime(settings, stripe=FakePayments())``.
"""

from __future__ import annotations

import functools
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, get_args

import redis
from redis import Redis

from config.settings import ConfigError, Settings, get_settings
from offers_workers.domain.partners import PARTNERS
from offers_workers.redis_client import redis_client
from offers_workers.store import counters
from offers_workers.store.db import Database
from offers_workers.store.policy import PolicyStore

if TYPE_CHECKING:
    from offers_workers.partners.interfaces import Archive, AuctionEvents, BankFunds, Funnel, Payments, RiskScoring
    from offers_workers.saga.admission import SoftLaunch
    from offers_workers.store.flags import FlagStore


#: The process types of the connection budget (docs/operations.md, section 3). What a process runs
#: at once decides how many Postgres connections it can use: ``prefork`` one task (a prefork child,
#: a solo worker), ``threads`` many (a thread, gevent or eventlet pool), ``metrics`` one scrape, and
#: ``cli`` one command (the CLI, ``release``, the host process of dev, demo and bench).
ProcessKind = Literal["prefork", "threads", "metrics", "cli"]
PROCESS_KINDS: tuple[ProcessKind, ...] = get_args(ProcessKind)

#: A command runs one statement at a time; one more for what it may open beside (the export's lock).
CLI_POOL_SIZE = 2

#: Pooled connections name their process type, so pg_stat_activity (and ``health``) can count each.
APPLICATION_NAME_PREFIX = "offers-workers "


def pool_size(settings: Settings, kind: ProcessKind) -> int:
    """Postgres connections a process of ``kind`` may open: OFFERS_DB_POOL_SIZE if set, else its type's."""
    if settings.db_pool_size is not None:
        return settings.db_pool_size
    return {
        "prefork": settings.db_pool_size_prefork,
        "threads": settings.db_pool_size_threads,
        "metrics": settings.db_pool_size_metrics,
    }.get(kind, CLI_POOL_SIZE)


def pool_kind(pool_cls: Any) -> ProcessKind:
    """The process type of a Celery worker with this pool (``--pool``: an alias, or the class its
    command line resolved): prefork and solo run one task per process at a time, any other pool
    (threads, gevent, eventlet) many side by side."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool as Prefork
    from celery.concurrency.solo import TaskPool as Solo

    return "prefork" if issubclass(get_implementation(pool_cls), (Prefork, Solo)) else "threads"


class Runtime:
    """Settings, stores and partners for one process.

    Parameters:
        settings: the validated settings.
        db_wait_s: how long the first database use waits for Postgres to come up.
        kind: the process type, which sizes its connection pool (``set_kind`` changes it later).
        stripe, sift, plaid, events, archive, funnel: partners to use instead of the SDK adapters the
            settings would build (fakes in tests); None builds the real one on first use (the funnel:
            only with OFFERS_SEGMENT_WRITE_KEY set).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        db_wait_s: float = 10,
        kind: ProcessKind = "cli",
        stripe: Payments | None = None,
        sift: RiskScoring | None = None,
        plaid: BankFunds | None = None,
        events: AuctionEvents | None = None,
        archive: Archive | None = None,
        funnel: Funnel | None = None,
    ) -> None:
        self.settings = settings
        self.db_wait_s = db_wait_s
        self.kind: ProcessKind = kind
        # A cached_property reads the instance dict first: a given partner is used as it is.
        given = {"stripe": stripe, "sift": sift, "plaid": plaid, "events": events, "archive": archive, "funnel": funnel}
        self.__dict__.update({name: partner for name, partner in given.items() if partner is not None})

    @cached_property
    def db(self) -> Database:
        if not self.settings.database_url:
            raise ConfigError("invalid configuration: OFFERS_DATABASE_URL is required to run workers")
        return Database(
            self.settings.database_url,
            max_size=pool_size(self.settings, self.kind),
            application_name=APPLICATION_NAME_PREFIX + self.kind,
            idle_in_transaction_timeout_s=self.settings.db_idle_in_transaction_timeout_seconds,
            lock_timeout_s=self.settings.db_lock_timeout_seconds,
            wait_s=self.db_wait_s,
            prepared_statements=self.settings.db_prepared_statements,
        )

    def set_kind(self, kind: ProcessKind) -> None:
        """Say which process type this is (a Celery worker learns it at start-up, from its pool).
        A pool already built for another type is closed: the next use opens one of the right size."""
        if kind not in PROCESS_KINDS:
            raise ValueError(f"unknown process type {kind!r}")
        if kind != self.kind and "db" in self.__dict__:
            self.__dict__.pop("db").close()
            self.__dict__.pop("flags", None)  # it reads through the pool just closed
        self.kind = kind

    @cached_property
    def redis(self) -> redis.Redis | None:
        if not self.settings.effective_redis_url:
            return None
        return redis_client(self.settings, socket_timeout=5, health_check_interval=30)

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
    def funnel(self) -> Funnel | None:
        """The product funnel (Segment); None while OFFERS_SEGMENT_WRITE_KEY is unset. Its client and
        thread are built at the first event, in the process that sends it."""
        if not self.settings.secret("segment_write_key"):
            return None
        from offers_workers.partners.segment_funnel import SegmentFunnel

        prefix = self.settings.redis_key_prefix
        return SegmentFunnel(
            self.settings, lambda cause, events: counters.count_funnel_unsent(self.redis, prefix, cause, events)
        )

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
        each import a different SDK on their first task can deadlock on Python's import locks.
        The database's pool holder too (it connects on first use): from Python 3.12 on a
        cached_property takes no lock, and threads racing on their first task would build one each."""
        for partner in PARTNERS:
            for attribute in partner.runtime_attributes:
                getattr(self, attribute)
        if self.settings.database_url:
            _ = self.db

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.close()


@functools.cache
def get_runtime() -> Runtime:
    return Runtime(get_settings())
