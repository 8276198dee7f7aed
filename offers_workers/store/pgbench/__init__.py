"""pgbench scripts of the audit-path benchmark (``offers_workers.local.audit_bench``): data, not code."""
