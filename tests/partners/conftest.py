"""A partner sandbox on free ports for the whole session; faults cleared after every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config.settings import Settings
from offers_workers.local.sandbox import Sandbox, clear_faults


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(ports=0)
    sb.start(sb.settings())
    yield sb
    sb.stop()


@pytest.fixture(scope="session")
def settings(sandbox: Sandbox) -> Settings:
    return sandbox.settings(partner_read_timeout=2.0)


@pytest.fixture(scope="session")
def fast_settings(sandbox: Sandbox) -> Settings:
    """Short read timeout, for latency faults."""
    return sandbox.settings(partner_connect_timeout=0.5, partner_read_timeout=0.2)


@pytest.fixture(autouse=True)
def _no_faults_left(sandbox: Sandbox) -> Iterator[None]:
    yield
    clear_faults(sandbox)
