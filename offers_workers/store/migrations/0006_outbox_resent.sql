-- When the recovery sweep last re-sent an unpublished event: it re-sends each at most once per
-- window, so a backlog on the events queue is not multiplied by every sweep.
ALTER TABLE offer_events ADD COLUMN resent_at timestamptz;
