"""The tree keeps its promises: the domain does no I/O, the saga imports no Celery, a production
worker loads nothing from ``local`` and registers no bench task."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "offers_workers"

#: Imports that mean I/O or a framework: none of them belongs in the marketplace's rules.
NOT_IN_DOMAIN = {
    "celery",
    "kombu",
    "psycopg",
    "psycopg_pool",
    "redis",
    "boto3",
    "botocore",
    "stripe",
    "sift",
    "plaid",
    "requests",
    "urllib3",
    "socket",
    "offers_workers.store",
    "offers_workers.saga",
    "offers_workers.partners",
    "offers_workers.ops",
    "offers_workers.local",
    "offers_workers.runtime",
    "config",
}
NOT_IN_SAGA = {"celery", "kombu", "offers_workers.ops", "offers_workers.local", "tasks"}
NOT_IN_PRODUCTION = {"offers_workers.local", "tests"}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def offending(package: str, forbidden: set[str]) -> list[str]:
    hits = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                hits.append(f"{path.relative_to(ROOT)} imports {module}")
    return hits


def test_the_domain_imports_no_framework_and_does_no_io() -> None:
    assert offending("domain", NOT_IN_DOMAIN) == []


def test_the_saga_imports_no_celery() -> None:
    assert offending("saga", NOT_IN_SAGA) == []


@pytest.mark.parametrize("package", ["domain", "saga", "store", "partners", "ops", "."])
def test_production_code_does_not_import_local_tools_at_module_level(package: str) -> None:
    # ops/cli may start the local stack for `dev`, `demo` and `bench`, inside those commands only.
    hits = []
    paths = (PACKAGE / package).glob("*.py") if package == "." else (PACKAGE / package).rglob("*.py")
    for path in sorted(paths):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("offers_workers.local"):
                hits.append(f"{path.relative_to(ROOT)} imports {node.module}")
            if isinstance(node, ast.Import):
                hits += [
                    f"{path.relative_to(ROOT)} imports {a.name}"
                    for a in node.names
                    if a.name.startswith("offers_workers.local")
                ]
    assert hits == []


def test_the_scan_sees_a_planted_import(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("from celery import shared_task\nimport psycopg\n")
    assert {"celery", "celery.shared_task", "psycopg"} <= imported_modules(planted)


def test_a_production_worker_loads_nothing_local_and_no_bench_task() -> None:
    # What `celery -A tasks.app worker` imports: the app and every task module it includes.
    probe = (
        "import json, sys\n"
        "from tasks.app import app\n"
        "app.loader.import_default_modules()\n"
        "print(json.dumps({'local': sorted(m for m in sys.modules if m.startswith(('offers_workers.local', 'tests'))),"
        " 'tasks': sorted(app.tasks)}))\n"
    )
    # Settings a worker needs to start; nothing is contacted while modules load.
    env = {
        "PATH": os.environ.get("PATH", ""),
        "OFFERS_BROKER_URL": "redis://127.0.0.1:9/0",
        "OFFERS_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "OFFERS_SANDBOX": "1",
    }
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["local"] == []
    assert "offers.submit" in loaded["tasks"] and "offers.stage.hold_payment" in loaded["tasks"]
    assert not [name for name in loaded["tasks"] if name.startswith("offers.bench")]


#: The saga's decisions are pure: besides the domain only the retry policies (plain data).
DECISIONS_MAY_IMPORT = (
    "offers_workers.domain",
    "config.retry",
    "__future__",
    "collections",
    "dataclasses",
    "enum",
    "typing",
)


def test_the_saga_decisions_do_no_io() -> None:
    imported = imported_modules(PACKAGE / "saga" / "decisions.py")
    assert sorted(m for m in imported if not m.startswith(DECISIONS_MAY_IMPORT)) == []


def saga_imports(module: str) -> set[str]:
    """The saga modules ``saga/<module>.py`` imports, at any level (lazy imports included)."""
    names = imported_modules(PACKAGE / "saga" / f"{module}.py")
    return {n.split(".")[2] for n in names if n.startswith("offers_workers.saga.")}


def test_no_import_cycle_among_the_saga_modules() -> None:
    modules = [p.stem for p in (PACKAGE / "saga").glob("*.py") if p.stem != "__init__"]
    graph = {m: {d for d in saga_imports(m) if d in modules and d != m} for m in modules}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(d == target or (d not in seen and reaches(d, target, seen | {d})) for d in graph[start])

    assert [m for m in modules if reaches(m, m, set())] == []
    assert "intake" not in graph["cancellation"]
