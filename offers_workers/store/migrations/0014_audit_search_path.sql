-- The audit trail's trigger functions name tables (audit_events, audit_seal) without a schema, and a
-- function resolves such a name through the caller's search_path, where a session's temporary
-- tables come first: a login that may insert audit rows could create a temporary audit_events and
-- have the chain trigger draw the real row's id from its sequence. Each is pinned to the schema it
-- lives in, pg_temp searched last. (audit_row_digest names no table and stays inlinable.)
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_chain() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION audit_append_only() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION audit_seal_through(bigint) SET search_path = %I, pg_temp', current_schema());
END $$;
