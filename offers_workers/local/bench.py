"""``offers-workers bench``: the saga against a bare Celery chain on the same broker and fleet.

Phases, in order, on one running stack (the Procfile's processes, the sandbox, the configured
Postgres and broker):

1. **baseline**: ``chains`` bare 5-hop chains of no-op tasks, one hop per stage queue (``tasks/bench.py``);
2. **saga**: ``offers`` accepted offers through the whole saga, no injected latency;
3. **realistic**: the same with partner latency injected in the sandbox (Stripe 250 ms, Sift 150 ms,
   Plaid 200 ms, AWS 40 ms per request);
4. **steady**: offers at half of the realistic maximum for ``steady_seconds``, latency still injected:
   intake→auction lag, and that lag less the latency injected on the offer's own path;
5. **validate_draft** at ``draft_rps`` for ``draft_seconds``: time from send to the answer being readable;
6. **memory**: more offers until ``memory_offers`` have gone through; RSS of every worker process.

Throughput is offers (or chains) divided by the time from the first send to the last completion.
Every bench offer is an accepted card (72 %) or bank (28 %) offer, so each takes all five hops.
"""

from __future__ import annotations

import re
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import psutil
from celery import Celery, chain
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from offers_workers.domain.states import STAGE_BY_NAME
from offers_workers.local.samples import bank, base_offer
from offers_workers.local.sandbox.faults import clear_faults, get_faults, set_fault
from offers_workers.runtime import Runtime
from offers_workers.store import reports

#: Per-request latency the realistic phases inject, by partner (ms).
LATENCY_MS = {"stripe": 250, "sift": 150, "plaid": 200, "aws": 40}
#: Partner requests on the way from intake to the auction, by stage and payment method.
STAGE_REQUESTS: dict[str, dict[str, dict[str, int]]] = {
    "validation": {"card": {}, "bank_account": {}},
    "payment": {"card": {"stripe": 1}, "bank_account": {"plaid": 1}},  # hold; balance
    "risk": {"card": {"sift": 1}, "bank_account": {"sift": 1, "plaid": 1}},  # score; return risk
    "auction": {"card": {"aws": 2}, "bank_account": {"aws": 2}},  # EventBridge + SNS
}
#: The hops of the baseline chain: the queues the saga's five stages run on.
CHAIN_QUEUES = ("offers.validation", "offers.payment", "offers.risk", "offers.auction", "offers.audit")
#: The bench's workers also load its no-op chain tasks, which production workers never register.
WORKER_ARGS = ("--include", "tasks.bench")
#: The process the bench runs in: its driver and the partner sandbox (not the fleet's CPU).
DRIVER = "bench + sandbox"
#: Half the fleet's own CPU per offer measured before the second performance round (42.5 ms on the
#: 2-core reference machine, docs/performance.md): the round's target.
CPU_MS_PER_OFFER_TARGET = 21.2
MEMORY_BATCH = 2500


@dataclass
class BenchOptions:
    offers: int = 5000
    chains: int = 5000
    steady_seconds: float = 30.0
    #: Offers per second in the steady phase; None: half of the rate with partner latency.
    steady_rate: float | None = None
    draft_rps: float = 100.0
    draft_seconds: float = 10.0
    memory_offers: int = 20_000
    #: Enough for every pool to reach its full concurrency (40 threads, the prefork parent's
    #: buffers): after 100, the first saturated phase still raised RSS to its high-water mark.
    warmup_offers: int = 1000
    #: Longest wait for one phase to drain.
    timeout: float = 900.0


@dataclass
class Throughput:
    count: int
    seconds: float
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Percentiles:
    count: int
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> Percentiles:
        if len(values) < 2:
            v = values[0] if values else float("nan")
            return cls(len(values), v, v, v)
        q = statistics.quantiles(values, n=100, method="inclusive")
        return cls(len(values), statistics.median(values), q[94], q[98])


