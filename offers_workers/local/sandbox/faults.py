"""Fault injection: state held by each sandbox server, and client helpers that set it over HTTP.

A fault is ``{"status": int | None, "rate": 0..1, "latency_ms": int}``. Every request to that partner
first waits ``latency_ms``, then with probability ``rate`` is answered with ``status`` in the
partner's own error shape. Control endpoint on each partner's port: ``GET|PUT|DELETE /__sandbox/faults``.
Its snapshot also tells how long the sandbox itself took to answer (``answer_ms``, the injected
latency left out): what a benchmark subtracts to see the caller's own share of a call.
The Stripe sandbox also has a clock (``GET|POST /__sandbox/clock``), moved forward by ``advance_clock``.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from offers_workers.partners.table import PARTNER_NAMES
from offers_workers.partners.table import PARTNERS as PARTNER_TABLE

#: The partners the sandbox serves, by name (the partner table's order).
PARTNERS = PARTNER_NAMES
FAULTS_PATH = "/__sandbox/faults"
CLOCK_PATH = "/__sandbox/clock"


@dataclass(frozen=True)
class Fault:
    status: int | None = None
    rate: float = 1.0
    latency_ms: int = 0

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        if not isinstance(data, dict):
            raise ValueError("fault must be a JSON object")
        unknown = set(data) - {"status", "rate", "latency_ms"}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        status = data.get("status")
        rate = data.get("rate", 1.0)
        latency_ms = data.get("latency_ms", 0)
        if status is not None and (not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599):
            raise ValueError("status must be an HTTP status code or null")
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise ValueError("rate must be a number in [0, 1]")
        if not isinstance(latency_ms, int) or isinstance(latency_ms, bool) or latency_ms < 0:
            raise ValueError("latency_ms must be a non-negative integer")
        return cls(status=status, rate=float(rate), latency_ms=latency_ms)


class FaultState:
    """One partner's current fault plus request counters; shared by all of its handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._requests = 0
        self._injected = 0
        # Seconds each recent answer took, less its injected latency (bounded: a sandbox runs for days).
        self._answers: deque[float] = deque(maxlen=100_000)

    def set(self, fault: Fault | None) -> None:
        """Replace the fault; setting one (not clearing) restarts the counters and the answer times."""
        with self._lock:
            self._fault = fault
            if fault is not None:
                self._requests = self._injected = 0
                self._answers.clear()

    def answered(self, seconds: float) -> None:
        """Record one request's own answer time: from reading it to the answer written, less the latency slept."""
        with self._lock:
            self._answers.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            fault = asdict(self._fault) if self._fault else None
            answers = list(self._answers)
            snap = {"fault": fault, "requests": self._requests, "injected": self._injected}
        snap["answer_ms"] = answer_percentiles(answers)
        return snap

    def apply(self) -> int | None:
        """Count the request, sleep the latency, and return the status to inject (None: serve it)."""
        with self._lock:
            self._requests += 1
            fault = self._fault
        if fault is None:
            return None
        if fault.latency_ms:
            time.sleep(fault.latency_ms / 1000)
        if fault.status is None or random.random() >= fault.rate:
            return None
        with self._lock:
            self._injected += 1
        return fault.status

    def control(self, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Serve the control endpoint; returns (HTTP status, JSON body)."""
        if method == "PUT":
            try:
                self.set(Fault.from_json(json.loads(body or b"{}")))
            except ValueError as exc:  # includes JSONDecodeError
                return 400, {"error": str(exc)}
        elif method == "DELETE":
            self.set(None)
        elif method != "GET":
            return 405, {"error": "use GET, PUT or DELETE"}
        return 200, self.snapshot()


def answer_percentiles(seconds: list[float]) -> dict[str, float | int | None]:
    """``{"count", "mean", "p50", "p95", "p99"}`` in ms (None without answers)."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None}
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {
        "count": len(ms),
        "mean": round(statistics.fmean(ms), 2),
        "p50": round(statistics.median(ms), 2),
        "p95": round(q[94], 2),
        "p99": round(q[98], 2),
    }


# --- client helpers (any process) -------------------------------------------------------------


def partner_urls(target: Any) -> dict[str, str]:
    """Base URLs by partner from a ``Sandbox``, a ``Settings`` or a ``{partner: url}`` mapping."""
    if isinstance(target, Mapping):
        urls = dict(target)
    elif hasattr(target, "urls"):
        urls = dict(target.urls)
    else:
        urls = {p.name: getattr(target, p.url_setting) for p in PARTNER_TABLE}
    return {p: u.rstrip("/") for p, u in urls.items() if u}


# The sandbox is local: never route control calls through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(url: str, method: str, payload: dict[str, Any] | None = None, path: str = FAULTS_PATH) -> dict[str, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=5) as resp:
            snapshot: dict[str, Any] = json.loads(resp.read())
            return snapshot
    except urllib.error.HTTPError as exc:
        what = "the fault" if path == FAULTS_PATH else path
        raise ValueError(f"sandbox refused {what}: {exc.read().decode(errors='replace')}") from None


def _url_for(target: Any, partner: str) -> str:
    if partner not in PARTNERS:
        raise ValueError(f"unknown partner {partner!r}; expected one of {PARTNERS}")
    urls = partner_urls(target)
    if partner not in urls:
        raise ValueError(f"no sandbox URL for {partner}")
    return urls[partner]


def set_fault(
    target: Any, partner: str, status: int | None = None, rate: float = 1.0, latency_ms: int = 0
) -> dict[str, Any]:
    """Inject a fault into every request to ``partner``; returns the sandbox's fault snapshot."""
    return _call(_url_for(target, partner), "PUT", {"status": status, "rate": rate, "latency_ms": latency_ms})


def clear_faults(target: Any, partner: str | None = None) -> None:
    """Clear one partner's fault, or every partner's."""
    for name in [partner] if partner else [p for p in PARTNERS if p in partner_urls(target)]:
        _call(_url_for(target, name), "DELETE")


def get_faults(target: Any, partner: str | None = None) -> dict[str, dict[str, Any]]:
    """``{partner: {"fault": {...} | None, "requests": n, "injected": n}}`` (counts since the last ``set_fault``)."""
    names = [partner] if partner else [p for p in PARTNERS if p in partner_urls(target)]
    return {name: _call(_url_for(target, name), "GET") for name in names}


def advance_clock(target: Any, seconds: float) -> dict[str, Any]:
    """Move the Stripe sandbox's clock ``seconds`` forward ("25 hours later", at once): idempotency keys
    older than Stripe's 24 h are then forgotten. Returns ``{"now", "advanced_s", "idempotency_ttl_s"}``."""
    return _call(_url_for(target, "stripe"), "POST", {"advance_s": seconds}, CLOCK_PATH)
