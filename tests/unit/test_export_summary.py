"""The audit export's summary email, built from a summary with no network: what on-call reads."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from config.settings import Settings, load_settings
from offers_workers.ops import export_summary
from offers_workers.saga.trail import ExportSummary

DONE = ExportSummary(
    export_id=42,
    status="done",
    window_from=datetime(2026, 11, 27, 0, 0, 3, tzinfo=UTC),
    window_until=datetime(2026, 11, 28, tzinfo=UTC),
    first_row_id=5001,
    last_row_id=6234,
    rows=1234,
    size_bytes=98_765,
    sha256="ab" * 32,
    storage_class="GLACIER",
    object_key="audit/2026/11/28/audit-20261128T000000Z-000000005001-000000006234.jsonl.gz",
    attempts=1,
    duration_s=3.25,
)
FAILED = replace(
    DONE, status="failed", size_bytes=None, sha256=None, attempts=2, error="ClientError: S3 answered 503 SlowDown"
)


@pytest.fixture
def settings(clean_env: pytest.MonkeyPatch) -> Settings:
    return load_settings(
        sandbox=True,
        audit_bucket="offers-audit",
        smtp_host="smtp.example.com",
        smtp_from="offers-workers <offers@example.com>",
        smtp_to="oncall@example.com, Compliance <audit@example.com>",
    )


#: A line of the body's table: two spaces, the label, two or more spaces, the value.
TABLE_LINE = re.compile(r"^  (\S+(?: \S+)*)  +(\S.*)$")


def table(body: str) -> dict[str, str]:
    """The body's table (its second paragraph) as label → value; every value starts in one column."""
    cells = [TABLE_LINE.match(line) for line in body.split("\n\n")[1].splitlines()]
    assert all(cells), body
    assert len({m.start(2) for m in cells if m}) == 1, body
    return {m[1]: m[2] for m in cells if m}


def test_a_succeeded_export_reads_at_a_glance(settings) -> None:
    # When the summary of a finished export is built
    msg = export_summary.message(DONE, settings)

    # Then its subject says which export, that it succeeded and how many rows
    assert msg["Subject"] == "[offers-workers] audit export 42 succeeded: 1,234 rows"
    assert msg["From"] == "offers-workers <offers@example.com>"
    assert msg["To"] == "oncall@example.com, Compliance <audit@example.com>"
    assert msg["Message-ID"].endswith("@example.com>") and msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    assert body.startswith("Audit export 42 succeeded: 1,234 audit rows archived.\n")
    # and one aligned table gives every figure
    assert table(body) == {
        "export id": "42",
        "status": "done",
        "window from": "2026-11-27 00:00:03 UTC",
        "window until": "2026-11-28 00:00:00 UTC (rows written before it)",
        "rows": "1,234 (ids 5001–6234)",
        "bytes": "98,765 (96.5 KiB)",
        "sha256": "ab" * 32,
        "storage class": "GLACIER",
        "object": f"s3://offers-audit/{DONE.object_key}",
        "duration": "3.2 s",
        "attempt": "1",
    }
    assert "offers-workers audit verify 42" in body
    assert "FAILED" not in body and "error" not in table(body)


def test_a_failed_export_says_why_and_what_the_next_run_does(settings) -> None:
    msg = export_summary.message(FAILED, settings)

    assert msg["Subject"] == "[offers-workers] audit export 42 FAILED: 1,234 rows not archived"
    body = msg.get_content()
    assert body.startswith("Audit export 42 FAILED: 1,234 audit rows were not archived.\n")
    figures = table(body)
    assert figures["status"] == "failed" and figures["attempt"] == "2"
    assert figures["error"] == "ClientError: S3 answered 503 SlowDown"
    assert figures["bytes"] == figures["sha256"] == "—"
    # The next scheduled run takes the same rows again; a retry of this export now is one command
    assert "next scheduled export (OFFERS_AUDIT_EXPORT_CRON 0 2 * * *, UTC) takes them again" in " ".join(body.split())
    assert "offers-workers audit export --until 2026-11-28T00:00:00Z" in body


def test_the_log_line_carries_every_figure(settings) -> None:
    fields = export_summary.log_fields(FAILED, settings)
    assert fields["export_id"] == 42 and fields["rows"] == 1234 and fields["status"] == "failed"
    assert fields["window_until"] == "2026-11-28T00:00:00+00:00" and fields["error"]
    assert "takes them again" in fields["next_run"]
    assert export_summary.log_fields(DONE, settings)["next_run"] is None


def test_without_an_smtp_host_the_summary_is_only_logged(settings, caplog: pytest.LogCaptureFixture) -> None:
    # No network here: a send would fail the test (tests/unit/conftest.py)
    caplog.set_level("INFO")
    assert export_summary.report(DONE, settings.model_copy(update={"smtp_host": None})) is None
    [record] = caplog.records
    assert record.getMessage() == "audit export summary" and record.__dict__["sha256"] == DONE.sha256
