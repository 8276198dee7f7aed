"""The two database roles: the schema's owner, which only `db migrate` logs in as, and the fleet's
runtime role (OFFERS_DATABASE_URL), which owns nothing.

The runtime role reads and writes the saga's tables, appends audit rows and reads them; the audit
trail's bookkeeping (sealing, the export and anchor books) it reaches only through the owner's
``SECURITY DEFINER`` functions (migration 0015). ``breaches`` is what `health` reports when the
fleet's login can do more than that.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from offers_workers.store.db import Connection, connect, one_row

#: The audit trail's tables: the runtime role may append to the first and read them all.
AUDIT_TABLES = ("audit_events", "audit_seal", "audit_exports", "audit_anchors", "audit_verifications")
#: Of those, the ones it may append to.
APPEND_ONLY = ("audit_events", "audit_verifications")
#: What the runtime role may call: the one way to change the audit trail's bookkeeping.
AUDIT_FUNCTIONS = (
    "audit_seal_step()",
    "audit_export_start(timestamptz, bigint, bigint, text, text, text)",
    "audit_export_failed(bigint, text)",
    "audit_export_done(bigint, bigint, text)",
    "audit_anchor_next(bigint)",
    "audit_anchor_written(bigint, text)",
)
#: The sandbox's runtime role, which `make demo` and `make dev` create on their own server.
SANDBOX_RUNTIME_ROLE = "offers_runtime"


class RoleError(Exception):
    """The runtime role cannot be given its grants (it is the owner, a superuser, or absent)."""


def login_role(url: str) -> str:
    """The role a URL logs in as."""
    user = conninfo_to_dict(url).get("user")
    if user:
        return str(user)
    with connect(url) as conn:
        row = conn.execute("SELECT current_user").fetchone()
        return str(row[0]) if row else ""


def same_database(a: str, b: str) -> bool:
    """Whether two URLs name the same database (host, port and name; the login may differ).

    Unset parts compare equal to anything: libpq fills them from the environment alike.
    """
    one, other = conninfo_to_dict(a), conninfo_to_dict(b)
    return all(
        one.get(part) is None or other.get(part) is None or str(one[part]) == str(other[part])
        for part in ("host", "port", "dbname")
    )


def grant_runtime_role(owner_url: str, role: str) -> None:
    """As the owner: give ``role`` what the fleet needs in this database's schema, and no more.

    Safe to run after every migration: grants are idempotent, and tables added since get theirs.
    """
    name = sql.Identifier(role)
    with connect(owner_url) as conn, conn.transaction():
        found = conn.execute(
            "SELECT r.rolsuper, pg_has_role(r.oid, c.relowner, 'MEMBER') AS owner, current_schema() AS schema"
            " FROM pg_roles r, pg_class c WHERE r.rolname = %s AND c.oid = 'audit_events'::regclass",
            (role,),
        ).fetchone()
        if found is None:
            raise RoleError(f"role {role} does not exist: create it (LOGIN, no other attribute) before db migrate")
        superuser, owner, schema = found
        if superuser or owner:
            raise RoleError(
                f"role {role} is {'a superuser' if superuser else 'the owner of the schema (or a member of it)'}:"
                " the fleet must log in as a role of its own (OFFERS_DATABASE_URL), the owner only for db migrate"
                " (OFFERS_DATABASE_OWNER_URL)"
            )
        s = sql.Identifier(schema)
        audit = sql.SQL(", ").join(sql.Identifier(t) for t in AUDIT_TABLES)

        def run(statement: str, **parts: sql.Composable) -> None:
            conn.execute(sql.SQL(statement).format(role=name, schema=s, audit=audit, **parts))

        # Nobody but the owner creates objects here: no shadowing table, function or operator.
        run("REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC")
        run("GRANT USAGE ON SCHEMA {schema} TO {role}")
        run("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}")
        run("REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA {schema} FROM {role}")
        run("REVOKE INSERT, UPDATE, DELETE ON {audit}, schema_migrations FROM {role}")
        run("GRANT INSERT ON {append} TO {role}", append=sql.SQL(", ").join(map(sql.Identifier, APPEND_ONLY)))
        run("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}")
        run("REVOKE UPDATE ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}")  # no setval
        for function in AUDIT_FUNCTIONS:
            run(f"GRANT EXECUTE ON FUNCTION {function} TO {{role}}")


@dataclass(frozen=True)
class Breach:
    """One thing the fleet's login can do to the audit trail that it must not."""

    what: str


def breaches(conn: Connection) -> list[Breach]:
    """What the current login could do to the audit trail beyond appending and reading."""
    with conn.cursor(row_factory=dict_row) as cur:
        me = one_row(cur.execute("SELECT current_user AS role, rolsuper FROM pg_roles WHERE rolname = current_user"))
        if me["rolsuper"]:
            return [Breach(f"{me['role']} is a superuser")]
        tables = cur.execute(
            "SELECT c.relname, pg_has_role(current_user, c.relowner, 'MEMBER') AS owns,"
            " has_table_privilege(c.oid, 'UPDATE') OR has_any_column_privilege(c.oid, 'UPDATE') AS may_update,"
            " has_table_privilege(c.oid, 'DELETE') AS may_delete, has_table_privilege(c.oid, 'TRUNCATE') AS may_truncate,"
            " c.relname <> ALL(%s) AND has_table_privilege(c.oid, 'INSERT') AS may_insert"
            " FROM pg_class c WHERE c.oid = ANY(%s::regclass[]) ORDER BY c.relname",
            (list(APPEND_ONLY), list(AUDIT_TABLES)),
        ).fetchall()
    found: list[Breach] = []
    for t in tables:
        if t["owns"]:
            found.append(Breach(f"{me['role']} owns {t['relname']}"))
            continue
        verbs = [verb for verb in ("update", "delete", "truncate", "insert") if t[f"may_{verb}"]]
        if verbs:
            found.append(Breach(f"{me['role']} may {', '.join(v.upper() for v in verbs)} {t['relname']}"))
    return found


def provision_runtime_role(owner_url: str, role: str) -> str:
    """Sandbox only: create ``role`` (LOGIN, nothing else) on the owner's server if it is missing,
    and return the URL the fleet logs in with: the owner's, as ``role`` and without a password (the
    sandbox's servers trust local logins)."""
    # Made by an earlier run, or by another process just now: either way it is there.
    with connect(owner_url, autocommit=True) as conn, suppress(psycopg.errors.DuplicateObject):
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    return as_role(owner_url, role)


def as_role(url: str, role: str) -> str:
    """``url`` logging in as ``role``, without a password."""
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}@{host}"))
    params = conninfo_to_dict(url)
    params.pop("password", None)
    params["user"] = role
    return make_conninfo("", **params)


def drop_role(server_url: str, role: str) -> None:
    """Drop a role a test run made, once the databases it had grants in are gone."""
    with connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
