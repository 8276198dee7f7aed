"""Each stage is declared once (``offers_workers.domain.stage_tasks``): the registered tasks, the routes,
the retry policies and the dead-letter queues all agree with that one declaration."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from config import retry
from config.celery import ROUTES
from offers_workers.domain import stage_tasks, states
from offers_workers.saga import deadletter
from tasks.base import OffersTask, stage_task
from tests.unit.worker_probe import probe_worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registered() -> dict[str, Any]:
    """What a production worker registers (`celery -A tasks.app worker`): every OffersTask with its stage,
    the state it starts from and the queue the app routes it to."""
    probe = (
        "import json\n"
        "from tasks.app import app\n"
        "from tasks.base import OffersTask\n"
        "app.loader.import_default_modules()\n"
        "routes = app.conf.task_routes\n"
        "print(json.dumps({name: {'stage': t.stage, 'from_state': t.from_state, 'queue': routes[name]['queue']}"
        " for name, t in app.tasks.items() if isinstance(t, OffersTask)}))\n"
    )
    found: dict[str, Any] = probe_worker(probe)
    return found


def test_every_stage_task_is_registered_as_declared(registered: dict[str, Any]) -> None:
    assert sorted(registered) == sorted(stage_tasks.BY_NAME)
    for name, task in registered.items():
        declared = stage_tasks.BY_NAME[name]
        assert (task["stage"], task["from_state"], task["queue"]) == (
            declared.stage,
            declared.from_state,
            declared.queue,
        )


def test_the_routes_agree_with_the_declaration() -> None:
    # ROUTES is the contract upstreams send to: every declared task on its declared queue.
    assert {t.name: ROUTES.get(t.name) for t in stage_tasks.STAGE_TASKS} == {
        t.name: t.queue for t in stage_tasks.STAGE_TASKS
    }


def test_the_saga_stages_are_declared_as_the_state_machine_has_them() -> None:
    assert stage_tasks.STAGES[: len(states.STAGES)] == tuple(s.name for s in states.STAGES)
    for stage in states.STAGES:
        declared = stage_tasks.BY_NAME[stage.task]
        assert (declared.stage, declared.queue, declared.from_state) == (stage.name, stage.queue, stage.from_state)
    # Only the saga's stages move an offer to dead_lettered: no other task names a state.
    assert {t.name for t in stage_tasks.STAGE_TASKS if t.from_state} == {s.task for s in states.STAGES}


def test_every_declared_stage_runs_a_task_and_every_task_runs_a_declared_stage() -> None:
    assert len(stage_tasks.BY_NAME) == len(stage_tasks.STAGE_TASKS), "a task is declared twice"
    assert {t.stage for t in stage_tasks.STAGE_TASKS} == set(stage_tasks.STAGES)


def test_the_retry_and_dead_letter_tables_cover_exactly_the_declared_stages() -> None:
    assert list(retry.POLICIES) == list(stage_tasks.STAGES)
    assert deadletter.STAGES == stage_tasks.STAGES
    for stage, kind in stage_tasks.STAGE_RETRY.items():
        assert retry.policy_for(stage) == retry.BY_KIND[kind]
    with pytest.raises(KeyError):
        retry.policy_for("nowhere")


def test_the_base_task_has_no_default_stage() -> None:
    assert not hasattr(OffersTask, "stage")
    with pytest.raises(TypeError, match="no stage"):
        type("stageless", (OffersTask,), {"name": "offers.stageless"})


def test_a_task_without_a_stage_fails_at_registration() -> None:
    app = Celery("stageless", set_as_current=False)

    def forgot(self: OffersTask, offer_id: str) -> None:
        return None

    with pytest.raises(TypeError, match="no stage"):
        app.task(name="offers.stage.forgot", base=OffersTask, bind=True, shared=False)(forgot)
        app.finalize(auto=True)


def test_a_task_cannot_be_registered_as_a_stage_task_without_a_declaration() -> None:
    with pytest.raises(KeyError):
        stage_task("offers.stage.undeclared")


def test_dispatch_is_imported_from_its_one_module() -> None:
    sources = [
        path
        for package in ("offers_workers", "config", "tasks", "tests")
        for path in sorted((ROOT / package).rglob("*.py"))
    ]
    importing = {
        f"{path.relative_to(ROOT)}: {node.module}"
        for path in sources
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.ImportFrom) and any(alias.name == "Dispatch" for alias in node.names)
    }
    assert importing, "the scan found no import of Dispatch at all"
    assert sorted(i for i in importing if not i.endswith(": offers_workers.saga.decisions")) == []
