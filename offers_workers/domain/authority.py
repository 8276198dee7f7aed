"""Who may send what: message authentication codes and the authority each task needs.

A message that carries authority (a stage hand-on, a beat or maintenance job, an ops command) carries
a MAC made with a key the broker never sees, in the header ``offers_auth``: ``KEY_ID:HEX``, where HEX
is HMAC-SHA256 over ``offers-auth-v1``, the task name, the task id and the canonical JSON of the
keyword arguments, joined by newlines. Canonical JSON: keys sorted, no spaces, UTF-8, non-ASCII as
itself (what ``JSON.stringify`` of a key-sorted object gives). The key id names the key, and the
keyring it belongs to names the sender: the fleet, ops, or one upstream. Authority is read from that
identity, never from the message's own fields.

No Celery and no I/O here: the tasks and the settings use it, and so can a producer's tests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: The message header that carries the MAC.
HEADER = "offers_auth"
#: What the MAC's text starts with: a MAC of another scheme or version never verifies as this one.
SCHEME = "offers-auth-v1"
#: A key id: letters, digits, '_' and '-', and for an upstream ``NAME.VERSION`` (its name is NAME).
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}(\.[A-Za-z0-9_-]{1,16})?")
#: Shortest secret accepted, in characters (32 random bytes in base64 are 44).
MIN_SECRET = 32
#: Most keys one keyring holds: the key in use, the next one, and the one being retired.
MAX_KEYS = 3

Role = Literal["fleet", "ops", "upstream"]

#: The tasks upstream services send (the contract). Every other task carries authority.
UPSTREAM_TASKS = frozenset({"offers.submit", "offers.cancel", "offers.validate_draft"})
#: Upstream tasks a deployment may require an upstream's MAC on (OFFERS_UPSTREAM_SIGNING).
SIGNED_UPSTREAM_TASKS = frozenset({"offers.submit", "offers.cancel"})
OPS_ACTOR = "ops"
#: What a refused message is recorded and counted with.
UNAUTHENTICATED = "unauthenticated"


class KeyringError(ValueError):
    """A keyring setting is malformed: the message names the problem, never a secret."""


@dataclass(frozen=True)
class Keyring:
    """One sender's keys, the first one signing, all of them accepted (a rotation holds two)."""

    role: Role
    keys: tuple[tuple[str, bytes], ...]

    @property
    def signing(self) -> tuple[str, bytes] | None:
        return self.keys[0] if self.keys else None


def parse_keys(text: str, setting: str, role: Role) -> Keyring:
    """``ID=SECRET[,ID=SECRET…]`` as a keyring; the first key signs. Errors name the setting and the
    key's position, never a value."""
    keys: list[tuple[str, bytes]] = []
    for n, entry in enumerate((e.strip() for e in text.split(",")), 1):
        if not entry:
            continue
        key_id, sep, secret = entry.partition("=")
        key_id, secret = key_id.strip(), secret.strip()
        if not sep or not KEY_ID.fullmatch(key_id):
            raise KeyringError(f"{setting}: key {n} is not ID=SECRET (ID: 1-32 letters, digits, '_' or '-')")
        if len(secret) < MIN_SECRET:
            raise KeyringError(f"{setting}: key {n} ({key_id}) is shorter than {MIN_SECRET} characters")
        if any(key_id == k for k, _ in keys):
            raise KeyringError(f"{setting}: key id {key_id} is listed twice")
        keys.append((key_id, secret.encode()))
    if len(keys) > MAX_KEYS:
        raise KeyringError(f"{setting}: at most {MAX_KEYS} keys (the one in use, the next, the one retired)")
    return Keyring(role, tuple(keys))


def canonical_kwargs(kwargs: Mapping[str, Any]) -> bytes:
    """The keyword arguments as the MAC covers them: sorted keys, no spaces, UTF-8."""
    return json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def mac(secret: bytes, task: str, task_id: str, kwargs: Mapping[str, Any]) -> str:
    text = b"\n".join((SCHEME.encode(), task.encode(), task_id.encode(), canonical_kwargs(kwargs)))
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def header(key: tuple[str, bytes], task: str, task_id: str, kwargs: Mapping[str, Any]) -> str:
    """The ``offers_auth`` header of a message signed with ``key``."""
    key_id, secret = key
    return f"{key_id}:{mac(secret, task, task_id, kwargs)}"


