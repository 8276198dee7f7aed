"""The docs list what the code has: every setting in the production guide's configuration table (with
its default), every command in the CLI page's command list, every package in the README's Layout. A
setting or a command added without its row fails the build."""

from __future__ import annotations

import re
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from config.settings import Settings, env_name
from offers_workers.ops.cli import main
from tests.contract.markdown import DOCS, README, ROOT, Snippet, table_rows
from tests.contract.test_readme import command_path, snippet

#: Where each section the checks read lives.
PRODUCTION = DOCS / "production.md"
CONFIGURATION = "### Configuration (environment, prefix `OFFERS_`)"
#: A setting and what follows its name in the table: `OFFERS_X` (default; range)
SETTING = re.compile(r"`(OFFERS_[A-Z0-9_]+)`(?:\s*\(([^)]*)\))?")


def on_page(page: str, name: str) -> Snippet:
    """A snippet the check reads, from the page the check says it is on."""
    block = snippet(name)
    assert block.document == page, f"'{name}' moved from {page} to {block.document}: point this check at its page"
    return block


def documented_settings(path: Path = PRODUCTION) -> dict[str, str]:
    """Each setting named in the configuration table, with the text in parentheses after it."""
    found: dict[str, str] = {}
    for cells in table_rows(path, CONFIGURATION):
        for name, note in SETTING.findall(cells[0]):
            found[name] = note
    return found


def spellings(default: Any) -> set[str]:
    """How the configuration table may write a default."""
    if isinstance(default, bool):
        return {"on", "1"} if default else {"off"}
    if isinstance(default, timedelta):
        return {f"P{default.days}D"} if not default.seconds else {f"{default.total_seconds():g}"}
    if isinstance(default, (int, float)):
        return {f"{default:g}", f"{default:,}", f"{default:,.0f}"}
    if default in ("", None):
        return {"empty", "unset"}
    return {str(default)}


def test_every_setting_has_a_row_in_the_configuration_table() -> None:
    documented = documented_settings()
    in_code = {env_name(name): field for name, field in Settings.model_fields.items()}
    assert sorted(set(in_code) - set(documented)) == [], (
        "settings missing from docs/production.md's configuration table"
    )
    assert sorted(set(documented) - set(in_code)) == [], (
        "docs/production.md's table names settings the code does not read"
    )


def test_the_table_gives_every_default() -> None:
    documented = documented_settings()
    wrong = {}
    for name, field in Settings.model_fields.items():
        default, note = field.default, documented[env_name(name)]
        if default is None:
            continue  # required, or derived (the table says from what)
        if not any(spelled in note.replace("`", "") for spelled in spellings(default)):
            wrong[env_name(name)] = f"code: {default!r}, docs/production.md: ({note})"
    assert wrong == {}


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> set[str]:
    found: set[str] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= leaf_commands(command, (*prefix, name))
        else:
            found.add(" ".join((*prefix, name)))
    return found


def test_every_command_is_in_the_cli_pages_command_list() -> None:
    listed = {" ".join(command_path(line)[0]) for line in on_page("docs/cli.md", "cli-reference").lines()}
    in_code = leaf_commands(main)
    assert sorted(in_code - listed) == [], "commands missing from docs/cli.md's command list"
    assert sorted(listed - in_code) == [], "docs/cli.md lists commands the CLI does not have"


def test_every_option_of_a_listed_command_is_on_the_cli_page() -> None:
    listed: dict[str, set[str]] = {}
    for line in on_page("docs/cli.md", "cli-reference").lines():
        path, options = command_path(line)
        listed.setdefault(" ".join(path), set()).update(options)
    missing = {}
    for path, options in listed.items():
        command: Any = main
        for word in path.split():
            command = command.commands[word]
        in_code = {
            opt
            for param in command.params
            if isinstance(param, click.Option)
            for opt in param.opts
            if opt.startswith("--")
        }
        if in_code - options - {"--help"}:
            missing[path] = sorted(in_code - options - {"--help"})
    assert missing == {}, "options docs/cli.md's command list does not show"