@dataclass
class BenchResult:
    baseline: Throughput | None = None
    saga: Throughput | None = None
    realistic: Throughput | None = None
    steady_rate: float | None = None
    steady_lag: Percentiles | None = None
    steady_overhead: Percentiles | None = None
    #: Each stage's share of that lag, less the latency injected on it
    steady_stages: dict[str, Percentiles] = field(default_factory=dict)
    #: Where each stage's task spent that time, from Celery's task events: stage -> part -> percentiles
    steady_task_times: dict[str, dict[str, Percentiles]] = field(default_factory=dict)
    #: The sandbox's own answer per request in the steady phase, injected latency left out (ms):
    #: partner -> {"count", "mean", "p50", "p95", "p99"}
    steady_sandbox_answer_ms: dict[str, dict[str, Any]] = field(default_factory=dict)
    draft: Percentiles | None = None
    draft_errors: int = 0
    draft_rps: float = 0.0
    #: process label -> (RSS MB at start, after warm-up, at the end)
    memory: dict[str, tuple[float | None, float | None, float | None]] = field(default_factory=dict)
    #: CPU milliseconds by process type, per bare chain and per saga offer (saturation phases)
    cpu_ms_per_chain: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_offer: dict[str, float] = field(default_factory=dict)
    #: RSS (MB) by process after each phase: [{"offers": n, label: mb, ...}, ...]
    rss_curve: list[dict[str, float]] = field(default_factory=list)
    offers_sent: int = 0
    duplicate_holds: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def tp(t: Throughput | None) -> dict[str, Any] | None:
            return (
                None
                if t is None
                else {"count": t.count, "seconds": round(t.seconds, 2), "per_s": round(t.rate, 1), "failed": t.failed}
            )

        def pc(p: Percentiles | None) -> dict[str, Any] | None:
            return (
                None
                if p is None
                else {"count": p.count, "p50_ms": round(p.p50, 1), "p95_ms": round(p.p95, 1), "p99_ms": round(p.p99, 1)}
            )

        return {
            "baseline_chains": tp(self.baseline),
            "saga": tp(self.saga),
            "realistic": tp(self.realistic),
            "saga_to_baseline": ratio(self.saga, self.baseline),
            "realistic_to_saga": ratio(self.realistic, self.saga),
            "steady_rate_per_s": None if self.steady_rate is None else round(self.steady_rate, 1),
            "steady_lag": pc(self.steady_lag),
            "steady_lag_less_injected": pc(self.steady_overhead),
            "steady_stage_less_injected": {k: pc(v) for k, v in self.steady_stages.items()},
            "steady_task_times": {
                stage: {part: pc(p) for part, p in parts.items()} for stage, parts in self.steady_task_times.items()
            },
            "steady_sandbox_answer_ms": self.steady_sandbox_answer_ms,
            "validate_draft": pc(self.draft),
            "validate_draft_errors": self.draft_errors,
            "memory_mb": {k: list(v) for k, v in self.memory.items()},
            "rss_curve": self.rss_curve,
            "cpu_ms_per_chain": self.cpu_ms_per_chain,
            "cpu_ms_per_offer": self.cpu_ms_per_offer,
            "fleet_cpu_ms_per_offer": round(fleet_cpu_ms(self.cpu_ms_per_offer), 2) if self.cpu_ms_per_offer else None,
            "offers_sent": self.offers_sent,
            "duplicate_holds": self.duplicate_holds,
            "problems": self.problems,
        }


def fleet_cpu_ms(by_process: dict[str, float]) -> float:
    """CPU of the fleet's own processes (workers, beat, metrics, Postgres, Redis): the sandbox and
    the bench driver stand in for partners and upstreams, so they are left out."""
    return sum(max(v, 0.0) for k, v in by_process.items() if k != DRIVER)


def ratio(a: Throughput | None, b: Throughput | None) -> float | None:
    return round(a.rate / b.rate, 2) if a and b and b.rate else None


def bench_offers(prefix: str, count: int, start: int = 0) -> list[dict[str, Any]]:
    """Accepted offers: 72 % card, 28 % bank, as in the sample mix's accepted paths."""
    offers = []
    for n in range(start, start + count):
        offer = base_offer(f"{prefix}{n:06d}", n)
        if n % 25 in (3, 7, 11, 15, 19, 23, 24):  # 7 of every 25
            offer["payment"] = bank("access-sandbox-buyer")
        offers.append(offer)
    return offers


#: A stage task's time, from its task events: ``broker`` task-sent → task-received (the hop),
#: ``pool`` task-received → task-started (waiting for a thread or a prefork child), ``run`` task-started →
#: task-succeeded, less the latency injected on the stage (its body: loads, partner calls, the commit).
TASK_PARTS = ("broker", "pool", "run")
OFFER_IN_REPR = re.compile(r"'offer_id': '([^']+)'")


