"""Every SQL statement is parametrised: no statement is built from strings at run time.

Walks the source of the fleet (offers_workers, tasks, config) and flags any call to ``execute``
whose query is an f-string, a ``%``/``+`` expression or a ``str.format`` call. Queries built from
parts go through ``psycopg.sql`` (``sql.SQL(...).format(sql.Identifier(...))``), which quotes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("offers_workers", "tasks", "config") for p in (ROOT / d).rglob("*.py"))


def string_built(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return True
    # "...".format(...) on a plain string; sql.SQL("...").format(...) is psycopg's safe composition
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return isinstance(node.func.value, (ast.Constant, ast.JoinedStr))
    return False


def findings(path: Path) -> list[str]:
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if (
            (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute", "executemany")
            )
            and node.args
            and string_built(node.args[0])
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_scan_sees_the_sources() -> None:
    assert len(SOURCES) > 30
    assert any(p.parent.name == "store" for p in SOURCES)


@pytest.mark.parametrize(
    "snippet",
    [
        "conn.execute(f\"SELECT * FROM offers WHERE offer_id = '{offer_id}'\")",
        "conn.execute(\"SELECT * FROM offers WHERE offer_id = '%s'\" % offer_id)",
        'conn.execute("SELECT * FROM offers WHERE offer_id = \'" + offer_id + "\'")',
        'cur.execute("DELETE FROM {} WHERE id = 1".format(table))',
    ],
)
def test_the_scan_catches_string_built_sql(tmp_path: Path, snippet: str) -> None:
    source = tmp_path / "bad.py"
    source.write_text(snippet + "\n")
    tree = ast.parse(source.read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "execute")
    assert string_built(call.args[0])


def test_no_statement_is_built_from_strings() -> None:
    problems = [f for path in SOURCES for f in findings(path)]
    assert problems == [], f"string-built SQL at {problems}: use parameters or psycopg.sql"
