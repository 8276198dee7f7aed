"""Who may send what: the MAC, the keyrings, and each task's need (offers_workers/domain/authority.py),
the settings that hold the keys, and a worker that will not start without the fleet's key."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import ConfigError, load_settings
from offers_workers.domain import authority
from offers_workers.domain.authority import Keyring

FLEET = Keyring("fleet", (("fleet-new", b"f" * 40), ("fleet-old", b"o" * 40)))
OPS = Keyring("ops", (("ops-1", b"p" * 40),))
UPSTREAM = Keyring("upstream", (("checkout", b"c" * 40), ("checkout.2", b"d" * 40)))
RINGS = (FLEET, OPS, UPSTREAM)


def signed_by(key: tuple[str, bytes], task: str, kwargs: dict, task_id: str = "t-1") -> str:
    return authority.header(key, task, task_id, kwargs)


def test_the_mac_is_the_readmes_four_lines_under_hmac_sha256() -> None:
    kwargs = {"offer_id": "off_1", "b": [1, {"z": "é", "a": None}]}
    text = "offers-auth-v1\noffers.stage.validate\nt-1\n" + json.dumps(
        kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    expected = hmac.new(b"f" * 40, text.encode(), hashlib.sha256).hexdigest()
    assert signed_by(FLEET.keys[0], "offers.stage.validate", kwargs) == f"fleet-new:{expected}"
    # the same arguments in another order are the same message
    assert authority.canonical_kwargs({"b": kwargs["b"], "offer_id": "off_1"}) == authority.canonical_kwargs(kwargs)


@pytest.mark.parametrize(
    ("task", "kwargs", "key", "refused"),
    [
        # a stage: the fleet's keys, old and new, and ops' (a replay)
        ("offers.stage.hold_payment", {"offer_id": "o"}, FLEET.keys[0], None),
        ("offers.stage.hold_payment", {"offer_id": "o"}, FLEET.keys[1], None),
        ("offers.stage.hold_payment", {"offer_id": "o"}, OPS.keys[0], None),
        ("offers.stage.hold_payment", {"offer_id": "o"}, None, "no MAC"),
        ("offers.stage.hold_payment", {"offer_id": "o"}, UPSTREAM.keys[0], "needs a MAC of fleet or ops"),
        ("offers.release_expiring_holds", {}, ("stranger", b"s" * 40), "unknown key id 'stranger'"),
        ("offers.release_expiring_holds", {}, ("fleet-new", b"guessed" * 6), "does not verify with key fleet-new"),
        # a cancel as ops: ops alone
        ("offers.cancel", {"offer_id": "o", "reason": "ops", "actor": "ops"}, OPS.keys[0], None),
        ("offers.cancel", {"offer_id": "o", "reason": "ops", "actor": "ops"}, FLEET.keys[0], "needs a MAC of ops"),
        ("offers.cancel", {"offer_id": "o", "reason": "ops", "actor": "ops"}, UPSTREAM.keys[0], "needs a MAC of ops"),
        ("offers.cancel", {"offer_id": "o", "reason": "ops", "actor": "ops"}, None, "no MAC"),
        # what upstreams send: anyone, a MAC by a key the fleet does not hold too, but not a broken one
        ("offers.submit", {"offer": {}}, None, None),
        ("offers.cancel", {"offer_id": "o", "reason": "buyer_withdrew", "actor": "buyer"}, None, None),
        ("offers.validate_draft", {"draft": {}}, ("stranger", b"s" * 40), None),
        ("offers.submit", {"offer": {}}, ("checkout", b"guessed" * 6), "does not verify with key checkout"),
    ],
)
def test_each_task_needs_its_sender(
    task: str, kwargs: dict, key: tuple[str, bytes] | None, refused: str | None
) -> None:
    value = signed_by(key, task, kwargs) if key else None
    verdict = authority.check(RINGS, task, "t-1", [], kwargs, value)
    if refused is None:
        assert verdict.refused is None
    else:
        assert verdict.refused is not None and refused in verdict.refused


def test_a_mac_covers_the_task_its_id_and_its_arguments() -> None:
    value = signed_by(FLEET.keys[0], "offers.stage.validate", {"offer_id": "off_1"})
    for task, task_id, kwargs in (
        ("offers.release_hold", "t-1", {"offer_id": "off_1"}),
        ("offers.stage.validate", "t-2", {"offer_id": "off_1"}),
        ("offers.stage.validate", "t-1", {"offer_id": "off_2"}),
    ):
        verdict = authority.check(RINGS, task, task_id, [], kwargs, value)
        assert verdict.refused == "the MAC does not verify with key fleet-new"
    # positional arguments are not covered, so a signed message may not have any
    refused = authority.check(RINGS, "offers.stage.validate", "t-1", ["off_9"], {"offer_id": "off_1"}, value).refused
    assert refused == "a signed message takes keyword arguments only"


def test_upstream_signing_names_the_upstream_and_refuses_the_unsigned() -> None:
    kwargs = {"offer": {"offer_id": "off_1"}}
    for key in UPSTREAM.keys:  # NAME and NAME.2, during the upstream's rotation
        verdict = authority.check(
            RINGS, "offers.submit", "t-1", [], kwargs, signed_by(key, "offers.submit", kwargs), upstream_signing=True
        )
        assert (verdict.refused, str(verdict.sender)) == (None, "upstream:checkout")
    unsigned = authority.check(RINGS, "offers.submit", "t-1", [], kwargs, None, upstream_signing=True)
    assert unsigned.refused == "no MAC"
    draft = authority.check(RINGS, "offers.validate_draft", "t-1", [], {"draft": {}}, None, upstream_signing=True)
    assert draft.refused is None


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("fleet-1", "OFFERS_MESSAGE_KEYS: key 1 is not ID=SECRET"),
        ("fleet 1=" + "x" * 40, "OFFERS_MESSAGE_KEYS: key 1 is not ID=SECRET"),
        ("a=" + "x" * 40 + ",b=short-secret", "OFFERS_MESSAGE_KEYS: key 2 (b) is shorter than 32 characters"),
        ("a=" + "x" * 40 + ",a=" + "y" * 40, "OFFERS_MESSAGE_KEYS: key id a is listed twice"),
        (",".join(f"k{n}=" + "x" * 40 for n in range(4)), "OFFERS_MESSAGE_KEYS: at most 3 keys"),
    ],
)
def test_a_malformed_keyring_is_named_without_its_secret(clean_env: pytest.MonkeyPatch, value: str, line: str) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_MESSAGE_KEYS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert line in str(caught.value)
    assert "x" * 32 not in str(caught.value) and "short-secret" not in str(caught.value)


def test_a_key_id_in_two_keyrings_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_MESSAGE_KEYS", "k1=" + "x" * 40)
    clean_env.setenv("OFFERS_OPS_MESSAGE_KEYS", "k1=" + "y" * 40)
    with pytest.raises(ConfigError, match="a key id is in two of"):
        load_settings()


def test_outside_the_sandbox_keys_are_required_and_authentication_stays_on(production_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="OFFERS_MESSAGE_KEYS is required"):
        load_settings()
    production_env.setenv("OFFERS_OPS_MESSAGE_KEYS", "ops-1=" + "p" * 40)  # an operator's CLI alone
    assert load_settings().keyrings[1].signing == ("ops-1", b"p" * 40)
    production_env.setenv("OFFERS_MESSAGE_AUTH", "0")
    with pytest.raises(ConfigError, match="OFFERS_MESSAGE_AUTH=off is refused unless OFFERS_SANDBOX=1"):
        load_settings()


def test_keys_come_from_a_file(production_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = tmp_path / "message-keys"
    keys.write_text("fleet-1=" + "f" * 40 + "\n")
    production_env.setenv("OFFERS_MESSAGE_KEYS_FILE", str(keys))
    assert load_settings().keyrings[0].signing == ("fleet-1", b"f" * 40)


def test_a_worker_without_the_fleets_key_stops_at_start_up(production_env: pytest.MonkeyPatch) -> None:
    # An operator's settings (the ops key alone) on a worker: it would sign nothing, so it does not start.
    production_env.setenv("OFFERS_OPS_MESSAGE_KEYS", "ops-1=" + "p" * 40)
    production_env.setenv("OFFERS_BROKER_URL", "redis://127.0.0.1:1/0")
    code = "from tasks.app import app, _fleet_key_or_stop; _fleet_key_or_stop()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "offers-workers: invalid configuration: OFFERS_MESSAGE_KEYS is required to run a worker or the beat"
    ]


def test_the_sandbox_makes_its_keys_once_and_every_process_reads_the_same(tmp_path: Path) -> None:
    from tasks.authority import SANDBOX_KEYS_FILE, sandbox_keyrings

    first, again = sandbox_keyrings(tmp_path), sandbox_keyrings(tmp_path)
    assert first == again and first[0].role == "fleet" and first[1].role == "ops"
    assert (tmp_path / SANDBOX_KEYS_FILE).stat().st_mode & 0o777 == 0o600
    assert first != sandbox_keyrings(tmp_path / "another")


@pytest.fixture
def production_env(clean_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Every setting a deployment must give but the message keys."""
    for name, value in {
        "OFFERS_STRIPE_API_KEY": "sk_live_x",
        "OFFERS_SIFT_API_KEY": "sift-key",
        "OFFERS_SIFT_ACCOUNT_ID": "acct",
        "OFFERS_PLAID_CLIENT_ID": "client",
        "OFFERS_PLAID_SECRET": "secret",
        "OFFERS_SNS_SUBMITTED_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:offers-submitted",
        "OFFERS_SNS_CANCELLED_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:offers-cancelled",
        "OFFERS_AUDIT_BUCKET": "offers-audit",
        "OFFERS_PAYMENT_SECRET_KEYS": "pay-1=" + "s" * 40,
    }.items():
        clean_env.setenv(name, value)
    return clean_env