class TaskTimes:
    """Celery's task events while it is open: when each task of a saga stage was sent, received,
    started and ended. The workers send them anyway (``OFFERS_TASK_EVENTS``); the bench only listens."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._stage_by_task = {stage.task: name for name, stage in STAGE_BY_NAME.items() if name in STAGE_REQUESTS}
        # Every task's, stage or not: a hand-on's task-sent comes in its sender's next batch, often after its task-started.
        self._events: dict[str, dict[str, float]] = {}  # task id -> {event type: timestamp}
        self._stage_of: dict[str, str] = {}
        self._offer_of: dict[str, str] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._listen, name="bench-task-events", daemon=True)

    def __enter__(self) -> TaskTimes:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the bench could not listen to task events")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)

    def _listen(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
            # consume() subscribes before its first turn: events from then on are heard.
            for _ in self._receiver.consume(limit=None, timeout=None, wakeup=False, on_iteration=None):
                self._ready.set()

    def _on_event(self, event: dict[str, Any]) -> None:
        kind, task_id = event.get("type", ""), event.get("uuid")
        if not task_id or kind not in ("task-sent", "task-received", "task-started", "task-succeeded"):
            return
        with self._lock:
            if kind in ("task-sent", "task-received") and event.get("name") in self._stage_by_task:
                self._stage_of[task_id] = self._stage_by_task[event["name"]]
                # The fleet's events show the offer id among the arguments, nothing else (tasks/redaction.py).
                if found := OFFER_IN_REPR.search(str(event.get("kwargs", ""))):
                    self._offer_of[task_id] = found.group(1)
            self._events.setdefault(task_id, {})[kind] = float(event["timestamp"])

    def parts(self, method_of: dict[str, str]) -> dict[str, dict[str, Percentiles]]:
        """Per stage, ``TASK_PARTS`` percentiles (ms) over the tasks heard whole of the offers in
        ``method_of`` (offer id -> payment method: what tells the latency injected on the stage)."""
        values: dict[str, dict[str, list[float]]] = {}
        with self._lock:
            for task_id, stage in self._stage_of.items():
                t = self._events.get(task_id, {})
                method = method_of.get(self._offer_of.get(task_id, ""))
                if method is None or not {"task-sent", "task-received", "task-started", "task-succeeded"} <= set(t):
                    continue
                parts = values.setdefault(stage, {part: [] for part in TASK_PARTS})
                parts["broker"].append((t["task-received"] - t["task-sent"]) * 1000)
                parts["pool"].append((t["task-started"] - t["task-received"]) * 1000)
                parts["run"].append((t["task-succeeded"] - t["task-started"]) * 1000 - stage_latency_ms(stage, method))
        return {
            stage: {part: Percentiles.of(found[part]) for part in TASK_PARTS}
            for stage in STAGE_REQUESTS
            if (found := values.get(stage))
        }


def stage_latency_ms(stage: str, method: str) -> float:
    return float(sum(LATENCY_MS[p] * n for p, n in STAGE_REQUESTS[stage][method].items()))


def path_latency_ms(method: str) -> float:
    return sum(stage_latency_ms(stage, method) for stage in STAGE_REQUESTS)


class Bench:
    def __init__(
        self, app: Celery, rt: Runtime, processes: dict[str, Any], console: Console, options: BenchOptions
    ) -> None:
        self.app = app
        self.rt = rt
        self.processes = processes  # Procfile name -> Popen
        self.console = console
        self.options = options
        self.run_id = "bench-" + secrets.token_hex(3)
        self.result = BenchResult()

    # -- helpers -----------------------------------------------------------------------------------

    def progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )

    def send_offers(self, offers: Iterable[dict[str, Any]], pace_per_s: float | None = None) -> None:
        """Send ``offers.submit`` for each, as fast as possible or at ``pace_per_s``."""
        started = time.monotonic()
        for i, offer in enumerate(offers):
            if pace_per_s:
                delay = started + i / pace_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.app.send_task("offers.submit", kwargs={"offer": offer})
            self.result.offers_sent += 1

    def counts(self, prefix: str) -> reports.RunProgress:
        with self.rt.db.transaction() as conn:
            return reports.run_progress(conn, prefix)

    def drain(self, label: str, prefix: str, count: int, first_send: float, send: Callable[[], None]) -> Throughput:
        """Run ``send`` in a thread and wait until ``count`` offers of ``prefix`` have ended."""
        sender = threading.Thread(target=send, name=f"bench-send-{label}", daemon=True)
        deadline = time.monotonic() + self.options.timeout
        with self.progress() as progress:
            bar = progress.add_task(label, total=count)
            sender.start()
            while True:
                c = self.counts(prefix)
                progress.update(bar, completed=c.submitted + c.failed)
                if c.submitted + c.failed >= count or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
        sender.join()
        if c.submitted + c.failed < count:
            self.result.problems.append(
                f"{label}: only {c.submitted + c.failed} of {count} offers ended within {self.options.timeout:.0f}s"
            )
        if c.failed:
            self.result.problems.append(f"{label}: {c.failed} offers did not end submitted")
        seconds = (c.last_done or time.time()) - first_send
        return Throughput(c.submitted, seconds, c.failed)

    def saga_phase(self, label: str, count: int, pace_per_s: float | None = None) -> tuple[Throughput, str]:
        prefix = f"{self.run_id}-{label}-"
        offers = bench_offers(prefix, count)
        started = time.time()
        throughput = self.drain(label, prefix, count, started, lambda: self.send_offers(offers, pace_per_s))
        return throughput, prefix

    # -- phases ------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        self.saga_phase("warm-up", self.options.warmup_offers)

    def baseline(self) -> Throughput:
        count = self.options.chains
        run_key = f"{self.rt.settings.redis_key_prefix}bench:{self.run_id}:chains"
        sig = self.app.signature

        def send() -> None:
            for _ in range(count):
                hops = [sig("offers.bench.hop", immutable=True, queue=q) for q in CHAIN_QUEUES[:-1]]
                # Keyword arguments: the fleet signs those (tasks/authority.py), and refuses what it cannot check.
                sent = {"run_key": run_key, "sent_at": time.time()}
                last = sig("offers.bench.finish", kwargs=sent, immutable=True, queue=CHAIN_QUEUES[-1])
                chain(*hops, last).apply_async()

        sender = threading.Thread(target=send, name="bench-send-chains", daemon=True)
        started = time.time()
        deadline = time.monotonic() + self.options.timeout
        redis = self.rt.required_redis
        with self.progress() as progress:
            bar = progress.add_task("bare chains", total=count)
            sender.start()
            while (done := redis.llen(run_key)) < count and time.monotonic() < deadline:
                progress.update(bar, completed=done)
                time.sleep(0.1)
            progress.update(bar, completed=done)
        sender.join()
        finished = [float(item.split()[1]) for item in redis.lrange(run_key, 0, -1)]
        redis.delete(run_key)
        if len(finished) < count:
            self.result.problems.append(f"baseline: only {len(finished)} of {count} chains finished")
        return Throughput(len(finished), (max(finished) if finished else time.time()) - started)

    def inject_latency(self) -> None:
        """Every partner of the sandbox answers after ``LATENCY_MS`` (its counts and answer times start afresh)."""
        for partner, ms in LATENCY_MS.items():
            set_fault(self.rt.settings, partner, status=None, latency_ms=ms)

    def steady(self, rate: float) -> None:
        seconds = self.options.steady_seconds
        count = max(1, int(rate * seconds))
        self.inject_latency()  # the same faults again: restarts the sandbox's answer times
        with TaskTimes(self.app) as task_times:
            _, prefix = self.saga_phase("steady", count, pace_per_s=rate)
            time.sleep(0.5)  # the workers' last events go out in batches every 0.25 s
        with self.rt.db.transaction() as conn:
            lags = reports.auction_lags(conn, prefix)
        self.result.steady_task_times = task_times.parts({lag.offer_id: lag.payment_method for lag in lags})
        self.result.steady_sandbox_answer_ms = {
            partner: snapshot["answer_ms"] for partner, snapshot in get_faults(self.rt.settings).items()
        }
        self.result.steady_rate = rate
        self.result.steady_lag = Percentiles.of([lag.lag_ms for lag in lags])
        self.result.steady_overhead = Percentiles.of([lag.lag_ms - path_latency_ms(lag.payment_method) for lag in lags])
        self.result.steady_stages = {
            stage: Percentiles.of([lag.stages_ms[stage] - stage_latency_ms(stage, lag.payment_method) for lag in lags])
            for stage in STAGE_REQUESTS
        }

    def drafts(self) -> None:
        """``validate_draft`` at a steady rate; the time until each answer can be read from the backend."""
        rps, seconds = self.options.draft_rps, self.options.draft_seconds
        count = max(1, int(rps * seconds))
        draft = base_offer("draft", 1)
        backend = self.app.backend
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}
        lock = threading.Lock()
        sending_done = threading.Event()

        def send() -> None:
            started = time.monotonic()
            for i in range(count):
                delay = started + i / rps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                task_id = secrets.token_hex(12)
                with lock:
                    sent[task_id] = time.perf_counter()
                self.app.send_task("offers.validate_draft", kwargs={"draft": draft}, task_id=task_id)
            sending_done.set()

        sender = threading.Thread(target=send, name="bench-send-drafts", daemon=True)
        deadline = time.monotonic() + seconds + 30
        errors = 0
        with self.progress() as progress:
            bar = progress.add_task("validate_draft", total=count)
            sender.start()
            while time.monotonic() < deadline:
                with lock:
                    waiting = [t for t in sent if t not in answered]
                if waiting:
                    # One MGET for every open request: reading the backend is what a caller waits on.
                    values = backend.client.mget([backend.get_key_for_task(t) for t in waiting])
                    now = time.perf_counter()
                    for task_id, value in zip(waiting, values, strict=False):
                        if value is not None:
                            answered[task_id] = now
                            meta = backend.decode_result(value)
                            if meta.get("status") != "SUCCESS" or not meta["result"].get("valid"):
                                errors += 1
                    progress.update(bar, completed=len(answered))
                if sending_done.is_set() and len(answered) == count:
                    break
                time.sleep(0.002)
        sender.join()
        if sent:
            backend.client.delete(*[backend.get_key_for_task(t) for t in sent])
        self.result.draft_rps = rps
        self.result.draft = Percentiles.of([(answered[t] - sent[t]) * 1000 for t in answered])
        self.result.draft_errors = errors + (count - len(answered))
        if len(answered) < count:
            self.result.problems.append(f"validate_draft: {count - len(answered)} of {count} never answered")

    def rss(self) -> dict[str, float | None]:
        """RSS in MB of each worker process and its pool children, by label."""
        found: dict[str, float | None] = {}
        for name, proc in self.processes.items():
            if not name.startswith("worker"):
                continue
            try:
                main = psutil.Process(proc.pid)
                found[name] = main.memory_info().rss / 2**20
                for i, child in enumerate(sorted(main.children(), key=lambda c: c.pid)):
                    found[f"{name} child {i + 1}"] = child.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                found[name] = None
        return found

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far, by process type; the stores and this process (driver and sandbox) too."""
        used: dict[str, float] = {}

        def add(label: str, proc: psutil.Process, with_children: bool = False) -> None:
            try:
                t = proc.cpu_times()
                total = t.user + t.system + (t.children_user + t.children_system if with_children else 0)
                for child in proc.children() if with_children else []:
                    c = child.cpu_times()
                    total += c.user + c.system
            except psutil.Error:
                return
            used[label] = used.get(label, 0.0) + total

        for name, proc in self.processes.items():
            with suppress(psutil.Error):
                add(name, psutil.Process(proc.pid), with_children=True)
        add(DRIVER, psutil.Process())
        for proc in psutil.process_iter(["name"]):
            name = proc.info["name"] or ""
            if name.startswith("postgres"):
                add("postgres", proc)
            elif name.startswith("redis-server"):
                add("redis", proc)
        return used

    def note_rss(self) -> None:
        """One point of the RSS curve: offers sent so far, RSS of each process."""
        self.result.rss_curve.append(
            {"offers": self.result.offers_sent, **{k: round(v, 1) for k, v in self.rss().items() if v}}
        )

    def count_duplicate_holds(self) -> int:
        per_offer: dict[str, int] = {}
        for pi in self.rt.stripe.list_holds():
            offer_id = pi.offer_id or ""
            if offer_id.startswith(self.run_id):
                per_offer[offer_id] = per_offer.get(offer_id, 0) + 1
        return sum(1 for n in per_offer.values() if n > 1)

    def memory_phase(self, at_start: dict[str, float | None], after_warmup: dict[str, float | None]) -> None:
        # In batches, reading RSS after each: a curve tells a leak (steady climb) from a high-water mark.
        batch = 0
        while (remaining := self.options.memory_offers - self.result.offers_sent) > 0:
            batch += 1
            self.saga_phase(f"memory-{batch}", min(remaining, MEMORY_BATCH))
            self.note_rss()
        at_end = self.rss()
        for label in sorted(set(at_start) | set(after_warmup) | set(at_end)):
            self.result.memory[label] = (at_start.get(label), after_warmup.get(label), at_end.get(label))

    # -- the whole run -------------------------------------------------------------------------------

    def run(self) -> BenchResult:
        o, r = self.options, self.result
        at_start = self.rss()
        self.warm_up()
        after_warmup = self.rss()
        self.note_rss()
        before = self.cpu_seconds()
        r.baseline = self.baseline()
        between = self.cpu_seconds()
        r.saga, _ = self.saga_phase("saga", o.offers)
        after = self.cpu_seconds()
        self.note_rss()
        r.cpu_ms_per_chain = {
            k: round((between[k] - before.get(k, 0)) * 1000 / max(1, r.baseline.count), 2) for k in between
        }
        r.cpu_ms_per_offer = {k: round((after[k] - between.get(k, 0)) * 1000 / max(1, r.saga.count), 2) for k in after}
        self.inject_latency()
        try:
            r.realistic, _ = self.saga_phase("realistic", o.offers)
            if o.steady_seconds > 0:
                self.steady(o.steady_rate or max(1.0, r.realistic.rate / 2))
        finally:
            clear_faults(self.rt.settings)
        self.note_rss()
        if o.draft_seconds > 0:
            self.drafts()
        self.memory_phase(at_start, after_warmup)
        r.duplicate_holds = self.count_duplicate_holds()
        if r.duplicate_holds:
            r.problems.append(f"{r.duplicate_holds} offers have more than one PaymentIntent")
        return r


