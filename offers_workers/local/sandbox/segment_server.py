"""Segment sandbox: ``POST /v1/batch`` as ``segment-analytics-python`` sends it, every batch recorded.

Basic auth carries the write key as the user (any non-empty key is taken; none is 401, as Segment
answers). The write key is never kept: the sandbox records each batch's messages only. Read them back
with ``GET /__sandbox/segment/batches`` (``recorded_batches``; ``funnel_counts`` counts their events
by name, a repeated ``messageId`` once, as Segment deduplicates), and forget them with ``DELETE``
there. ``sandbox faults set segment --status 503`` makes Segment "down" for outage drills.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections import Counter
from typing import Any

from offers_workers.local.sandbox.faults import _call, _url_for
from offers_workers.local.sandbox.http import PartnerHandler

BATCHES_PATH = "/__sandbox/segment/batches"


class SegmentState:
    """The batches received, oldest first; shared by the handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: list[list[dict[str, Any]]] = []

    def add(self, batch: list[dict[str, Any]]) -> None:
        with self._lock:
            self._batches.append(batch)

    def batches(self) -> list[list[dict[str, Any]]]:
        with self._lock:
            return list(self._batches)

    def clear(self) -> None:
        with self._lock:
            self._batches.clear()


class SegmentHandler(PartnerHandler):
    server_version = "segment-sandbox"

    @property
    def state(self) -> SegmentState:
        state: SegmentState = self.server.state
        return state

    def fault_response(self, status: int) -> tuple[Any, dict[str, str]]:
        return {"code": "sandbox_fault", "message": f"injected {status} (sandbox fault)"}, {}

    def sandbox_control(self, path: str, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if path != BATCHES_PATH:
            return 404, {"error": f"no sandbox control at {path}"}
        if method == "DELETE":
            self.state.clear()
        elif method != "GET":
            return 405, {"error": "use GET or DELETE"}
        return 200, {"batches": self.state.batches()}

    def _write_key(self) -> str | None:
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, _ = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            return None
        return user or None

    def handle_partner(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        if method != "POST" or path != "/v1/batch":
            self.send_json(404, {"code": "not_found", "message": f"no route {method} {path}"})
            return
        if self._write_key() is None:
            self.send_json(401, {"code": "unauthorized", "message": "missing or malformed write key"})
            return
        try:
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            payload = json.loads(body)
            batch = payload["batch"]
            if not isinstance(batch, list) or not all(isinstance(m, dict) for m in batch):
                raise ValueError("batch must be a list of messages")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            self.send_json(400, {"code": "invalid_request", "message": str(exc)[:200]})
            return
        self.state.add(batch)
        self.send_json(200, {"success": True})


# --- client helpers (any process) -------------------------------------------------------------


def recorded_batches(target: Any) -> list[list[dict[str, Any]]]:
    """The batches the Segment sandbox of ``target`` (a Sandbox, Settings or URL map) received."""
    batches: list[list[dict[str, Any]]] = _call(_url_for(target, "segment"), "GET", path=BATCHES_PATH)["batches"]
    return batches


def forget_batches(target: Any) -> None:
    _call(_url_for(target, "segment"), "DELETE", path=BATCHES_PATH)


def funnel_counts(target: Any) -> Counter[str]:
    """Tracked events by name over every recorded batch, each ``messageId`` counted once."""
    seen: dict[str, str] = {}
    for batch in recorded_batches(target):
        for message in batch:
            if message.get("type") == "track":
                seen[message["messageId"]] = message["event"]
    return Counter(seen.values())