def test_a_refusal_postgres_cannot_record_goes_back_to_the_broker_as_it_came(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import psycopg
    from celery import Celery
    from celery.exceptions import Reject

    from config.settings import Settings
    from offers_workers.saga import intake
    from offers_workers.store import counters
    from tasks import authority as wire
    from tasks.authority import AuthenticatedTask

    settings = Settings(sandbox=True, state_dir=tmp_path)
    counted, ran = [], []

    def postgres_away(*_: object, **__: object) -> None:
        raise psycopg.OperationalError("the server closed the connection")

    monkeypatch.setattr(intake, "record_unauthenticated", postgres_away)
    monkeypatch.setattr(counters, "count_unauthenticated", lambda *a: counted.append(a))
    monkeypatch.setattr("offers_workers.runtime.get_runtime", lambda: None)
    monkeypatch.setattr(wire, "REQUEUE_PAUSE_S", 0)
    app = Celery("refusals", set_as_current=False)

    @app.task(name="offers.release_hold", base=AuthenticatedTask, bind=True, shared=False)
    def release_hold(self: AuthenticatedTask, offer_id: str) -> None:
        ran.append(offer_id)

    release_hold.push_request(id="m1", called_directly=False, args=[], kwargs={"offer_id": "off_1"}, callbacks=[{}])
    try:
        # An unsigned hold release, while Postgres cannot take its record
        with pytest.raises(Reject) as rejected:
            release_hold.refused(settings)
        # goes back to the broker as it came (never re-sent, which would sign it), uncounted until recorded
        assert rejected.value.requeue is True
        assert (ran, counted, release_hold.request.callbacks) == ([], [], None)
    finally:
        release_hold.pop_request()
