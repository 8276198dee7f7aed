"""The audit export's summary for on-call (the runbook's "review the export job summary email"):
one JSON log line after every export, and an email to ``OFFERS_SMTP_TO`` when SMTP is configured.

Sending is best effort: an SMTP outage is logged as a warning and never fails the export it reports.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import textwrap
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from config import links
from config.settings import Settings
from offers_workers.saga.trail import ExportSummary

log = logging.getLogger(__name__)

NOT_WRITTEN = "—"


def report(summary: ExportSummary, settings: Settings) -> str | None:
    """Log the summary and email it when SMTP is configured; returns why it could not be sent (None:
    sent, or no SMTP host set)."""
    log.log(
        logging.INFO if summary.succeeded else logging.WARNING,
        "audit export summary",
        extra=log_fields(summary, settings),
    )
    if not settings.smtp_host:
        return None
    try:
        refused = send(message(summary, settings), settings)
    except Exception as exc:  # whatever it is, an unsent summary must not change the export's outcome
        # One line: a server's multi-line answer would break the CLI's one-line note.
        problem = " ".join(f"{type(exc).__name__}: {exc}".split()) if str(exc) else type(exc).__name__
    else:
        if not refused:
            return None
        problem = "refused for " + ", ".join(f"{address} ({code})" for address, (code, _) in refused.items())
    log.warning(
        f"could not send the export summary: {problem}",
        extra={"export_id": summary.export_id, "smtp_host": settings.smtp_host, "smtp_port": settings.smtp_port},
    )
    return problem


def log_fields(summary: ExportSummary, settings: Settings) -> dict[str, object]:
    """The summary as the fields of its log line."""
    return {
        "export_id": summary.export_id,
        "status": summary.status,
        "window_from": summary.window_from.isoformat() if summary.window_from else None,
        "window_until": summary.window_until.isoformat(),
        "rows": summary.rows,
        "first_row_id": summary.first_row_id,
        "last_row_id": summary.last_row_id,
        "bytes": summary.size_bytes,
        "sha256": summary.sha256,
        "storage_class": summary.storage_class,
        "object_key": summary.object_key,
        "attempts": summary.attempts,
        "duration_s": round(summary.duration_s, 3),
        "error": summary.error,
        "next_run": None if summary.succeeded else next_run(summary, settings),
    }


def subject(summary: ExportSummary) -> str:
    if summary.succeeded:
        return f"[offers-workers] audit export {summary.export_id} succeeded: {summary.rows:,} rows"
    return f"[offers-workers] audit export {summary.export_id} FAILED: {summary.rows:,} rows not archived"


def text(summary: ExportSummary, settings: Settings) -> str:
    """The email's plain-text body: a headline, a small aligned table, and what comes next."""
    rows = [
        ("export id", str(summary.export_id)),
        ("status", summary.status),
        ("window from", moment(summary.window_from)),
        ("window until", moment(summary.window_until) + " (rows written before it)"),
        ("rows", f"{summary.rows:,} (ids {summary.first_row_id}–{summary.last_row_id})"),
        ("bytes", size(summary.size_bytes)),
        ("sha256", summary.sha256 or NOT_WRITTEN),
        ("storage class", summary.storage_class),
        ("object", f"s3://{settings.audit_bucket}/{summary.object_key}" + ("" if summary.sha256 else " (not written)")),
        ("duration", f"{summary.duration_s:,.1f} s"),
        ("attempt", str(summary.attempts)),
    ]
    if summary.error:
        rows.append(("error", summary.error))
    width = max(len(label) for label, _ in rows)
    table = "\n".join(f"  {label.ljust(width)}  {value}" for label, value in rows)
    if summary.succeeded:
        headline = f"Audit export {summary.export_id} succeeded: {summary.rows:,} audit rows archived."
        after = (
            "To check it end to end (restore, checksum, chain, counts):\n"
            f"  offers-workers audit verify {summary.export_id}"
        )
    else:
        headline = f"Audit export {summary.export_id} FAILED: {summary.rows:,} audit rows were not archived."
        until = summary.window_until.astimezone(UTC).isoformat().replace("+00:00", "Z")
        after = (
            textwrap.fill(next_run(summary, settings), width=100)
            + f"\nTo retry this window now (the same export):\n  offers-workers audit export --until {until}"
        )
    return f"{headline}\n\n{table}\n\n{after}\n"


def next_run(summary: ExportSummary, settings: Settings) -> str:
    """What happens to a failed export's rows: they stay in Postgres, unexported, and the next run takes them."""
    return (
        "The rows stay in Postgres, unexported, and this export stays on record as failed. The next scheduled"
        f" export (OFFERS_AUDIT_EXPORT_CRON {settings.audit_export_cron}, UTC) takes them again, together with"
        " every later row before its own cut-off (midnight UTC of the day it runs)."
    )


def message(summary: ExportSummary, settings: Settings) -> EmailMessage:
    sender = settings.smtp_from or ""
    msg = EmailMessage()
    msg["Subject"] = subject(summary)
    msg["From"] = sender
    msg["To"] = ", ".join(settings.smtp_recipients)
    msg["Date"] = formatdate(usegmt=True)
    # The sender's domain, not the host's name: no lookup, and one domain for every worker host.
    msg["Message-ID"] = make_msgid("audit-export", domain=parseaddr(sender)[1].rpartition("@")[2] or None)
    # RFC 3834: vacation responders and ticket systems do not answer it.
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text(summary, settings))
    return msg


def send(msg: EmailMessage, settings: Settings) -> dict[str, tuple[int, bytes]]:
    """Hand ``msg`` to the SMTP server; returns the recipients it refused (all refused raises)."""
    with smtplib.SMTP(settings.smtp_host or "", settings.smtp_port, timeout=settings.smtp_timeout_seconds) as smtp:
        smtp.ehlo()
        encrypted = smtp.has_extn("starttls")
        if not encrypted and not plain_smtp_allowed(settings):
            # A man in the middle strips STARTTLS from the greeting to read the mail: refuse, not downgrade.
            raise smtplib.SMTPNotSupportedError(
                "the server offers no STARTTLS; the summary is not sent in the clear"
                " (name 'smtp' in OFFERS_ALLOW_INSECURE_LINKS to allow it)"
            )
        if encrypted:
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if settings.smtp_username:
            if not encrypted:
                raise smtplib.SMTPNotSupportedError(
                    "the server offers no STARTTLS; the password is not sent in the clear"
                )
            smtp.login(settings.smtp_username, settings.secret("smtp_password"))
        return smtp.send_message(msg)


def plain_smtp_allowed(settings: Settings) -> bool:
    """Mail may go without STARTTLS in the sandbox, to this host, or where the deployment says so."""
    return settings.sandbox or links.is_local_host(settings.smtp_host) or "smtp" in links.allowed_insecure(settings)


def moment(at: datetime | None) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if at else NOT_WRITTEN


def size(n: int | None) -> str:
    if n is None:
        return NOT_WRITTEN
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n:,} ({n / scale:.1f} {unit})"
    return f"{n:,}"
