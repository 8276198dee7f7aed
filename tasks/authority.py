"""The trust boundary on the wire: every message the fleet or an operator sends is signed, and every
message a worker runs is checked first (offers_workers/domain/authority.py says who may send what).

A message refused here never reaches its task's code: it is recorded as an intake rejection with the
code ``unauthenticated``, counted for ``/metrics`` and acknowledged (handed back to the broker as it
came while Postgres cannot take the record). It is never retried, replayed or re-sent, since any of
those would sign it with the fleet's key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery.exceptions import Reject

from config.settings import ConfigError, Settings, get_settings
from offers_workers.domain import authority
from offers_workers.domain.authority import HEADER, Keyring, Role
from tasks.redaction import RedactedTask

log = logging.getLogger("offers_workers.authority")

#: The sandbox's keys, made once per state directory, so `dev`, its workers and a second terminal's
#: CLI share them without any setting (a deployment sets OFFERS_MESSAGE_KEYS and OFFERS_OPS_MESSAGE_KEYS).
SANDBOX_KEYS_FILE = "message-keys.json"

#: What a message may ask a worker to send after its task: nothing, for the fleet never asks.
LINKS = ("callbacks", "errbacks", "chain", "chord")
#: The bench's bare chain (tasks/bench.py, registered in bench fleets only) is a canvas chain.
BENCH_TASKS = "offers.bench."

#: Our own stores briefly away (a Postgres restart, a serialization conflict, Redis failing over).
STORE_ERRORS = (psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError)
#: How long a worker waits before handing such a message back, so it does not spin while Postgres is away.
REQUEUE_PAUSE_S = 1.0

#: Whose key this process signs with (the CLI says ops); it falls back to the other it holds.
_signing_role: Role = "fleet"


def sign_as(role: Role) -> None:
    """Sign this process's messages as ``role`` (the operator CLI calls it with ops)."""
    global _signing_role
    _signing_role = role


def declares_queues() -> bool:
    """The fleet's workers and beat declare the queues they use; the operator CLI (signing as ops) only
    sends to queues the workers declared, so ops' broker user needs no right to declare them, which
    would also be the right to delete them (docs/operations.md, least privilege)."""
    return _signing_role == "fleet"


def sandbox_keyrings(state_dir: Path) -> tuple[Keyring, ...]:
    """The fleet's and ops' keys of a sandbox, from its state directory (made there, 0600, at first use)."""
    path = state_dir / SANDBOX_KEYS_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        made = {"fleet": secrets.token_urlsafe(32), "ops": secrets.token_urlsafe(32)}
        draft = state_dir / f".{SANDBOX_KEYS_FILE}.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(made, out)
        # A link fails if another process made the file first: every process then reads the same keys.
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
        draft.unlink()
    keys = json.loads(path.read_text())
    return (
        Keyring("fleet", (("sandbox-fleet", keys["fleet"].encode()),)),
        Keyring("ops", (("sandbox-ops", keys["ops"].encode()),)),
    )


#: The keyrings of the settings in use (by the settings object's id): parsed once, not per message.
_parsed: dict[int, tuple[Settings, tuple[Keyring, ...]]] = {}


def keyrings_for(settings: Settings) -> tuple[Keyring, ...]:
    cached = _parsed.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    rings = settings.keyrings
    if settings.sandbox and not any(r.keys for r in rings if r.role != "upstream"):
        rings = (*sandbox_keyrings(settings.state_dir), *(r for r in rings if r.role == "upstream"))
    _parsed[id(settings)] = (settings, rings)
    return rings


def keyrings() -> tuple[Keyring, ...]:
    return keyrings_for(get_settings())


def signing_key(role: Role) -> tuple[str, bytes] | None:
    found = {r.role: r.signing for r in keyrings() if r.signing}
    return found.get(role)


