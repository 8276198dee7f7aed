-- When a stage's retry is due (a task's backoff, or the recovery sweep's own re-send): the sweep
-- leaves an offer alone while a retry is pending, so an outage or a backlog is ridden out by one
-- chain of messages per offer, not one more per sweep.
ALTER TABLE offers ADD COLUMN retry_due_at timestamptz;
