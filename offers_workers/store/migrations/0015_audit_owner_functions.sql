-- The audit trail against its own runtime credentials.
--
-- The fleet runs as a role that owns nothing (OFFERS_DATABASE_URL; `db migrate` runs as the owner,
-- OFFERS_DATABASE_OWNER_URL, and grants it what follows). That role may append rows and read; the
-- sealer's state (audit_seal), the hash columns, the export book (audit_exports) and the anchor book
-- (audit_anchors) change only through the SECURITY DEFINER functions below, owned by the owner,
-- each checking what it is asked against the chain itself. A runtime login that calls them out of
-- turn can at most record work it did not do; `audit verify` finds that against S3.

-- A row is dated by the database when its id is drawn: a writer cannot backdate (or postdate) its
-- row, and every row with an id above one the sealer read is dated after that read (the anchors'
-- bounds, saga/audit.py).
CREATE OR REPLACE FUNCTION audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_current_xact_id();  -- the transaction id first: see migration 0010
    NEW.id := nextval(pg_get_serial_sequence('audit_events', 'id'));
    IF NEW.at IS DISTINCT FROM NULL AND abs(extract(epoch FROM NEW.at - clock_timestamp())) > 5 THEN
        RAISE EXCEPTION 'audit rows are dated by the database: at = % refused', NEW.at
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    NEW.at := clock_timestamp();
    NEW.prev_hash := NULL;  -- only the sealer links rows
    NEW.row_hash := NULL;
    RETURN NEW;
END $$;

-- When the sealer read the id it sealed through, and the id it will seal through next: a row with a
-- higher id was drawn, and so dated, after that moment. NULL: before this migration.
ALTER TABLE audit_seal ADD COLUMN sealed_read_at timestamptz, ADD COLUMN pending_read_at timestamptz;

-- One sealing step (what saga/audit.py used to run as three statements): link the pending window if
-- its writers have all finished, then take the next. No row: another sealer holds the row lock.
CREATE FUNCTION audit_seal_step(OUT linked bigint, OUT sealed_through bigint, OUT waiting boolean)
RETURNS SETOF record
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    head record;
    read_at timestamptz;
    handed_out bigint;
BEGIN
    SELECT s.sealed_through AS through, s.pending_through, s.pending_read_at,
           pg_snapshot_xmin(pg_current_snapshot()) >= s.pending_xmax AS writers_done
      INTO head FROM audit_seal s FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    linked := 0;
    sealed_through := head.through;
    IF head.pending_through > head.through THEN
        IF NOT head.writers_done THEN
            waiting := true;
            RETURN NEXT;
            RETURN;
        END IF;
        linked := audit_seal_through(head.pending_through);
        UPDATE audit_seal SET sealed_read_at = head.pending_read_at;
        sealed_through := head.pending_through;
    END IF;
    -- The clock before the sequence, and the snapshot of the UPDATE after both (each statement of a
    -- volatile function takes its own): every writer of an id up to handed_out is below its xmax.
    read_at := clock_timestamp();
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO handed_out FROM audit_events_id_seq;
    IF handed_out > sealed_through THEN
        UPDATE audit_seal SET pending_through = handed_out,
            pending_xmax = pg_snapshot_xmax(pg_current_snapshot()), pending_read_at = read_at;
    END IF;
    waiting := handed_out > sealed_through;
    RETURN NEXT;
END $$;

-- The export book. A window starts after the last finished one and ends at a sealed row.
CREATE FUNCTION audit_export_start(
    p_until timestamptz, p_first_row_id bigint, p_last_row_id bigint, p_object_key text, p_manifest_key text,
    p_storage_class text
) RETURNS SETOF audit_exports
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    exported bigint;
    sealed bigint;
BEGIN
    SELECT coalesce(max(last_row_id), 0) INTO exported FROM audit_exports WHERE status = 'done';
    SELECT s.sealed_through INTO sealed FROM audit_seal s;
    IF NOT EXISTS (SELECT 1 FROM audit_exports WHERE object_key = p_object_key AND status = 'done')
       AND (p_first_row_id <= exported OR p_last_row_id < p_first_row_id OR p_last_row_id > sealed) THEN
        RAISE EXCEPTION 'audit export window % to % refused: rows up to % are exported, % sealed',
            p_first_row_id, p_last_row_id, exported, sealed USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN QUERY
    INSERT INTO audit_exports (until, first_row_id, last_row_id, object_key, manifest_key, storage_class, status)
    VALUES (p_until, p_first_row_id, p_last_row_id, p_object_key, p_manifest_key, p_storage_class, 'running')
    ON CONFLICT (object_key) DO UPDATE
        SET status = CASE WHEN audit_exports.status = 'done' THEN 'done' ELSE 'running' END,
            attempts = audit_exports.attempts + CASE WHEN audit_exports.status = 'done' THEN 0 ELSE 1 END,
            error = NULL
    RETURNING *;
END $$;

CREATE FUNCTION audit_export_failed(p_id bigint, p_error text) RETURNS SETOF audit_exports
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    RETURN QUERY
    UPDATE audit_exports SET status = 'failed', error = p_error, finished_at = clock_timestamp()
    WHERE id = p_id AND status <> 'done' RETURNING *;
END $$;

-- Done: the row count is the window's own, not the caller's word.
CREATE FUNCTION audit_export_done(p_id bigint, p_row_count bigint, p_sha256 text) RETURNS SETOF audit_exports
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    job audit_exports;
    held bigint;