# -- the report ------------------------------------------------------------------------------------


def _ms(p: Percentiles | None) -> str:
    return "-" if p is None else f"{p.p50:.0f} / {p.p95:.0f} / {p.p99:.0f} ms"


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("[green]yes[/green]" if ok else "[red]no[/red]")


def _ratio_row(
    table: Table, number: str, what: str, run: Throughput, base: Throughput | None, base_name: str, target: float
) -> None:
    """A throughput row measured against another run of the same bench, and whether it meets ``target``."""
    x = ratio(run, base)
    table.add_row(
        number,
        what,
        f"{run.rate:.1f} offers/s = {x or 0:.2f} × {base_name}",
        f"≥ {target:.2f} × {base_name}",
        _met(None if x is None else x >= target),
    )


def report(result: BenchResult, console: Console, title: str) -> None:
    r = result
    table = Table(title=title)
    for col in ("#", "measure", "result", "target", "met"):
        table.add_column(col, justify="right" if col in ("result", "met") else "left")
    if r.baseline:
        table.add_row("1", "bare 5-hop chain, saturated", f"{r.baseline.rate:.1f} chains/s", "upper bound", "")
    if r.saga:
        _ratio_row(table, "2", f"saga, {r.saga.count} offers, saturated", r.saga, r.baseline, "chain", 0.5)
    if r.realistic:
        what = f"saga with partner latency, {r.realistic.count} offers"
        _ratio_row(table, "3", what, r.realistic, r.saga, "saga", 0.9)
    if r.steady_lag and r.steady_overhead:
        table.add_row(
            "4",
            f"steady {r.steady_rate:.1f} offers/s: intake→auction p50/p95/p99",
            _ms(r.steady_lag),
            f"injected: card {path_latency_ms('card'):.0f} ms, bank {path_latency_ms('bank_account'):.0f} ms",
            "",
        )
        table.add_row(
            "",
            "  the same less the latency injected on its path",
            _ms(r.steady_overhead),
            "p95 ≤ 60 ms",
            _met(r.steady_overhead.p95 <= 60),
        )
        if r.steady_stages:
            shares = " · ".join(f"{stage} {p.p50:.0f}/{p.p95:.0f}" for stage, p in r.steady_stages.items())
            table.add_row("", "  each stage's share, less its injected latency: p50/p95 ms", shares, "", "")
    if r.draft:
        table.add_row(
            "5",
            f"validate_draft at {r.draft_rps:.0f}/s, {r.draft.count} requests: p50/p95/p99",
            _ms(r.draft),
            "p95 ≤ 10 ms",
            _met(r.draft.p95 <= 10 and r.draft_errors == 0),
        )
    for label, (start, warm, end) in r.memory.items():
        base = warm or start
        growth = (end - base) / base * 100 if base and end else None
        text = f"{_mb(start)} → {_mb(warm)} → {_mb(end)}" + (f" ({growth:+.1f} %)" if growth is not None else "")
        table.add_row(
            "6",
            f"RSS {label}: start → warm → after {r.offers_sent} offers",
            text,
            "≤ +5 % from warm",
            _met(None if growth is None else growth <= 5),
        )
    if r.cpu_ms_per_offer:
        own = fleet_cpu_ms(r.cpu_ms_per_offer)
        table.add_row(
            "7",
            "CPU per offer, the fleet's own processes (workers, Postgres, Redis)",
            f"{own:.1f} ms",
            f"≤ {CPU_MS_PER_OFFER_TARGET:.1f} ms",
            _met(own <= CPU_MS_PER_OFFER_TARGET),
        )
    table.add_row(
        "", "offers with two holds (Stripe sandbox)", str(r.duplicate_holds), "0", _met(r.duplicate_holds == 0)
    )
    console.print(table)

    if r.cpu_ms_per_offer:
        cpu = Table(title="CPU per bare chain and per saga offer, at saturation (ms)")
        for col in ("process", "per chain", "per offer"):
            cpu.add_column(col, justify="left" if col == "process" else "right")
        for label in r.cpu_ms_per_offer:
            chain_ms, offer_ms = r.cpu_ms_per_chain.get(label, 0.0), r.cpu_ms_per_offer[label]
            if chain_ms >= 0.05 or offer_ms >= 0.05:
                cpu.add_row(label, f"{max(chain_ms, 0):.1f}", f"{offer_ms:.1f}")
        cpu.add_row(
            "the fleet's own",
            f"{fleet_cpu_ms(r.cpu_ms_per_chain):.1f}",
            f"{fleet_cpu_ms(r.cpu_ms_per_offer):.1f}",
        )
        cpu.add_row(
            "[bold]total",
            f"{sum(max(v, 0) for v in r.cpu_ms_per_chain.values()):.1f}",
            f"{sum(r.cpu_ms_per_offer.values()):.1f}",
        )
        console.print(cpu)
    if r.steady_task_times:
        console.print(steady_breakdown(r))
    for problem in r.problems:
        console.print(f"[red]- {problem}[/red]")


