"""The partner table is the one list of partners: settings, sandbox, faults and logs agree with it."""

from __future__ import annotations

from config.settings import SANDBOX_DEFAULTS, SANDBOX_PORTS, Settings, env_name
from offers_workers.domain.errors import TransientError
from offers_workers.local.sandbox import PARTNERS as SANDBOX_PARTNERS
from offers_workers.local.sandbox import Sandbox
from offers_workers.local.sandbox.faults import partner_urls
from offers_workers.partners.table import BY_NAME, PARTNER_NAMES, PARTNERS


def test_the_names_the_runbook_and_cli_use() -> None:
    assert PARTNER_NAMES == ("stripe", "sift", "plaid", "aws", "segment") == SANDBOX_PARTNERS
    assert set(BY_NAME) == set(PARTNER_NAMES)


def test_every_setting_the_table_names_exists() -> None:
    for partner in PARTNERS:
        assert {partner.url_setting, *partner.sandbox_settings} <= set(Settings.model_fields), partner.name


def test_sandbox_settings_point_every_partner_at_its_port() -> None:
    settings = Settings(sandbox=True, **{p.url_setting: p.sandbox_url for p in PARTNERS})
    assert {p.name: p.sandbox_port for p in PARTNERS} == SANDBOX_PORTS
    assert partner_urls(settings) == {p.name: f"http://127.0.0.1:{p.sandbox_port}" for p in PARTNERS}
    assert {p.url_setting for p in PARTNERS} <= set(SANDBOX_DEFAULTS)


def test_a_sandbox_hands_every_partner_url_to_the_processes_it_serves() -> None:
    sandbox = Sandbox(ports={"stripe": 1, "sift": 2, "plaid": 3, "aws": 4, "segment": 5})
    env = sandbox.settings_env()
    assert {env_name(p.url_setting): env[env_name(p.url_setting)] for p in PARTNERS} == {
        env_name(p.url_setting): sandbox.urls[p.name] for p in PARTNERS
    }
    settings = sandbox.settings()
    assert {p.name: getattr(settings, p.url_setting) for p in PARTNERS} == sandbox.urls


def test_the_log_field_of_each_partner_error() -> None:
    for partner in PARTNERS:
        assert partner.error_field in TransientError(partner.name, "x", "y").log_fields()
