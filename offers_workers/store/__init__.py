"""The store: every SQL statement of the fleet, one module per table or aggregate.

``offers`` (offer rows, guarded transitions, the one definition of a stuck offer), ``audit_trail``
(audit rows, reading the chain), ``audit_exports``, ``outbox`` (offer events), ``dead_letters``,
``intake_rejections``, ``cancel_requests``, ``flags``, ``policy`` (makers and listings), and the read
models ``reports`` (the figures of ``stats``, ``health`` and ``/metrics``) and ``listings`` (the
paged listings the CLI prints); ``db`` holds the pool and the migrations.

Callers import the module they need (``from offers_workers.store import offers``) and call it by
name; nothing outside this package writes SQL (tests/security/test_sql_is_parametrised.py).
"""
