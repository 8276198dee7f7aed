-- What reconciliation with Stripe found. A hold it released is recorded resolved at once; a
-- mismatch it must not fix by itself stays open for an operator until a later run finds it gone.
CREATE TABLE hold_findings (
    id                 bigserial PRIMARY KEY,
    found_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind               text        NOT NULL,
    offer_id           text,
    payment_intent_id  text        NOT NULL,
    detail             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    resolved_at        timestamptz
);
CREATE UNIQUE INDEX hold_findings_open_idx ON hold_findings (kind, payment_intent_id) WHERE resolved_at IS NULL;
CREATE INDEX hold_findings_found_idx ON hold_findings (found_at);
