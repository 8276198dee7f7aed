-- One audit row per transaction, then the client's round trip before COMMIT (pgbench -D rtt_us=N).
-- The row is a transition as store.offers.transition writes it; the chain columns are the schema's business.
\set offer random(1, :offers)
BEGIN;
INSERT INTO audit_events (offer_id, kind, from_state, to_state, reason, actor, data)
    VALUES ('bench-' || :offer, 'transition', 'validated', 'payment_held', NULL, 'pgbench', '{}'::jsonb);
\sleep :rtt_us us
COMMIT;
