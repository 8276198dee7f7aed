"""``Sandbox``: the partner servers in threads of the current process; ``serve``: run them until a signal."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from config.settings import SANDBOX_PORTS, env_name
from offers_workers.local.sandbox.aws import ensure_aws_resources, make_aws_server
from offers_workers.local.sandbox.faults import PARTNERS, FaultState
from offers_workers.local.sandbox.http import PartnerHandler, PartnerHTTPServer
from offers_workers.local.sandbox.plaid_server import PlaidHandler
from offers_workers.local.sandbox.segment_server import SegmentHandler, SegmentState
from offers_workers.local.sandbox.sift_server import SiftHandler
from offers_workers.local.sandbox.stripe_server import StripeHandler, StripeState
from offers_workers.partners.interfaces import STRIPE_IDEMPOTENCY_TTL_S
from offers_workers.partners.table import PARTNERS as PARTNER_TABLE

if TYPE_CHECKING:
    from config.settings import Settings

_HANDLERS: dict[str, type[PartnerHandler]] = {
    "stripe": StripeHandler,
    "sift": SiftHandler,
    "plaid": PlaidHandler,
    "segment": SegmentHandler,
}


class Sandbox:
    """Every partner of the table. ``ports``: partner -> port (default ``SANDBOX_PORTS``; 0 or ``ports=0``: free ports).
    ``stripe_idempotency_ttl_s``: how long Stripe's sandbox keeps an idempotency key (Stripe: 24 h)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | int | None = None,
        *,
        stripe_idempotency_ttl_s: float = STRIPE_IDEMPOTENCY_TTL_S,
    ) -> None:
        if isinstance(ports, int):
            ports = dict.fromkeys(PARTNERS, ports)
        unknown = set(ports or {}) - set(PARTNERS)
        if unknown:
            raise ValueError(f"unknown partners {sorted(unknown)}; expected {PARTNERS}")
        self.host = host
        self.ports: dict[str, int] = {**SANDBOX_PORTS, **(ports or {})}
        self.faults = {p: FaultState() for p in PARTNERS}
        self.stripe_idempotency_ttl_s = stripe_idempotency_ttl_s
        self._servers: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, settings: Settings | None = None) -> Sandbox:
        """Start every partner; with ``settings``, also create its AWS resources in this sandbox."""
        if self._servers:
            raise RuntimeError("sandbox already started")
        try:
            for partner in PARTNERS:
                addr = (self.host, self.ports[partner])
                if partner == "aws":
                    server = make_aws_server(*addr, self.faults[partner])
                else:
                    state = {
                        "stripe": lambda: StripeState(idempotency_ttl_s=self.stripe_idempotency_ttl_s),
                        "segment": SegmentState,
                    }.get(partner, lambda: None)()
                    server = PartnerHTTPServer(addr, _HANDLERS[partner], self.faults[partner], state)
                self._servers[partner] = server
                self.ports[partner] = server.server_address[1]
                thread = threading.Thread(
                    target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"sandbox-{partner}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            if settings is not None:
                ensure_aws_resources(settings.model_copy(update={"aws_endpoint_url": self.urls["aws"]}))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.close_connections()  # keep-alive handler threads would otherwise keep serving
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> Sandbox:
        return self if self._servers else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        """``{"stripe": "http://127.0.0.1:PORT", ...}`` (actual ports once started)."""
        return {p: f"http://{self.host}:{self.ports[p]}" for p in PARTNERS}

    def settings_env(self) -> dict[str, str]:
        """``OFFERS_*`` variables pointing a process's Settings at this sandbox."""
        urls = self.urls
        return {"OFFERS_SANDBOX": "1", **{env_name(p.url_setting): urls[p.name] for p in PARTNER_TABLE}}

    def settings(self, **overrides: Any) -> Settings:
        """Sandbox ``Settings`` for this sandbox's URLs and test credentials (``overrides`` win)."""
        from config.settings import SANDBOX_DEFAULTS, Settings

        urls = self.urls
        values: dict[str, Any] = {
            **SANDBOX_DEFAULTS,  # explicit, so real keys in the environment never reach the sandbox
            "sandbox": True,
            **{p.url_setting: urls[p.name] for p in PARTNER_TABLE},
        }
        return Settings(**{**values, **overrides})


def _port(url: str | None, partner: str) -> int:
    port = urlsplit(url).port if url else None
    return port or SANDBOX_PORTS[partner]


def serve(settings: Settings, host: str = "127.0.0.1") -> None:
    """Run the sandbox on the ports in ``settings``' partner URLs until SIGINT/SIGTERM."""
    ports = {p.name: _port(getattr(settings, p.url_setting), p.name) for p in PARTNER_TABLE}
    sandbox = Sandbox(host=host, ports=ports).start(settings)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for partner, url in sandbox.urls.items():
            print(f"{partner:<7} {url}", flush=True)
        while not stop.wait(1):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sandbox.stop()
        print("sandbox stopped", file=sys.stderr, flush=True)
