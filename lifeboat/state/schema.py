"""The state DB's schema (``PRAGMA user_version`` = 3; version 1 had no ``janitor`` runs, version 2
no ``restore-point`` runs; both are migrated when opened):

``runs``        one row per run: ``kind`` (backup | prune | check | drill | janitor | restore-point),
                ``name`` (the source, the drill, the restore point, ``repository`` for prune and check,
                ``scratch`` for the janitor),
                ``started``/``finished`` (ISO 8601 UTC), ``status`` (running | ok | failed |
                suspicious | interrupted, and for drills PASS | FAIL | ERROR), ``figures`` (JSON),
                ``snapshot_id``, ``error`` (secrets masked by the caller), ``origin`` (service |
                cli), ``host``, ``pid`` and ``owner``.
``incidents``   one row per incident (``key`` like ``backup-failure:k8s-etcd``): opened by the first
                failure, counted by repeats, ``closed`` by the next success; ``notified`` once a
                notifier took the news, so repeats stay quiet.
``inventory``   per source, the snapshot and suspicious-snapshot counts of the last repository
                listing, and the repository id it came from.
``meta``        key/value (the health probe writes here).
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL CHECK (kind IN ('backup', 'prune', 'check', 'drill', 'janitor', 'restore-point')),
    name        TEXT NOT NULL,
    started     TEXT NOT NULL,
    finished    TEXT,
    status      TEXT NOT NULL,
    figures     TEXT NOT NULL DEFAULT '{}',
    snapshot_id TEXT,
    error       TEXT,
    origin      TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    owner       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_name ON runs (kind, name, id);
CREATE INDEX IF NOT EXISTS runs_running ON runs (status) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS incidents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL,
    event       TEXT NOT NULL,
    name        TEXT NOT NULL,
    opened      TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    closed      TEXT,
    occurrences INTEGER NOT NULL DEFAULT 1,
    notified    INTEGER NOT NULL DEFAULT 0,
    first_run   INTEGER,
    last_run    INTEGER,
    closed_by   INTEGER,
    message     TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_open ON incidents (key) WHERE closed IS NULL;
CREATE TABLE IF NOT EXISTS inventory (
    source      TEXT PRIMARY KEY,
    snapshots   INTEGER NOT NULL,
    suspicious  INTEGER NOT NULL,
    repository  TEXT NOT NULL,
    listed      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def create_or_migrate(db: sqlite3.Connection) -> None:
    """Bring the database ``db`` to ``SCHEMA_VERSION``: create what is missing, migrate an older version.

    Run it inside one write transaction (two processes may open an old database at once). Raises
    sqlite3.DatabaseError for a database of a newer Lifeboat."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} is newer than this Lifeboat's ({SCHEMA_VERSION})")
    migrating = 0 < version < SCHEMA_VERSION  # each older version allows fewer run kinds
    if migrating:
        _runs_take_new_kinds(db)
    for statement in filter(str.strip, _SCHEMA.split(";")):
        db.execute(statement)
    if migrating:
        db.execute("INSERT INTO runs SELECT * FROM runs_old")
        db.execute("DROP TABLE runs_old")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _runs_take_new_kinds(db: sqlite3.Connection) -> None:
    """Version 1 or 2 -> 3, first half (version 1 lacks ``janitor``, version 2 ``restore-point`` in
    the CHECK of ``runs.kind``): SQLite cannot change a CHECK constraint in place, so the old
    ``runs`` table steps aside (``runs_old``, its indexes dropped so that the schema makes them anew);
    the schema then creates the new table, and ``create_or_migrate`` copies every row back, ids included (the
    incidents refer to them)."""
    db.execute("DROP INDEX IF EXISTS runs_by_name")
    db.execute("DROP INDEX IF EXISTS runs_running")
    db.execute("ALTER TABLE runs RENAME TO runs_old")
