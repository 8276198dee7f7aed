-- How many times the payment stage has started on the offer. The first start of all places the hold
-- under the offer's first idempotency key without searching Stripe for an earlier one (there can be
-- none); every later start searches first, as before. Rows already there count as started once, so
-- an offer in flight across the upgrade is searched for: only offers received from now on skip it.
ALTER TABLE offers ADD COLUMN payment_attempts integer NOT NULL DEFAULT 1;
ALTER TABLE offers ALTER COLUMN payment_attempts SET DEFAULT 0;
