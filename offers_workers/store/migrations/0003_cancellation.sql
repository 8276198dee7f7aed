-- Every cancel request as it arrived (buyer, maker, ops, or the SLA job) and what it did. A request
-- for an offer not received yet is a tombstone: the late submit then ends cancelled, never held.
CREATE TABLE cancel_requests (
    id           bigserial PRIMARY KEY,
    offer_id     text,
    reason       text,
    actor        text,
    outcome      text        NOT NULL CHECK (outcome IN (
                     'cancelled', 'tombstone', 'tombstone_applied', 'already_cancelled', 'already_rejected', 'invalid')),
    errors       jsonb,
    task_id      text,
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_at   timestamptz
);
CREATE INDEX cancel_requests_offer_idx ON cancel_requests (offer_id);

-- Maker SLA windows may be fractions of an hour.
ALTER TABLE makers ALTER COLUMN sla_hours TYPE numeric(8, 3);

-- The SLA job looks for submitted offers by the time they were submitted.
CREATE INDEX offers_submitted_idx ON offers (completed_at) WHERE state = 'submitted';
-- Cancellation stats and the high-value watch read cancellations by time.
CREATE INDEX offers_cancelled_idx ON offers (cancelled_at) WHERE state = 'cancelled';
