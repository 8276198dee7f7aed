"""Every SQL statement is parametrised, and every one lives in the store.

Walks the source of the fleet (offers_workers, tasks, config) and flags any call to ``execute``
whose query is an f-string, a ``%``/``+`` expression or a ``str.format`` call. Queries built from
parts go through ``psycopg.sql`` (``sql.SQL(...).format(sql.Identifier(...))``), which quotes.

Outside ``offers_workers/store/`` there is no SQL at all: no ``execute``/``executemany``/``copy``
call, no cursor, no ``psycopg.sql`` and no string that reads as a statement. Callers ask the store
by name (``offers.load_offer``, ``dead_letters.discard``), so a table has one owner.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("offers_workers", "tasks", "config") for p in (ROOT / d).rglob("*.py"))
STORE = ROOT / "offers_workers" / "store"

#: Calls that run SQL, whoever the receiver is.
RUNS_SQL = frozenset({"execute", "executemany", "copy", "cursor"})
#: A string that reads as a statement: uppercase keywords, as this code base writes SQL.
STATEMENT = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|DROP|ALTER|GRANT|REVOKE|TRUNCATE|LOCK|SET)\s"
    r"|\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+(\s+AS\s+\w+)?\s+SET\b|\bDELETE\s+FROM\b"
    r"|\bON\s+CONFLICT\b|\bRETURNING\b"
)


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


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes: prose may name a statement without being one."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def sql_sites(source: str, name: str = "<source>") -> list[str]:
    """Each place in ``source`` that runs, composes or spells SQL, as ``line: what``."""
    tree = ast.parse(source, filename=name)
    prose = _docstrings(tree)
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RUNS_SQL:
            # dict.copy() and a Redis pipeline's execute() take no arguments; SQL always comes with its query.
            if node.args or node.keywords:
                sites.append(f"{node.lineno}: .{node.func.attr}() call")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("psycopg"):
            if node.module == "psycopg.sql" or any(a.name == "sql" for a in node.names):
                sites.append(f"{node.lineno}: imports psycopg.sql")
        elif isinstance(node, ast.Import) and any(a.name == "psycopg.sql" for a in node.names):
            sites.append(f"{node.lineno}: imports psycopg.sql")
        elif isinstance(node, ast.Attribute) and node.attr == "sql" and getattr(node.value, "id", None) == "psycopg":
            sites.append(f"{node.lineno}: uses psycopg.sql")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in prose
            and STATEMENT.search(node.value)
        ):
            sites.append(f"{node.lineno}: SQL text {node.value.strip()[:40]!r}")
    return sites


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


@pytest.mark.parametrize(
    "snippet",
    [
        'conn.execute("SELECT 1")',
        "rows = conn.execute(QUERY, params).fetchall()",
        "cur.executemany(QUERY, rows)",
        'with cur.copy("COPY offers TO STDOUT") as copy: pass',
        'with conn.cursor(name="rows") as cur: pass',
        "from psycopg import sql",
        "import psycopg.sql",
        "from psycopg.sql import SQL, Identifier",
        'query = psycopg.sql.SQL("x")',
        'STUCK = "SELECT offer_id FROM offers WHERE state = ANY(%s)"',
        'q = "UPDATE dead_letters SET status = %s WHERE id = %s"',
        'q = "INSERT INTO offers (offer_id) VALUES (%s)"',
        'q = "  DELETE FROM offers"',
        'q = f"WITH moved AS (SELECT {x})"',
        'q = ("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))")',
        'def f():\n    x = 1\n    return "UPDATE offers SET retry_due_at = now()"',
    ],
)
def test_the_scan_catches_sql_outside_the_store(snippet: str) -> None:
    assert sql_sites(snippet), f"not caught: {snippet}"


@pytest.mark.parametrize(
    "snippet",
    [
        'def f():\n    """Runs SELECT … FROM offers, INSERT INTO the audit trail."""',
        "settings = base.copy()",
        'log.info("offer cancelled", extra={"reason": reason})',
        'fail("choose holds with --offer, --dead-lettered or --older-than")',
        "*_, starts = pipe.execute()",
    ],
)
def test_the_scan_lets_prose_and_plain_code_through(snippet: str) -> None:
    assert sql_sites(snippet) == []


def test_sql_lives_only_in_the_store() -> None:
    problems = [
        f"{path.relative_to(ROOT)}:{site}"
        for path in SOURCES
        if STORE not in path.parents
        for site in sql_sites(path.read_text(), str(path))
    ]
    assert problems == [], "SQL outside offers_workers/store/ (add a named store function):\n" + "\n".join(problems)
