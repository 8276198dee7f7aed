-- A tamper-evident audit trail. Each row stores the SHA-256 of its content chained to the previous
-- row's hash (row_hash = sha256(content ‖ prev_hash)), so an edit, a deletion or a reordering breaks
-- the chain at that row; and the database itself refuses UPDATE, DELETE and TRUNCATE.
ALTER TABLE audit_events ADD COLUMN prev_hash text, ADD COLUMN row_hash text;

-- The hashed content: fields joined by the unit separator, NULL as \N, the time in epoch
-- microseconds and data as jsonb's canonical text. offers_workers/audit.py computes the same.
CREATE FUNCTION audit_row_digest(r audit_events, prev text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(concat_ws(chr(31),
        r.id::text,
        ((extract(epoch FROM r.at) * 1000000)::bigint)::text,
        coalesce(r.offer_id, '\N'),
        r.kind,
        coalesce(r.from_state, '\N'),
        coalesce(r.to_state, '\N'),
        coalesce(r.reason, '\N'),
        r.actor,
        r.data::text,
        prev), 'UTF8')), 'hex')
$$;

-- Chain rows already there, in id order.
DO $$
DECLARE
    r audit_events;
    prev text := repeat('0', 64);
BEGIN
    FOR r IN SELECT * FROM audit_events ORDER BY id LOOP
        UPDATE audit_events SET prev_hash = prev, row_hash = audit_row_digest(r, prev) WHERE id = r.id;
        prev := audit_row_digest(r, prev);
    END LOOP;
END $$;

-- New rows: one writer at a time links to the last row. The id is drawn under the lock, so chain
-- order is id order; the lock is held until the inserting transaction ends.
CREATE FUNCTION audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_hash text;
BEGIN
    PERFORM pg_advisory_xact_lock(7022385912711939413);  -- "audit chain"
    NEW.id := nextval(pg_get_serial_sequence('audit_events', 'id'));
    SELECT row_hash INTO last_hash FROM audit_events ORDER BY id DESC LIMIT 1;
    NEW.prev_hash := coalesce(last_hash, repeat('0', 64));
    NEW.row_hash := audit_row_digest(NEW, NEW.prev_hash);
    RETURN NEW;
END $$;
CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_chain();

CREATE FUNCTION audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

ALTER TABLE audit_events ALTER COLUMN prev_hash SET NOT NULL, ALTER COLUMN row_hash SET NOT NULL;
CREATE INDEX audit_events_at_idx ON audit_events (at);

-- One row per export job: the window (by row id), the object and manifest keys, the counts and
-- checksum, and how it went. A window is exported once; a failed one is picked up by the next run.
CREATE TABLE audit_exports (
    id             bigserial PRIMARY KEY,
    until          timestamptz NOT NULL,
    first_row_id   bigint      NOT NULL,
    last_row_id    bigint      NOT NULL,
    row_count      bigint,
    object_key     text        NOT NULL UNIQUE,
    manifest_key   text        NOT NULL,
    sha256         text,
    storage_class  text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    error          text,
    attempts       integer     NOT NULL DEFAULT 1,
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at    timestamptz
);