def sign(name: str, task_id: str, args: Any, kwargs: Any) -> str | None:
    """The ``offers_auth`` header for a message this process sends; None when it holds no key or
    authentication is off (an upstream-like sender: its message must need no authority)."""
    if not get_settings().message_auth or args:
        return None
    kwargs = kwargs or {}
    if name == "offers.cancel" and kwargs.get("actor") == authority.OPS_ACTOR:
        key = signing_key("ops")
        if key is None:
            raise ConfigError("a cancel as ops needs OFFERS_OPS_MESSAGE_KEYS (the ops key)")
    else:
        other: Role = "ops" if _signing_role == "fleet" else "fleet"
        key = signing_key(_signing_role) or signing_key(other)
    return authority.header(key, name, task_id, kwargs) if key else None


def worker_key_or_exit() -> None:
    """A worker or beat signs every hand-on: without the fleet's key it must not start."""
    settings = get_settings()
    if settings.message_auth and signing_key("fleet") is None:
        raise ConfigError("invalid configuration: OFFERS_MESSAGE_KEYS is required to run a worker or the beat")


def check(task: Any, settings: Settings) -> authority.Verdict:
    """May the message ``task`` is running now run? (Called directly or eagerly: no message, yes.)"""
    request = task.request
    if request.called_directly or request.is_eager or not settings.message_auth:
        return authority.Verdict(None)
    if any(request.get(link) for link in LINKS) and not task.name.startswith(BENCH_TASKS):
        # The MAC covers the arguments, not what a worker sends when the task is done: a link added to
        # a captured message would go out signed with the fleet's key. The fleet hands on explicitly.
        return authority.Verdict(None, "links (callbacks, errbacks, chain, chord) are not accepted")
    return authority.check(
        keyrings_for(settings),
        task.name,
        request.id,
        request.args,
        request.kwargs,
        request.get(HEADER),
        upstream_signing=settings.upstream_signing,
    )


def sender_of(task: Any) -> str | None:
    """Who signed the message the task runs (``fleet``, ``ops``, ``upstream:NAME``), None if nobody."""
    return getattr(task.request, "sender", None)


def refuse(task: Any, verdict: authority.Verdict) -> None:
    """Record and count a refused message; it is acknowledged and never acted upon."""
    from offers_workers.runtime import get_runtime
    from offers_workers.saga import intake
    from offers_workers.store import counters

    request = task.request
    queue = (request.delivery_info or {}).get("routing_key") or "unknown"
    why = verdict.refused or "refused"
    rt = get_runtime()
    log.error(
        "refused an unauthenticated message",
        extra={"task": task.name, "queue": queue, "reason": authority.UNAUTHENTICATED, "why": why},
    )
    try:
        intake.record_unauthenticated(
            rt,
            queue=queue,
            task=task.name,
            why=why,
            sender=str(verdict.sender) if verdict.sender else None,
            arguments={"args": request.args, "kwargs": request.kwargs},
            task_id=request.id if isinstance(request.id, str) else None,
        )
    except STORE_ERRORS as exc:
        # Back to the broker as it came, unsigned, for a worker to record once Postgres answers. Never
        # retried: a retry would go out signed with the fleet's key. The pause keeps it from spinning.
        log.warning("could not record a refused message yet", extra={"task": task.name, "queue": queue})
        time.sleep(REQUEUE_PAUSE_S)
        raise Reject(exc, requeue=True) from None
    counters.count_unauthenticated(rt.redis, rt.settings.redis_key_prefix, task.name, authority.problem_kind(why))


class AuthenticatedTask(RedactedTask):
    """The base of every task of the app (``OffersCelery.task_cls``): a message is checked before it runs."""

    def refused(self, settings: Settings | None = None) -> bool:
        verdict = check(self, settings or get_settings())
        if verdict.refused is None:
            # Who signed it, for a task that records its sender (an upstream's submit or cancel).
            self.request.sender = str(verdict.sender) if verdict.sender else None
            return False
        # Celery sends a run's links when it returns, whatever it did: a refused message's must not go.
        for link in LINKS:
            setattr(self.request, link, None)
        refuse(self, verdict)
        return True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.refused():
            return None
        return super().__call__(*args, **kwargs)
