"""The connection budget's settings: each process type sizes its Postgres pool from its own setting,
OFFERS_DB_POOL_SIZE overrides them all, and a worker knows its type from its pool."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from config.settings import ConfigError, load_settings
from offers_workers.runtime import Runtime, pool_kind, pool_size


@pytest.fixture
def sandbox_env(clean_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_DATABASE_URL", "postgresql://fleet@db.invalid:5432/offers")
    return clean_env


def test_each_process_type_takes_its_own_pool_size_when_nothing_is_set(sandbox_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    sizes = {kind: pool_size(settings, kind) for kind in ("prefork", "threads", "metrics", "cli")}
    assert sizes == {"prefork": 1, "threads": 12, "metrics": 1, "cli": 2}


def test_a_type_setting_changes_that_type_only(sandbox_env: pytest.MonkeyPatch) -> None:
    sandbox_env.setenv("OFFERS_DB_POOL_SIZE_THREADS", "24")
    settings = load_settings()
    assert (pool_size(settings, "threads"), pool_size(settings, "prefork"), pool_size(settings, "metrics")) == (
        24,
        1,
        1,
    )


def test_offers_db_pool_size_overrides_every_type(sandbox_env: pytest.MonkeyPatch) -> None:
    sandbox_env.setenv("OFFERS_DB_POOL_SIZE", "7")
    sandbox_env.setenv("OFFERS_DB_POOL_SIZE_THREADS", "24")
    settings = load_settings()
    assert {pool_size(settings, kind) for kind in ("prefork", "threads", "metrics", "cli")} == {7}


@pytest.mark.parametrize(
    "name", ["OFFERS_DB_POOL_SIZE_PREFORK", "OFFERS_DB_POOL_SIZE_THREADS", "OFFERS_DB_POOL_SIZE_METRICS"]
)
def test_a_pool_size_out_of_range_is_named_in_one_line(sandbox_env: pytest.MonkeyPatch, name: str) -> None:
    sandbox_env.setenv(name, "0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == f"invalid configuration: {name}: Input should be greater than or equal to 1"


def test_a_worker_with_a_bad_pool_size_stops_with_one_line(sandbox_env: pytest.MonkeyPatch) -> None:
    sandbox_env.setenv("OFFERS_BROKER_URL", "redis://127.0.0.1:1/0")
    sandbox_env.setenv("OFFERS_DB_POOL_SIZE_THREADS", "500")
    result = subprocess.run([sys.executable, "-c", "import tasks.app"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "offers-workers: invalid configuration: OFFERS_DB_POOL_SIZE_THREADS: Input should be less than or equal to 100"
    ]


@pytest.mark.parametrize(
    ("pool", "kind"),
    [("prefork", "prefork"), ("processes", "prefork"), ("solo", "prefork"), ("threads", "threads")],
)
def test_a_worker_knows_its_type_from_its_pool(pool: str, kind: str) -> None:
    from celery.concurrency import get_implementation

    # Celery hands worker_init the --pool alias, or the class its command line resolved
    assert pool_kind(pool) == kind
    assert pool_kind(get_implementation(pool)) == kind


def test_the_runtime_sizes_its_pool_by_type_and_names_it(sandbox_env: pytest.MonkeyPatch) -> None:
    rt = Runtime(load_settings())
    # Nothing connects here: the pool opens on first use
    assert (rt.db.max_size, rt.db.application_name) == (2, "offers-workers cli")
    rt.set_kind("threads")
    assert (rt.db.max_size, rt.db.application_name) == (12, "offers-workers threads")
    with pytest.raises(ValueError, match="unknown process type"):
        rt.set_kind("beat")  # type: ignore[arg-type]


def test_an_application_name_in_the_url_is_kept(sandbox_env: pytest.MonkeyPatch) -> None:
    sandbox_env.setenv("OFFERS_DATABASE_URL", "postgresql://fleet@db.invalid:5432/offers?application_name=ours")
    assert Runtime(load_settings(), kind="metrics").db.application_name is None


@pytest.mark.parametrize(
    "refused",
    [
        PoolTimeout("couldn't get a connection after 10.00 sec"),
        # What connect raises when the server refuses (SQLSTATE 53300, which libpq does not pass on)
        psycopg.OperationalError("connection failed: FATAL:  sorry, too many clients already"),
        psycopg.errors.TooManyConnections("sorry, too many clients already"),
    ],
    ids=["pool timeout", "refused at connect", "53300"],
)
def test_a_stage_without_a_connection_is_retried_under_the_outage_budget_not_its_own(refused: Exception) -> None:
    from config.retry import STORE_OUTAGE, policy_for
    from offers_workers.saga import decisions
    from tasks.base import STORE_ERRORS

    own = policy_for("intake").max_retries
    # Past the stage's own budget for a partner's transient error, still retried: our store is away
    for retries_done in (0, own, STORE_OUTAGE.max_retries - 1):
        failure = decisions.on_failure(refused, stage="intake", retries_done=retries_done, store_errors=STORE_ERRORS)
        assert failure == decisions.RetryLater(STORE_OUTAGE), retries_done
    # Only once the outage budget is spent does the stage go to its dead-letter queue
    spent = decisions.on_failure(
        refused, stage="intake", retries_done=STORE_OUTAGE.max_retries, store_errors=STORE_ERRORS
    )
    assert isinstance(spent, decisions.DeadLetter)
