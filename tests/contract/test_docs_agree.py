"""The README lists what the code has: every setting in its configuration table (with its default),
every command in its command list. A setting or a command added without its row fails the build."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from config.settings import Settings, env_name
from offers_workers.ops.cli import main
from tests.contract.markdown import ROOT, table_rows
from tests.contract.test_readme import command_path, snippet

README = ROOT / "README.md"
#: A setting and what follows its name in the table: `OFFERS_X` (default; range)
SETTING = re.compile(r"`(OFFERS_[A-Z0-9_]+)`(?:\s*\(([^)]*)\))?")


def documented_settings(path: Path = README) -> dict[str, str]:
    """Each setting named in the configuration table, with the text in parentheses after it."""
    found: dict[str, str] = {}
    for cells in table_rows(path, "### Configuration (environment, prefix `OFFERS_`)"):
        for name, note in SETTING.findall(cells[0]):
            found[name] = note
    return found


def spellings(default: Any) -> set[str]:
    """How the README may write a default."""
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
    assert sorted(set(in_code) - set(documented)) == [], "settings missing from the README's configuration table"
    assert sorted(set(documented) - set(in_code)) == [], "the README's table names settings the code does not read"


def test_the_table_gives_every_default() -> None:
    documented = documented_settings()
    wrong = {}
    for name, field in Settings.model_fields.items():
        default, note = field.default, documented[env_name(name)]
        if default is None:
            continue  # required, or derived (the table says from what)
        if not any(spelled in note.replace("`", "") for spelled in spellings(default)):
            wrong[env_name(name)] = f"code: {default!r}, README: ({note})"
    assert wrong == {}


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> set[str]:
    found: set[str] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= leaf_commands(command, (*prefix, name))
        else:
            found.add(" ".join((*prefix, name)))
    return found


def test_every_command_is_in_the_readme_command_list() -> None:
    listed = {" ".join(command_path(line)[0]) for line in snippet("cli-reference").lines()}
    in_code = leaf_commands(main)
    assert sorted(in_code - listed) == [], "commands missing from the README's Operator CLI list"
    assert sorted(listed - in_code) == [], "the README lists commands the CLI does not have"


def test_every_option_of_a_listed_command_is_in_the_readme() -> None:
    listed: dict[str, set[str]] = {}
    for line in snippet("cli-reference").lines():
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
    assert missing == {}, "options the README's Operator CLI list does not show"