ARCHITECTURE = DOCS / "architecture.md"
BACKTICKED = re.compile(r"`([^`\s]+)`")


def layout_bullets() -> list[list[str]]:
    """The README's Layout section: each bullet's backticked names, the folder it is about first."""
    text = README.read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    bullets = re.split(r"\n- ", "\n" + text.split("\n- ", 1)[1])
    return [BACKTICKED.findall(bullet) for bullet in bullets if bullet.strip()]


def test_the_layout_names_every_package_and_only_paths_that_exist() -> None:
    missing, named = [], set()
    for names in layout_bullets():
        base = names[0]
        named.add(base.rstrip("/"))
        for name in names[1:]:
            if not (name.endswith((".py", "/")) or "/" in name):
                continue
            candidates = [ROOT / base / name, ROOT / name]
            if not any(p.exists() for p in candidates):
                missing.append(f"{name} (under {base})")
    assert missing == [], "the README's Layout names paths that are not in the tree"
    packages = {
        str(p.parent.relative_to(ROOT))
        for p in ROOT.glob("offers_workers/*/__init__.py")
        if p.parent.name not in {"migrations"}
    }
    packages |= {"tasks", "config", "tests"}
    packages -= {"offers_workers/store/migrations"}
    assert sorted(packages - named) == [], "packages the README's Layout does not describe"


def test_the_architecture_page_points_at_files_that_exist() -> None:
    paths = [n for n in BACKTICKED.findall(ARCHITECTURE.read_text()) if "/" in n and not n.startswith("offer:")]
    assert paths, "the scan found no paths"
    # A package may be named on its own (`saga/`), as the page's last section does.
    missing = [
        p for p in paths if not p.startswith("/") and not any((d / p).exists() for d in (ROOT, ROOT / "offers_workers"))
    ]
    assert missing == []


def test_the_offer_flow_diagram_names_real_tasks_and_states() -> None:
    from config.celery import ROUTES
    from offers_workers.domain import states

    diagram = on_page("README.md", "offer-flow").text
    tasks = set(re.findall(r"\b(offers\.[a-z_.]+[a-z])\b", diagram)) - set(QUEUE_NAMES())
    assert tasks - set(ROUTES) == set(), "the diagram names tasks the fleet does not route"
    assert {s.task for s in states.STAGES} <= tasks, "a stage is missing from the diagram"
    shown = set(re.findall(r"<i>([a-z_]+)</i>", diagram))
    assert shown - set(states.ALL_STATES) == set()
    assert set(states.HAPPY_PATH) <= shown
    for worker, queues in re.findall(r'subgraph (\w+)\["\w+: ([^"]+)"\]', diagram):
        assert set(queues.split(", ")) <= set(QUEUE_NAMES()), worker


def test_the_production_topology_names_real_processes_and_settings() -> None:
    from offers_workers.local.fleet import read_procfile

    diagram = on_page("docs/operations.md", "production-topology").text
    processes = {p.name for p in read_procfile()} - {"release"}
    assert all(re.search(rf"\b{name}\b", diagram) for name in processes), "a process type is missing"
    named = set(re.findall(r"\bOFFERS_([A-Z_]+)", diagram))
    assert named and {n.lower() for n in named} <= set(Settings.model_fields), (
        "the diagram names a setting the fleet lacks"
    )


def QUEUE_NAMES() -> list[str]:
    from config.celery import QUEUES

    return QUEUES


def test_the_guides_delivery_limit_policy_is_the_one_the_tests_set() -> None:
    from config.celery import BROKER_DELIVERY_LIMIT
    from tests.brokers import delivery_limit_policy

    [line] = [line for line in on_page("docs/operations.md", "rabbitmq-vhost").lines() if "set_policy" in line]
    assert tuple(shlex.split(line)[1:]) == delivery_limit_policy("$VHOST")
    # RabbitMQ's limit is the backstop: the workers' own, at its highest, must decide well before it.
    highest = next(m.le for m in Settings.model_fields["poison_deliveries"].metadata if hasattr(m, "le"))
    assert 2 * highest < BROKER_DELIVERY_LIMIT
