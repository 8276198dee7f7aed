-- The audit chain without a fleet-wide lock in the saga's path.
--
-- Until now every insert took one advisory lock (migration 0004) and held it until its transaction
-- committed, so all transitions of all hosts passed through it one at a time. From here on a row is
-- inserted unlinked (prev_hash and row_hash NULL) and one sealer links rows into the same chain, in
-- id order, shortly after they commit (offers_workers/saga/audit.py: seal).
--
-- Why id order stays safe without the lock: a writer takes its transaction id before it draws a row
-- id (audit_chain below), and row ids come from a sequence without a per-session cache. So once the
-- sealer has read the last id handed out, and then a snapshot, every writer of an id up to that one
-- has a transaction id below that snapshot's xmax; when no transaction below it is still running,
-- each of those rows is either committed (visible) or rolled back (never will be). Only then does the
-- sealer link them: a row can never appear behind the sealed end of the chain.

ALTER SEQUENCE audit_events_id_seq CACHE 1;

-- The sealer's state, one row: everything up to sealed_through is linked (last_hash is the chain's
-- end); pending_through and pending_xmax are the next window, sealed once no transaction below
-- pending_xmax is running.
CREATE TABLE audit_seal (
    singleton        boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    sealed_through   bigint      NOT NULL,
    last_hash        text        NOT NULL,
    sealed_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    pending_through  bigint      NOT NULL,
    pending_xmax     xid8        NOT NULL
);

-- Taking the table's lock waits for the old trigger's writers to finish, so the chain's end is final.
LOCK TABLE audit_events IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO audit_seal (sealed_through, last_hash, pending_through, pending_xmax)
SELECT coalesce(max(id), 0),
       coalesce((SELECT row_hash FROM audit_events ORDER BY id DESC LIMIT 1), repeat('0', 64)),
       coalesce(max(id), 0),
       pg_snapshot_xmax(pg_current_snapshot())
FROM audit_events;

ALTER TABLE audit_events ALTER COLUMN prev_hash DROP NOT NULL, ALTER COLUMN row_hash DROP NOT NULL;
-- The trigger draws the id (after the transaction id); a default would draw a second one.
ALTER TABLE audit_events ALTER COLUMN id DROP DEFAULT;

CREATE OR REPLACE FUNCTION audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_current_xact_id();  -- the transaction id first: see the header
    NEW.id := nextval(pg_get_serial_sequence('audit_events', 'id'));
    NEW.prev_hash := NULL;  -- only the sealer links rows
    NEW.row_hash := NULL;
    RETURN NEW;
END $$;

-- Rows stay append-only. The one change allowed is the sealer's: linking a row not linked yet, with
-- the hash its content gives, its content untouched.
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.row_hash IS NULL AND NEW.prev_hash IS NOT NULL
       AND NEW.row_hash = audit_row_digest(NEW, NEW.prev_hash)
       AND (NEW.id, NEW.at, NEW.offer_id, NEW.kind, NEW.from_state, NEW.to_state, NEW.reason, NEW.actor, NEW.data)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.offer_id, OLD.kind, OLD.from_state, OLD.to_state, OLD.reason, OLD.actor, OLD.data)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;

-- Link the rows after the chain's end up to id ``through`` (all final: the caller checked), in id
-- order; returns how many. The caller holds audit_seal's row lock.
CREATE FUNCTION audit_seal_through(through bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    head audit_seal;
    r audit_events;
    prev text;
    linked bigint := 0;
BEGIN
    SELECT * INTO STRICT head FROM audit_seal;
    prev := head.last_hash;
    FOR r IN SELECT * FROM audit_events WHERE id > head.sealed_through AND id <= through ORDER BY id LOOP
        r.prev_hash := prev;
        prev := audit_row_digest(r, prev);
        UPDATE audit_events SET prev_hash = r.prev_hash, row_hash = prev WHERE id = r.id;
        linked := linked + 1;
    END LOOP;
    UPDATE audit_seal SET sealed_through = through, last_hash = prev, sealed_at = clock_timestamp();
    RETURN linked;
END $$;
