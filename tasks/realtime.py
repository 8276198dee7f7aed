"""``offers.validate_draft`` on ``offers.realtime``: answers a draft offer through the result backend."""

from __future__ import annotations

from typing import Any

from offers_workers.runtime import get_runtime
from offers_workers.saga.drafts import validate_draft as check_draft
from tasks.app import app


# A question with an answer, not a saga step: a plain task whose result the caller waits for, no
# retries (a caller waiting for p95 < 400 ms would rather get an error than a late answer).
@app.task(name="offers.validate_draft", ignore_result=False, acks_late=False)
def validate_draft(draft: Any = None, **unexpected: Any) -> dict[str, Any]:
    if unexpected:
        errors = [
            {"field": k, "code": "unexpected_argument", "message": "offers.validate_draft takes only 'draft'"}
            for k in sorted(unexpected)
        ]
        return {"valid": False, "errors": errors}
    return check_draft(get_runtime(), draft)
