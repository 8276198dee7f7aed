"""Every link the fleet opens to another server, and how each is secured (docs/production.md, "Links and TLS").

A link is *verified* when it is TLS and the client checks the server's certificate chain and host
name; a link to this host only (loopback or a Unix socket) never leaves it and needs neither. Outside
the sandbox any other link is refused at start-up, unless the deployment names it in
``OFFERS_ALLOW_INSECURE_LINKS``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from psycopg.conninfo import conninfo_to_dict

from offers_workers.domain.partners import PARTNERS

if TYPE_CHECKING:
    from config.settings import Settings

#: The names OFFERS_ALLOW_INSECURE_LINKS takes: the stores, SMTP, and each partner.
LINK_NAMES = ("database", "database_owner", "broker", "redis", "smtp", *(p.name for p in PARTNERS))

#: URL query keys that put TLS options into an AMQP URL: kombu hands them to the socket wrapper,
#: which crashes on some and ignores the host name on others; the OFFERS_BROKER_TLS_* settings do it.
AMQP_TLS_QUERY = ("ssl", "ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "cert_reqs", "ca_certs")


@dataclass(frozen=True)
class Link:
    """One link as `health` shows it and start-up judges it."""

    name: str
    setting: str
    #: host:port (several for a failover list), never a user or password.
    target: str
    #: "verified TLS", "TLS, not verified", "plain" or "none" (not configured).
    security: str
    #: Every host is this one (loopback or a socket): the link never leaves the machine.
    local: bool
    #: What the verification rests on, or why it is missing.
    detail: str = ""

    @property
    def verified(self) -> bool:
        return self.security == "verified TLS"

    @property
    def acceptable(self) -> bool:
        return self.security == "none" or self.verified or self.local


def is_local_host(host: str | None) -> bool:
    """Loopback, ``localhost`` or a Unix socket (a path, or no host at all for libpq)."""
    if not host or host.startswith("/") or host.startswith("@"):
        return True
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _target(hosts: list[tuple[str | None, int | None]]) -> str:
    return ", ".join(f"{h or 'socket'}{f':{p}' if p else ''}" for h, p in hosts)


def database_link(name: str, setting: str, url: str | None) -> Link:
    if not url:
        return Link(name, setting, "-", "none", True)
    params = conninfo_to_dict(url)
    hosts = str(params.get("host") or os.environ.get("PGHOST", "")).split(",")
    ports = str(params.get("port") or "").split(",")
    pairs = [(h or None, int(ports[i]) if i < len(ports) and ports[i] else None) for i, h in enumerate(hosts)]
    local = all(is_local_host(h) for h, _ in pairs)
    mode = str(params.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer")
    root = str(params.get("sslrootcert") or os.environ.get("PGSSLROOTCERT") or "~/.postgresql/root.crt")
    if mode == "verify-full":
        return Link(name, setting, _target(pairs), "verified TLS", local, f"sslmode=verify-full, CA {root}")
    if mode in ("verify-ca", "require"):
        why = "host name not checked" if mode == "verify-ca" else "certificate not checked"
        return Link(name, setting, _target(pairs), "TLS, not verified", local, f"sslmode={mode}: {why}")
    return Link(name, setting, _target(pairs), "plain", local, f"sslmode={mode}: may go in clear")


def redis_link(name: str, setting: str, url: str | None) -> Link:
    if not url:
        return Link(name, setting, "-", "none", True)
    if url.startswith("sentinel://"):
        # Every sentinel, and the master they name, is spoken to in plain Redis (no TLS with Sentinel).
        found = [urlsplit(u) for u in broker_urls(url)]
        hosts = [(p.hostname, p.port) for p in found]
        return Link(name, setting, _target(hosts), "plain", all(is_local_host(h) for h, _ in hosts), "sentinel://")
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    target = _target([(parts.hostname, parts.port)])
    local = is_local_host(parts.hostname)
    if parts.scheme != "rediss":
        return Link(name, setting, target, "plain", local, "redis://")
    reqs = query.get("ssl_cert_reqs", "")
    if reqs != "required":
        return Link(name, setting, target, "TLS, not verified", local, f"ssl_cert_reqs={reqs or 'unset'}")
    if query.get("ssl_check_hostname", "true").lower() in ("false", "0", "no", "off"):
        return Link(name, setting, target, "TLS, not verified", local, "ssl_check_hostname off")
    return Link(name, setting, target, "verified TLS", local, f"CA {query.get('ssl_ca_certs', 'system')}")


def broker_urls(url: str) -> list[str]:
    """Each URL of a failover list (``amqp://a;amqp://b``)."""
    return [u.strip() for u in url.split(";") if u.strip()]


def amqp_link(setting: str, url: str, ca_file: object | None) -> Link:
    parsed = [urlsplit(u) for u in broker_urls(url)]
    target = _target([(p.hostname, p.port) for p in parsed])
    local = all(is_local_host(p.hostname) for p in parsed)
    if any(p.scheme != "amqps" for p in parsed):
        return Link("broker", setting, target, "plain", local, "amqp://")
    # broker_use_ssl (config.celery) always asks for the chain and the host name of the node it reaches.
    return Link("broker", setting, target, "verified TLS", local, f"CA {ca_file or 'system'}")


def http_link(name: str, setting: str, url: str | None, default: str) -> Link:
    parts = urlsplit(url or default)
    target = _target([(parts.hostname, parts.port)])
    local = is_local_host(parts.hostname)
    if parts.scheme == "https":
        return Link(name, setting, target, "verified TLS", local, "https, CA system")
    return Link(name, setting, target, "plain", local, f"{parts.scheme}://")


def smtp_link(settings: Settings) -> Link:
    if not settings.smtp_host:
        return Link("smtp", "OFFERS_SMTP_HOST", "-", "none", True)
    target = _target([(settings.smtp_host, settings.smtp_port)])
    # export_summary.send insists on STARTTLS with a verified certificate unless the link may be plain.
    return Link("smtp", "OFFERS_SMTP_HOST", target, "verified TLS", is_local_host(settings.smtp_host), "STARTTLS")


def links(settings: Settings) -> list[Link]:
    """Every link the settings configure, stores first."""
    found = [
        database_link("database", "OFFERS_DATABASE_URL", settings.database_url),
        database_link("database_owner", "OFFERS_DATABASE_OWNER_URL", settings.database_owner_url),
    ]
    if settings.broker_is_rabbitmq and settings.broker_url:
        found.append(amqp_link("OFFERS_BROKER_URL", settings.broker_url, settings.broker_tls_ca_file))
    else:
        found.append(redis_link("broker", "OFFERS_BROKER_URL", settings.broker_url))
    if settings.redis_url:
        found.append(redis_link("redis", "OFFERS_REDIS_URL", settings.redis_url))
    found.append(smtp_link(settings))
    for p in PARTNERS:
        setting = f"OFFERS_{p.url_setting.upper()}"
        default = "https://aws.amazon.com" if p.name == "aws" else ""
        found.append(http_link(p.name, setting, getattr(settings, p.url_setting), default))
    return found


def allowed_insecure(settings: Settings) -> set[str]:
    return {n.strip() for n in settings.allow_insecure_links.split(",") if n.strip()}


def refusal(settings: Settings) -> str | None:
    """The one line that stops start-up: the first link outside the sandbox that is not verified,
    not local, and not named in OFFERS_ALLOW_INSECURE_LINKS; None when every link is fine."""
    if settings.sandbox:
        return None
    allowed = allowed_insecure(settings)
    for link in links(settings):
        if not link.acceptable and link.name not in allowed:
            return (
                f"{link.setting}: the link to {link.target} is {link.security} ({link.detail}); use verified TLS"
                f" or name '{link.name}' in OFFERS_ALLOW_INSECURE_LINKS"
            )
    return None
