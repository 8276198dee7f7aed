"""The manifest and the anchor the audit trail writes to S3: the same bytes as ever for the same
export or stretch (a retry after a crash finds what the first run wrote by its checksum), and
anything else read back is refused, naming what is wrong."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from offers_workers.domain.trail_objects import ANCHOR_FORMAT, Anchor, ExportManifest, NotWritten

AT = datetime(2026, 12, 7, 18, 0, 0, 123456, tzinfo=UTC)

# Bytes as the fleet has written them since anchors and manifests exist: objects under Object Lock
# cannot be rewritten, so a change of layout would make every retry an AnchorConflict.
ANCHOR_BYTES = (
    b'{"format":"offers-audit-anchor/1","first_id":1,"last_id":2,"rows":2,"prev_hash":"' + b"0" * 64 + b'",'
    b'"last_hash":"' + b"b" * 64 + b'","dated_from":null,"sealed_at":"2026-12-07T18:00:00.123456+00:00",'
    b'"cut_at":"2026-12-07T18:00:00.123456+00:00","hashes":[[1,"' + b"a" * 64 + b'"],[2,"' + b"b" * 64 + b'"]]}'
)
MANIFEST_BYTES = json.dumps(
    {
        "export_id": 7,
        "object_key": "audit/x.jsonl.gz",
        "row_count": 2,
        "sha256": "c" * 64,
        "first_row_id": 1,
        "last_row_id": 2,
        "first_prev_hash": "0" * 64,
        "last_hash": "b" * 64,
        "until": AT.isoformat(),
        "storage_class": "GLACIER",
    },
    indent=2,
).encode()


def anchor() -> Anchor:
    return Anchor(
        format=ANCHOR_FORMAT,
        first_id=1,
        last_id=2,
        rows=2,
        prev_hash="0" * 64,
        last_hash="b" * 64,
        dated_from=None,
        sealed_at=AT,
        cut_at=AT,
        hashes=((1, "a" * 64), (2, "b" * 64)),
    )


def manifest() -> ExportManifest:
    return ExportManifest(
        export_id=7,
        object_key="audit/x.jsonl.gz",
        row_count=2,
        sha256="c" * 64,
        first_row_id=1,
        last_row_id=2,
        first_prev_hash="0" * 64,
        last_hash="b" * 64,
        until=AT,
        storage_class="GLACIER",
    )


def test_the_bytes_written_are_the_bytes_always_written_and_read_back_whole() -> None:
    assert anchor().to_bytes() == ANCHOR_BYTES
    assert manifest().to_bytes() == MANIFEST_BYTES
    assert Anchor.parse(ANCHOR_BYTES) == anchor()
    assert ExportManifest.parse(MANIFEST_BYTES) == manifest()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"\x00not json", "not JSON"),
        (b"[1, 2]", "Input should be an object"),
        (b'{"format": "offers-audit-anchor/0"}', "format: Input should be 'offers-audit-anchor/1'"),
        (ANCHOR_BYTES.replace(b'"first_id":1', b'"first_id":"1"'), "first_id: Input should be a valid integer"),
        (ANCHOR_BYTES.replace(b'"rows":2', b'"rows":true'), "rows: Input should be a valid integer"),
        (ANCHOR_BYTES.replace(b'"first_id":1,', b""), "first_id: Field required"),
        (ANCHOR_BYTES.replace(b'[2,"', b'["2","'), "hashes.1.0: Input should be a valid integer"),
        (ANCHOR_BYTES.replace(b"2026-12-07T18:00:00.123456+00:00", b"yesterday", 1), "sealed_at: Input should be"),
        (ANCHOR_BYTES.replace(b'[2,"' + b"b" * 64, b'[2,"zz'), "hashes.1.1: String should match pattern"),
    ],
)
def test_an_anchor_the_fleet_did_not_write_is_refused_naming_what_is_wrong(body: bytes, named: str) -> None:
    with pytest.raises(NotWritten) as refused:
        Anchor.parse(body)
    assert str(refused.value).startswith(named), refused.value


def test_a_manifest_missing_a_field_or_of_another_type_is_refused() -> None:
    with pytest.raises(NotWritten, match=r"^object_key: Field required$"):
        ExportManifest.parse(b'{"export_id": 1}')
    with pytest.raises(NotWritten, match=r"^sha256: Input should be a valid string$"):
        ExportManifest.parse(MANIFEST_BYTES.replace(b'"' + b"c" * 64 + b'"', b"0"))
    # a checksum the verification turns into bytes: not hex would stop it with a ValueError
    with pytest.raises(NotWritten, match=r"^sha256: String should match pattern"):
        ExportManifest.parse(MANIFEST_BYTES.replace(b"c" * 64, b"zz"))
