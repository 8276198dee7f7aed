"""What the audit trail writes to S3 besides the rows: each export's manifest and each anchor.

Whoever holds the fleet's AWS keys can put any bytes under these keys, so reading one back is
parsing untrusted input: a field missing or of another type is a ``NotWritten`` that names it,
never a KeyError in the middle of ``audit verify``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import pydantic

ANCHOR_FORMAT: Final = "offers-audit-anchor/1"


#: A SHA-256 as the fleet writes it: the chain's row hashes and an export's checksum.
Sha256 = Annotated[str, pydantic.StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class NotWritten(ValueError):
    """An object in the archive is not one the fleet wrote; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class ExportManifest:
    """Beside each nightly export: what it holds, so a restore can be checked without Postgres."""

    export_id: int
    object_key: str
    row_count: int
    sha256: Sha256
    first_row_id: int
    last_row_id: int
    first_prev_hash: Sha256 | None
    last_hash: Sha256 | None
    until: datetime
    storage_class: str

    def to_bytes(self) -> bytes:
        # The same bytes for the same export: a retry after a crash finds the manifest it wrote.
        return json.dumps({**asdict(self), "until": self.until.isoformat()}, indent=2).encode()

    @classmethod
    def parse(cls, body: bytes) -> ExportManifest:
        return _parse(_MANIFEST, body)


@dataclass(frozen=True, slots=True)
class Anchor:
    """A stretch of sealed rows, written once under Object Lock: the hash of each of its rows."""

    format: Literal["offers-audit-anchor/1"]
    first_id: int
    last_id: int
    rows: int
    prev_hash: Sha256
    last_hash: Sha256
    #: Rows of the stretch are dated at or after this (None: no bound, rows from before anchors) ...
    dated_from: datetime | None
    #: ... and at or before this.
    sealed_at: datetime
    cut_at: datetime
    #: (row id, row hash) of every row in the stretch, in id order.
    hashes: tuple[tuple[int, Sha256], ...]

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = asdict(self)
        for name in ("dated_from", "sealed_at", "cut_at"):
            body[name] = body[name].isoformat() if body[name] is not None else None
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, body: bytes) -> Anchor:
        return _parse(_ANCHOR, body)


T = TypeVar("T")

_MANIFEST = pydantic.TypeAdapter(ExportManifest)
_ANCHOR = pydantic.TypeAdapter(Anchor)


def _parse(adapter: pydantic.TypeAdapter[T], body: bytes) -> T:
    try:
        # Strict: "1" is not the row 1, and true is not a count.
        return adapter.validate_json(body, strict=True)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise NotWritten("not JSON") from None
        where = ".".join(str(part) for part in first["loc"])
        raise NotWritten(f"{where}: {first['msg']}" if where else first["msg"]) from None
