"""``offers-workers demo``: push sample offers through every path and check each reached the outcome
it was built for, against Postgres and the Stripe sandbox.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from offers_workers.domain import states
from offers_workers.local.samples import Sample, make_samples
from offers_workers.ops import reports
from offers_workers.runtime import Runtime


@dataclass
class DemoResult:
    samples: list[Sample]
    problems: list[str]
    elapsed_s: float
    run_id: str

    @property
    def ok(self) -> bool:
        return not self.problems


def send_samples(send: Callable[[dict[str, Any]], None], samples: list[Sample]) -> int:
    """Send every message; the second message of a duplicate pair goes after all first ones."""
    sent = 0
    for sample in samples:
        send(sample.messages[0])
        sent += 1
    for sample in samples:
        for message in sample.messages[1:]:
            send(message)
            sent += 1
    return sent


def settled(rt: Runtime, samples: list[Sample]) -> tuple[int, dict[str, dict[str, Any]], dict[str, list[str]]]:
    """How many samples have finished, with their offer rows and intake rejections."""
    ids = [s.offer_id for s in samples]
    with rt.db.transaction() as conn:
        offers = {
            r["offer_id"]: r
            for r in conn.execute(
                "SELECT offer_id, state, reason, hold_status, payment_intent_id FROM offers WHERE offer_id = ANY(%s)",
                (ids,),
            )
        }
        rejections: dict[str, list[str]] = defaultdict(list)
        for r in conn.execute("SELECT offer_id, reason FROM intake_rejections WHERE offer_id = ANY(%s)", (ids,)):
            rejections[r["offer_id"]].append(r["reason"])
    done = 0
    for s in samples:
        offer = offers.get(s.offer_id)
        offer_done = s.scenario.state is None or (
            offer is not None
            and offer["state"] not in states.OPEN
            # An offer rejected after its hold has settled once the hold is released.
            and not (offer["state"] in states.TERMINAL and offer["hold_status"] == "held")
        )
        rejection_done = s.scenario.intake_rejection is None or s.scenario.intake_rejection in rejections[s.offer_id]
        done += offer_done and rejection_done
    return done, offers, rejections


def check(
    samples: list[Sample],
    offers: dict[str, dict[str, Any]],
    rejections: dict[str, list[str]],
    holds: dict[str, list[str]],
) -> list[str]:
    """Every way a sample missed the outcome it was built for (empty: all as designed)."""
    problems = []
    for s in samples:
        sc, offer = s.scenario, offers.get(s.offer_id)
        where = f"{s.offer_id} ({sc.name})"
        if sc.state is None:
            if offer is not None:
                problems.append(f"{where}: expected no offer, found one in {offer['state']}")
        elif offer is None:
            problems.append(f"{where}: no offer row")
        elif (offer["state"], offer["reason"]) != (sc.state, sc.reason):
            problems.append(f"{where}: ended {offer['state']}/{offer['reason']}, expected {sc.state}/{sc.reason}")
        if sc.intake_rejection and sc.intake_rejection not in rejections.get(s.offer_id, []):
            problems.append(f"{where}: no {sc.intake_rejection} intake rejection")
        if sc.intake_rejection is None and rejections.get(s.offer_id):
            problems.append(f"{where}: unexpected intake rejection {rejections[s.offer_id]}")
        # Holds as the Stripe sandbox sees them: only held or released ones count as holds.
        pis = [status for status in holds.get(s.offer_id, []) if status in ("requires_capture", "canceled")]
        expected = [sc.hold] if sc.hold else []
        if pis != expected:
            problems.append(f"{where}: Stripe shows holds {pis}, expected {expected}")
    return problems


def stripe_holds(rt: Runtime) -> dict[str, list[str]]:
    holds: dict[str, list[str]] = defaultdict(list)
    for pi in rt.stripe.list_holds():
        if pi.offer_id:
            holds[pi.offer_id].append(pi.status)
    return holds


def run(
    rt: Runtime, send: Callable[[dict[str, Any]], None], count: int, *, console: Console, timeout: float = 300
) -> DemoResult:
    run_id = "demo-" + secrets.token_hex(3)
    samples = make_samples(count, run_id)
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]offers"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("settled", total=len(samples))
        send_samples(send, samples)
        deadline = started + timeout
        while True:
            done, offers, rejections = settled(rt, samples)
            progress.update(bar, completed=done)
            if done == len(samples) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    elapsed = time.monotonic() - started
    problems = check(samples, offers, rejections, stripe_holds(rt))
    if done < len(samples):
        problems.insert(0, f"only {done} of {len(samples)} samples settled within {timeout:.0f}s")
    return DemoResult(samples, problems, elapsed, run_id)


def print_report(rt: Runtime, result: DemoResult, console: Console) -> None:
    scope = reports.Scope(offer_id_prefix=result.run_id + "-")
    with rt.db.transaction() as conn:
        outcomes = reports.outcome_counts(conn, scope)
        rate = reports.success_rate(conn, scope)
        stages = reports.stage_latencies(conn, scope)
        lag = reports.auction_lag(conn, scope)
        intake = conn.execute(
            "SELECT reason, count(*) AS n FROM intake_rejections WHERE offer_id LIKE %s GROUP BY reason ORDER BY reason",
            (result.run_id + "-%",),
        ).fetchall()

    table = Table(title=f"Outcomes of {len(result.samples)} sample offers ({result.run_id})")
    table.add_column("outcome")
    table.add_column("reason")
    table.add_column("offers", justify="right")
    for row in outcomes:
        table.add_row(row["state"], row["reason"] or "", str(row["offers"]))
    for row in intake:
        table.add_row("intake rejection", row["reason"], str(row["n"]))
    console.print(table)

    timing = Table(title="Latency (ms, from the previous stage's commit)")
    for col in ("stage", "offers", "p50", "p95"):
        timing.add_column(col, justify="left" if col == "stage" else "right")
    for stage, figures in stages.items():
        timing.add_row(stage, str(figures["count"]), reports.ms_text(figures["p50"]), reports.ms_text(figures["p95"]))
    timing.add_row(
        "[bold]intake → auction", str(lag["count"]), reports.ms_text(lag["p50"]), reports.ms_text(lag["p95"])
    )
    console.print(timing)

    scenarios = Counter(s.scenario.name for s in result.samples)
    console.print(
        f"success rate {rate:.1%}" if rate is not None else "success rate -",
        f"· {len(scenarios)} scenarios · {sum(len(s.messages) for s in result.samples)} messages"
        f" · {result.elapsed_s:.1f}s",
    )
    if result.ok:
        console.print("[green]every sample offer reached the outcome it was built for[/green]")
    else:
        console.print(f"[red]{len(result.problems)} sample(s) missed their outcome:[/red]")
        for problem in result.problems[:30]:
            console.print(f"  - {problem}")
