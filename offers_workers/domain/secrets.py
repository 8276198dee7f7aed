"""Payment secrets (Plaid access tokens and account ids, partner keys): sealed where they must be
kept, removed from everything else, never shown.

Two tools, one for each kind of record:

- ``redact`` / ``redact_text``: for what is only ever read by a person (raw bodies of rejections,
  CLI output). The secret is gone for good: ``plaid_access_token`` and ``plaid_account_id`` values,
  anywhere in a JSON value, and anything shaped like a Plaid token or a Stripe key, in any string.
- ``PaymentKeys.seal_within`` / ``open_within``: for what the saga must use again (an offer's payload,
  a dead letter's kwargs a replay re-sends). The two fields are encrypted with the first key of
  ``OFFERS_PAYMENT_SECRET_KEYS`` as ``enc:v1:KEYID:TOKEN`` (Fernet: AES-128-CBC with an HMAC); every
  listed key opens, so a rotation keeps old rows readable until `secrets rotate` re-seals them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from offers_workers.domain import authority

#: The payload fields that are payment secrets.
SECRET_FIELDS = frozenset({"plaid_access_token", "plaid_account_id"})
REDACTED = "[redacted]"
#: What an offer's payload holds in place of a secret once the saga is done with it.
DROPPED = "[dropped]"
#: What an offer read from Postgres shows in place of a sealed secret (only the partner calls open it).
SEALED = "[sealed]"
PREFIX = "enc:v1:"

#: Secrets recognisable by their shape, wherever they appear: Plaid access tokens, Stripe secret and
#: restricted keys.
SHAPED = re.compile(r"access-(?:sandbox|development|production)-[A-Za-z0-9_.-]+|\b[sr]k_(?:live|test)_[A-Za-z0-9_]+")
#: A secret field in JSON text that could not be parsed (an unreadable message): its value, to the
#: closing quote or, cut off, to the end.
FIELD_IN_TEXT = re.compile(r'("(?:' + "|".join(sorted(SECRET_FIELDS)) + r')"\s*:\s*)"(?:[^"\\]|\\.)*"?')


def redact_text(text: str) -> str:
    """``text`` without any secret field's value or anything shaped like a token or key."""
    return SHAPED.sub(REDACTED, FIELD_IN_TEXT.sub(rf'\1"{REDACTED}"', text))


def redact(value: Any) -> Any:
    """A copy of a decoded JSON value with every secret removed (field by name, strings by shape)."""
    if isinstance(value, dict):
        return {
            k: REDACTED if k in SECRET_FIELDS and isinstance(v, str) and v != DROPPED else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def key_id_of(value: str) -> str:
    """The id of the key that sealed ``value``."""
    return value[len(PREFIX) :].split(":", 1)[0]


class SecretKeyMissing(LookupError):
    """A sealed value names a key no longer (or not yet) in ``OFFERS_PAYMENT_SECRET_KEYS``."""


def placeholders(payload: Any) -> Any:
    """A stored payload with each sealed secret shown as ``[sealed]`` (ciphertext is longer than a
    payload field may be, and nothing but a partner call has a use for it)."""
    if isinstance(payload, dict):
        return {k: SEALED if k in SECRET_FIELDS and is_sealed(v) else placeholders(v) for k, v in payload.items()}
    if isinstance(payload, list):
        return [placeholders(v) for v in payload]
    return payload


def _fernet(secret: bytes) -> Fernet:
    # Any secret of 32 characters or more, as the message keys take: Fernet's own key is derived from it.
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"offers-payment-secrets-v1\n" + secret).digest()))


@dataclass(frozen=True)
class PaymentKeys:
    """The key ring of ``OFFERS_PAYMENT_SECRET_KEYS``: the first key seals, every key opens."""

    keys: tuple[tuple[str, Fernet], ...]

    @classmethod
    def parse(cls, text: str, setting: str) -> PaymentKeys:
        """``ID=SECRET[,…]`` as the message keys take it (errors name the setting, never a value)."""
        ring = authority.parse_keys(text, setting, "fleet")
        return cls(tuple((key_id, _fernet(secret)) for key_id, secret in ring.keys))

    @property
    def current(self) -> str:
        return self.keys[0][0]

    def seal(self, value: str) -> str:
        key_id, fernet = self.keys[0]
        return f"{PREFIX}{key_id}:{fernet.encrypt(value.encode()).decode()}"

    def open(self, value: str) -> str:
        """The secret ``value`` holds; a value that is not sealed (an offer stored before sealing) as it is."""
        if not is_sealed(value):
            return value
        key_id, _, token = value[len(PREFIX) :].partition(":")
        for known, fernet in self.keys:
            if known == key_id:
                try:
                    return fernet.decrypt(token.encode()).decode()
                except InvalidToken:
                    raise SecretKeyMissing(f"a payment secret does not open with key {key_id}") from None
        raise SecretKeyMissing(f"a payment secret is sealed with key {key_id}, not in OFFERS_PAYMENT_SECRET_KEYS")

    def seal_within(self, value: Any) -> Any:
        """A copy of a JSON value with each secret field sealed (sealed under an older key: re-sealed),
        and every other string redacted of anything shaped like a secret."""
        if isinstance(value, dict):
            return {k: self._seal_field(v) if k in SECRET_FIELDS else self.seal_within(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.seal_within(v) for v in value]
        if isinstance(value, str):
            return redact_text(value)
        return value

    def _seal_field(self, value: Any) -> Any:
        if not isinstance(value, str) or value in (DROPPED, SEALED, REDACTED):
            return value
        if is_sealed(value):
            return value if key_id_of(value) == self.current else self.seal(self.open(value))
        return self.seal(value)

    def open_within(self, value: Any) -> Any:
        """A copy of a JSON value with each sealed secret opened."""
        if isinstance(value, dict):
            return {k: self.open_within(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.open_within(v) for v in value]
        return self.open(value) if is_sealed(value) else value

    def needs_resealing(self, value: Any) -> bool:
        """Whether a stored JSON value holds a secret in clear or sealed under a key other than the first."""
        if isinstance(value, dict):
            return any(self._stale(v) if k in SECRET_FIELDS else self.needs_resealing(v) for k, v in value.items())
        if isinstance(value, list):
            return any(self.needs_resealing(v) for v in value)
        return False

    def _stale(self, value: Any) -> bool:
        if not isinstance(value, str) or value in (DROPPED, SEALED, REDACTED):
            return False
        return not is_sealed(value) or key_id_of(value) != self.current
