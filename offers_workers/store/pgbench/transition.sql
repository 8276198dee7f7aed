-- A transition as the fleet runs it (store.offers.transition): the offer's UPDATE and its audit row in
-- one statement, then the client's round trip before COMMIT (pgbench -D rtt_us=N, -D offers=N).
\set offer random(1, :offers)
BEGIN;
WITH moved AS (
    UPDATE offers SET state = 'payment_held', payment_held_at = clock_timestamp(), updated_at = clock_timestamp()
    WHERE offer_id = 'bench-' || :offer RETURNING offer_id)
INSERT INTO audit_events (offer_id, kind, from_state, to_state, reason, actor, data)
    SELECT offer_id, 'transition', 'validated', 'payment_held', NULL, 'pgbench', '{}'::jsonb FROM moved;
\sleep :rtt_us us
COMMIT;
