"""Local partner sandbox: HTTP servers that speak Stripe's, Sift's, Plaid's and Segment's wire formats, plus moto.

The production adapters run unchanged against it. Faults (status, rate, latency) are held in the
sandbox process and set over HTTP, so every process that talks to the sandbox sees the same faults.
"""

from offers_workers.local.sandbox.aws import ensure_aws_resources
from offers_workers.local.sandbox.faults import PARTNERS, advance_clock, clear_faults, get_faults, set_fault
from offers_workers.local.sandbox.runner import Sandbox, serve
from offers_workers.local.sandbox.segment_server import forget_batches, funnel_counts, recorded_batches

__all__ = [
    "PARTNERS",
    "Sandbox",
    "advance_clock",
    "clear_faults",
    "ensure_aws_resources",
    "forget_batches",
    "funnel_counts",
    "get_faults",
    "recorded_batches",
    "serve",
    "set_fault",
]
