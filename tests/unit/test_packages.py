"""The tree keeps its promises: the domain does no I/O, the saga imports no Celery, a production
worker loads nothing from ``local``, nor Prometheus, and registers no bench task, no module of the
project imports itself through others (no import cycle), and settings read no partner adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.unit.worker_probe import probe_worker

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
        " 'prometheus': sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'offers_workers.ops.metrics'))),"
        " 'tasks': sorted(app.tasks)}))\n"
    )
    loaded = probe_worker(probe)
    assert loaded["local"] == []
    # /metrics is the metrics process's own: a worker counts in Redis (store.counters) without it.
    assert loaded["prometheus"] == []
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


#: The project's own packages: the import graph covers every module of these.
PROJECT_PACKAGES = ("offers_workers", "config", "tasks")


def project_modules() -> dict[str, Path]:
    """Every module of the project by dotted name (a package by its own name, for its ``__init__``)."""
    found = {}
    for package in PROJECT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def type_checking_only(node: ast.AST) -> bool:
    # An ``if TYPE_CHECKING:`` block never runs: it cannot take part in an import cycle.
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def project_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its body (inside functions too), relative imports
    resolved; ``from package import module`` counts as an import of that module."""
    imported: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    pending: list[ast.AST] = [ast.parse(path.read_text(), filename=str(path))]
    while pending:
        node = pending.pop()
        if type_checking_only(node):
            pending.extend(node.orelse if isinstance(node, ast.If) else [])
            continue
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # ``from . import x`` in a.b.c is a.b.x; each further dot goes one package up.
            within = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*within, *([node.module] if node.module else [])])
            for alias in node.names:
                imported.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        pending.extend(ast.iter_child_nodes(node))
    found = set()
    for module in imported:
        while module and module not in modules:
            module = module.rpartition(".")[0]
        if module and module != name:
            found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: project_imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle of ``graph`` once, as the path that closes it (Tarjan's components of two or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while stack[-1] != module:
                component.append(stack.pop())
            component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_among_the_projects_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_scan_sees_a_planted_cycle_through_a_function_level_import() -> None:
    graph = import_graph()
    assert "offers_workers.store.db" in graph["offers_workers.runtime"]
    # runtime imports the store's pool; a store module importing runtime inside a function closes a cycle.
    graph["offers_workers.store.db"] = {*graph["offers_workers.store.db"], "offers_workers.runtime"}
    assert [c for c in cycles(graph) if {"offers_workers.runtime", "offers_workers.store.db"} <= set(c)] != []


def test_function_level_and_relative_imports_are_in_the_graph(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\ndef f():\n    from . import b\n"
    )
    modules = {"pkg": package / "__init__.py", "pkg.a": package / "a.py", "pkg.b": tmp_path, "pkg.c": tmp_path}
    assert project_imports("pkg.a", package / "a.py", modules) == {"pkg.b"}


def importers_of(prefix: str, paths: list[Path]) -> list[str]:
    modules = project_modules()
    names = {path: name for name, path in modules.items()}
    return sorted(
        f"{path.relative_to(ROOT)} imports {imported}"
        for path in paths
        for imported in project_imports(names[path], path, modules)
        if imported == prefix or imported.startswith(prefix + ".")
    )


def test_runtime_and_tasks_do_not_import_ops() -> None:
    # Operators' tools (Prometheus, health, the CLI) stay out of what every worker loads; the fleet's
    # counters live in the store. The beat's two operator jobs are the maintenance task's to run.
    allowed = {
        "tasks/maintenance.py imports offers_workers.ops.export_summary",
        "tasks/maintenance.py imports offers_workers.ops.synthetic",
    }
    paths = [PACKAGE / "runtime.py", *sorted((ROOT / "tasks").rglob("*.py"))]
    assert sorted(set(importers_of("offers_workers.ops", paths)) - allowed) == []


def test_config_does_not_import_the_partner_adapters() -> None:
    # Settings need the partner table's plain data (offers_workers.domain.partners), never the adapters' package.
    assert importers_of("offers_workers.partners", sorted((ROOT / "config").rglob("*.py"))) == []