@dataclass(frozen=True)
class Sender:
    """Who signed a message: a role, and for an upstream its name (the key id before any '.')."""

    role: Role
    name: str

    def __str__(self) -> str:
        return self.role if self.role != "upstream" else f"upstream:{self.name}"


@dataclass(frozen=True)
class Verdict:
    """What the check of one message found: who sent it (None: nobody we know), and why it is
    refused (None: it may run)."""

    sender: Sender | None
    refused: str | None = None


def identify(
    keyrings: tuple[Keyring, ...], task: str, task_id: Any, args: Any, kwargs: Any, value: Any
) -> tuple[Sender | None, str | None]:
    """The sender whose key made the MAC in ``value``, or None and what was wrong with it."""
    if value is None:
        return None, "no MAC"
    if not isinstance(value, str) or value.count(":") != 1:
        return None, "the MAC header is not KEY_ID:HEX"
    key_id, given = value.split(":")
    for ring in keyrings:
        for kid, secret in ring.keys:
            if kid != key_id:
                continue
            if args or not isinstance(kwargs, dict) or not isinstance(task_id, str):
                return None, "a signed message takes keyword arguments only"
            try:
                expected = mac(secret, task, task_id, kwargs)
            except (TypeError, ValueError):
                return None, "the arguments are not JSON"
            if not hmac.compare_digest(expected, given):
                return None, f"the MAC does not verify with key {kid}"
            return Sender(ring.role, kid.split(".", 1)[0]), None
    return None, f"unknown key id {key_id[:32]!r}"


def needed(task: str, kwargs: Any, *, upstream_signing: bool) -> frozenset[Role] | None:
    """The senders a task's message must come from; None: anyone who can reach the queue."""
    if task == "offers.cancel" and isinstance(kwargs, dict) and kwargs.get("actor") == OPS_ACTOR:
        return frozenset({"ops"})
    if task in UPSTREAM_TASKS:
        if upstream_signing and task in SIGNED_UPSTREAM_TASKS:
            return frozenset({"upstream", "ops", "fleet"})
        return None
    return frozenset({"fleet", "ops"})


def check(
    keyrings: tuple[Keyring, ...],
    task: str,
    task_id: Any,
    args: Any,
    kwargs: Any,
    value: Any,
    *,
    upstream_signing: bool = False,
) -> Verdict:
    """May this message run? A valid MAC names its sender; the task says which senders it needs."""
    sender, problem = identify(keyrings, task, task_id, args, kwargs, value)
    allowed = needed(task, kwargs, upstream_signing=upstream_signing)
    if allowed is None:
        # Open to any upstream. A MAC by a key we hold that does not verify was tampered with: refused.
        # One by a key we do not hold is an upstream signing before the fleet has its key: let through.
        tampered = problem is not None and value is not None and not problem.startswith("unknown key id")
        return Verdict(sender, problem if tampered else None)
    if sender is None:
        return Verdict(None, problem)
    if sender.role not in allowed:
        what = "a cancel as ops" if "ops" in allowed and len(allowed) == 1 else task
        return Verdict(sender, f"{what} needs a MAC of {' or '.join(sorted(allowed))}, not of {sender}")
    return Verdict(sender)


def problem_kind(problem: str) -> str:
    """A refusal's kind, for the counter's label: no_mac, unknown_key, bad_mac, not_allowed, links or malformed."""
    if problem == "no MAC":
        return "no_mac"
    if problem.startswith("unknown key id"):
        return "unknown_key"
    if "does not verify" in problem:
        return "bad_mac"
    if "needs a MAC" in problem:
        return "not_allowed"
    if problem.startswith("links"):
        return "links"
    return "malformed"
