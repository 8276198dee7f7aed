"""Sift sandbox: ``POST /v205/events`` as ``sift.Client.track`` sends it, with deterministic scores.

Users whose ``$user_id`` starts with ``risky_`` score 0.95; everyone else scores in [0.02, 0.45],
derived from a hash of the user id. A missing or malformed ``$api_key`` is body status 51 (HTTP 200).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from offers_workers.local.sandbox.http import PartnerHandler

ABUSE_TYPES = ("payment_abuse", "account_abuse", "content_abuse", "promotion_abuse", "account_takeover")
# Real keys are opaque tokens; the sandbox accepts any 8+ word characters and rejects the rest.
_KEY_SHAPE = re.compile(r"[A-Za-z0-9_\-]{8,128}")


def score_for(user_id: str | None) -> float:
    if user_id and user_id.startswith("risky_"):
        return 0.95
    digest = int.from_bytes(hashlib.sha256((user_id or "").encode()).digest()[:4], "big")
    return round(0.02 + (digest % 4301) / 10_000, 4)


class SiftHandler(PartnerHandler):
    server_version = "sift-sandbox"

    def fault_response(self, status: int) -> tuple[Any, dict[str, str]]:
        if status == 429:
            code, message = 60, "Rate limited; too many events have been received in a short period of time"
        elif status >= 500:
            code, message = -1, "Unexpected Server Error (sandbox fault)"
        elif status in (401, 403):
            code, message = 51, "Invalid API key"
        else:
            code, message = 57, "Invalid HTTP body (sandbox fault)"
        return {"status": code, "error_message": message, "time": int(time.time()), "request": None}, {}

    def _answer(self, status: int, message: str, request: str | None = None, **extra: Any) -> None:
        self.send_json(
            200, {"status": status, "error_message": message, "time": int(time.time()), "request": request, **extra}
        )

    def handle_partner(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        if method != "POST" or not re.fullmatch(r"/v20[45]/events", path):
            self.send_json(404, {"status": 104, "error_message": f"Invalid API version or endpoint: {method} {path}"})
            return
        try:
            event = json.loads(body)
        except ValueError:
            self._answer(56, "Invalid JSON in request body")
            return
        if not isinstance(event, dict):
            self._answer(57, "Invalid HTTP body")
            return
        api_key = event.pop("$api_key", None)
        echo = json.dumps(event)  # the echoed request never carries the key
        if not isinstance(api_key, str) or not _KEY_SHAPE.fullmatch(api_key):
            self._answer(51, "Invalid API key", echo)
            return
        if not isinstance(event.get("$type"), str) or not event["$type"]:
            self._answer(55, "Missing required field: $type", echo)
            return
        user_id = event.get("$user_id")
        if event["$type"] in ("$create_order", "$transaction") and not (user_id or event.get("$session_id")):
            self._answer(55, "Missing required field: $user_id or $session_id", echo)
            return
        bad = next((k for k in event if k.startswith("$") and not re.fullmatch(r"\$[a-z_]+", k)), None)
        if bad:
            self._answer(105, f"Not a valid reserved field: {bad}", echo)
            return
        extra: dict[str, Any] = {}
        if query.get("return_score", [""])[0] == "true":
            wanted = [a for a in query.get("abuse_types", [""])[0].split(",") if a] or list(ABUSE_TYPES)
            unknown = [a for a in wanted if a not in ABUSE_TYPES]
            if unknown:
                self._answer(53, f"Invalid abuse type: {unknown[0]}", echo)
                return
            subject = user_id or event.get("$session_id")
            scores = {a: {"score": score_for(subject), "reasons": []} for a in wanted}
            extra["score_response"] = {
                "status": 0,
                "error_message": "OK",
                "user_id": user_id,
                "scores": scores,
                "latest_labels": {},
                "workflow_statuses": [],
            }
        self._answer(0, "OK", echo, **extra)