BEGIN
    SELECT * INTO STRICT job FROM audit_exports WHERE id = p_id FOR UPDATE;
    SELECT count(*) INTO held FROM audit_events WHERE id BETWEEN job.first_row_id AND job.last_row_id;
    IF held <> p_row_count OR p_sha256 !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'audit export % refused: % rows said, % held in its window', p_id, p_row_count, held
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN QUERY
    UPDATE audit_exports SET status = 'done', row_count = held, sha256 = p_sha256,
        finished_at = clock_timestamp(), error = NULL
    WHERE id = p_id RETURNING *;
END $$;

-- The anchor book: the chain's sealed head, written to S3 under Object Lock once a minute
-- (saga/audit.py: anchor). Anchors follow one another without a gap or an overlap; each is cut here,
-- from the sealer's own state, and marked written once its object is in S3.
CREATE TABLE audit_anchors (
    id           bigserial   PRIMARY KEY,
    first_id     bigint      NOT NULL UNIQUE,
    last_id      bigint      NOT NULL,
    prev_hash    text        NOT NULL,
    last_hash    text        NOT NULL,
    rows         bigint      NOT NULL,
    -- Every row of the anchor is dated at or after dated_from (NULL: no bound, the rows from before
    -- migration 0015) and at or before sealed_at; read_at is the next anchor's dated_from.
    dated_from   timestamptz,
    sealed_at    timestamptz NOT NULL,
    read_at      timestamptz,
    object_key   text        NOT NULL UNIQUE,
    version_id   text,
    cut_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    written_at   timestamptz
);

-- The anchor to write next: the one cut but not written yet (a crash between the two), else a new
-- one from the row after the last anchor to the sealed head (at most p_max_rows rows). No row:
-- nothing sealed since the last anchor.
CREATE FUNCTION audit_anchor_next(p_max_rows bigint) RETURNS SETOF audit_anchors
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    prev audit_anchors;
    head audit_seal;
    v_first bigint;
    v_last bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7022385912711939414);  -- one cutter at a time ("audit chain" + 1)
    SELECT * INTO prev FROM audit_anchors ORDER BY id DESC LIMIT 1;
    IF FOUND AND prev.written_at IS NULL THEN
        RETURN NEXT prev;
        RETURN;
    END IF;
    SELECT * INTO STRICT head FROM audit_seal;
    v_first := coalesce(prev.last_id, 0) + 1;
    IF head.sealed_through < v_first THEN
        RETURN;
    END IF;
    v_last := least(head.sealed_through, v_first + p_max_rows - 1);
    RETURN QUERY
    INSERT INTO audit_anchors (first_id, last_id, prev_hash, last_hash, rows, dated_from, sealed_at, read_at, object_key)
    SELECT v_first, v_last,
           coalesce(prev.last_hash, repeat('0', 64)),
           coalesce((SELECT e.row_hash FROM audit_events e WHERE e.id <= v_last ORDER BY e.id DESC LIMIT 1),
                    repeat('0', 64)),
           (SELECT count(*) FROM audit_events e WHERE e.id BETWEEN v_first AND v_last),
           prev.read_at,
           head.sealed_at,
           -- Cut short of the head, the next rows are bounded as this anchor's are.
           CASE WHEN v_last = head.sealed_through THEN head.sealed_read_at ELSE prev.read_at END,
           format('audit-anchors/%s.json', lpad(v_first::text, 16, '0'))
    RETURNING *;
END $$;

CREATE FUNCTION audit_anchor_written(p_id bigint, p_version_id text) RETURNS SETOF audit_anchors
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    RETURN QUERY
    UPDATE audit_anchors SET version_id = p_version_id, written_at = clock_timestamp()
    WHERE id = p_id AND written_at IS NULL RETURNING *;
END $$;

-- What each run of `audit verify` found (the alert reads it). Append-only like the trail: a run that
-- found tampering stays on record, whatever a later row says.
CREATE TABLE audit_verifications (
    id             bigserial   PRIMARY KEY,
    finished_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    findings       integer     NOT NULL CHECK (findings >= 0),
    first_finding  text,
    rows_checked   bigint      NOT NULL,
    anchors        integer     NOT NULL,
    exports        integer     NOT NULL
);
CREATE FUNCTION audit_verifications_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_verifications is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_verifications_no_change BEFORE UPDATE OR DELETE ON audit_verifications
    FOR EACH ROW EXECUTE FUNCTION audit_verifications_append_only();
CREATE TRIGGER audit_verifications_no_truncate BEFORE TRUNCATE ON audit_verifications
    FOR EACH STATEMENT EXECUTE FUNCTION audit_verifications_append_only();

-- Pinned: every function here names tables, and a definer's must never find a caller's.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'audit_chain()', 'audit_seal_step()',
        'audit_export_start(timestamptz, bigint, bigint, text, text, text)',
        'audit_export_failed(bigint, text)', 'audit_export_done(bigint, bigint, text)',
        'audit_anchor_next(bigint)', 'audit_anchor_written(bigint, text)'
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
        IF f <> 'audit_chain()' THEN  -- a trigger's function is not called by name
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        END IF;
    END LOOP;
    -- Linking rows is the sealer's alone, through audit_seal_step.
    REVOKE EXECUTE ON FUNCTION audit_seal_through(bigint) FROM PUBLIC;
END $$;