def sandbox_share_ms(result: BenchResult, stage: str) -> float | None:
    """The sandbox's mean own answer time on one run of ``stage`` (the card path's requests)."""
    total = 0.0
    for partner, n in STAGE_REQUESTS[stage]["card"].items():
        mean = result.steady_sandbox_answer_ms.get(partner, {}).get("mean")
        if mean is None:
            return None
        total += n * mean
    return total


def steady_breakdown(result: BenchResult) -> Table:
    """Each stage's share of the steady lag beside where its task spent the time."""
    table = Table(title="Steady load: each stage less its injected latency, p50 / p95 ms")
    for col in ("stage", "stage's share", "broker hop", "pool wait", "task run", "the sandbox's answers, mean (card)"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage in STAGE_REQUESTS:
        parts = result.steady_task_times.get(stage, {})
        share = result.steady_stages.get(stage)
        sandbox = sandbox_share_ms(result, stage)

        def pair(p: Percentiles | None) -> str:
            return "-" if p is None else f"{p.p50:.0f} / {p.p95:.0f}"

        table.add_row(
            stage,
            pair(share),
            *(pair(parts.get(part)) for part in TASK_PARTS),
            "-" if sandbox is None else f"{sandbox:.1f}",
        )
    answers = " · ".join(
        f"{partner} {a['p50']:.1f}/{a['p95']:.1f}"
        for partner, a in result.steady_sandbox_answer_ms.items()
        if a.get("count") and partner in LATENCY_MS
    )
    table.caption = f"the sandbox's own answer per request, p50/p95 ms: {answers}"
    return table


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MB"
