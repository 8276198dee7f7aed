"""Property-based fuzzing of intake: whatever a message holds, it ends as an offer or as an intake
rejection with field-level errors, and nothing raises.

CI runs a short pass; `make fuzz` runs the long one (OFFERS_FUZZ_EXAMPLES, default there 10,000).
"""

from __future__ import annotations

import copy
import os
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offers_workers.local.samples import base_offer
from offers_workers.saga import intake
from tests.conftest import new_id
from tests.expected import REQUIRED_PAYLOAD_FIELDS

EXAMPLES = int(os.environ.get("OFFERS_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

HOSTILE_TEXT = st.sampled_from(
    [
        "x'; DROP TABLE offers; --",
        "$(rm -rf /)",
        "`id`",
        "../../etc/passwd",
        "a\x00b",
        "\u202egnp.exe",
        "🦄" * 40,
        "\r\n\t\x1b[31m",
        "%s%s%n",
        "{{7*7}}",
        "",
        " ",
        "Ω" * 65,
    ]
)
HUGE_NUMBERS = st.sampled_from([0, -1, 2**31, 2**63, -(2**63), 10**20, 10**400, 1e308, -0.0, 1.5])
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


BREAKERS = st.one_of(
    HOSTILE_TEXT,
    HUGE_NUMBERS,
    JSON_VALUES,
    st.text(alphabet=string.printable + "\x00\x07\u200b\ufeff", max_size=200),
    st.integers(min_value=200, max_value=20_000).map(lambda n: "x" * n),
    st.integers(min_value=50, max_value=1_500).map(nested),
)
FIELDS = [
    *REQUIRED_PAYLOAD_FIELDS,
    "payment.method",
    "payment.payment_method_id",
    "buyer_context",
    "buyer_context.email",
    "buyer_context.ip",
    "message",
    "submitted_at",
    "synthetic",
    "unexpected_field",
]


@st.composite
def near_valid_offers(draw: st.DrawFn) -> dict[str, Any]:
    """A valid offer with one field (or nested field) replaced by something hostile."""
    offer = copy.deepcopy(base_offer(new_id("fuzz"), 1))
    path = draw(st.sampled_from(FIELDS)).split(".")
    value = draw(BREAKERS)
    target = offer
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return offer


def assert_recorded(runtime, raw: Any) -> None:
    result = intake.submit(runtime, raw)
    assert result.outcome in {"accepted", "duplicate", "invalid_payload", "duplicate_conflict"}
    with runtime.db.transaction() as conn:
        if result.outcome in ("accepted", "duplicate"):
            assert conn.execute("SELECT 1 FROM offers WHERE offer_id = %s", (result.offer_id,)).fetchone()
        else:
            row = conn.execute(
                "SELECT reason, errors FROM intake_rejections WHERE id = %s", (result.rejection_id,)
            ).fetchone()
            assert row["reason"] == result.outcome and row["errors"]
            assert all(set(e) == {"field", "code", "message"} for e in row["errors"])


@pytest.mark.usefixtures("settings")
@FUZZ
@given(raw=JSON_VALUES)
def test_any_json_value_ends_as_a_record(runtime, raw: Any) -> None:
    assert_recorded(runtime, raw)


@pytest.mark.usefixtures("settings")
@FUZZ
@given(raw=near_valid_offers())
def test_a_near_valid_offer_with_one_field_broken_ends_as_a_record(runtime, raw: dict[str, Any]) -> None:
    assert_recorded(runtime, raw)
