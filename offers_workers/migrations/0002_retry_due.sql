-- When a stage's retry is due: the recovery sweep leaves an offer alone while a retry is pending,
-- so a partner outage is ridden out by one retry chain per offer, not one more per sweep.
ALTER TABLE offers ADD COLUMN retry_due_at timestamptz;
