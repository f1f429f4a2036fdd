"""The run history (DESIGN section 8): every backup, prune, check and drill run in SQLite.

The database lives at the policy's ``state`` path, in WAL mode so that ``lifeboat status`` and a
CLI run read and write while ``lifeboat serve`` does. Its tables are described, and migrated, in
``lifeboat.state.schema``; what a row holds is in ``lifeboat.state.records``.

A run left ``running`` by a process that died (SIGKILL, OOM, power loss) becomes ``interrupted``
the next time any Lifeboat process opens the database. Liveness is not guessed from a pid (a pid
is reused, and is 1 after every container restart): every process that records runs holds an
exclusive ``flock`` on ``locks/owner-<token>.lock`` for as long as it lives, and the kernel drops
it when the process dies, whatever killed it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from drills.model import Status
from lifeboat.state import StateError
from lifeboat.state.damage import META_KEY, StateDamage, set_aside_if_damaged
from lifeboat.state.records import (
    Incident,
    Inventory,
    RunKind,
    RunRecord,
    RunStatus,
    parse_status,
    parse_timestamp,
    timestamp_text,
    utc_now,
)
from lifeboat.state.schema import create_or_migrate

log = structlog.get_logger("lifeboat.state")  # the logger name the logs have always shown

BUSY_TIMEOUT_SECONDS = 10.0  # another process writing: wait this long for the database lock


class RunHistory:
    """The state DB. Thread-safe (one connection behind a lock); several processes may share it.

    Open it with ``RunHistory.open(path)``; use it as a context manager or ``close()`` it.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self.lock_dir = path.parent / "locks"
        self._db = connection
        self._mutex = threading.RLock()
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._owner_fd: int | None = None
        self.found_damaged: StateDamage | None = None  # set when this open moved a damaged DB aside

    # ---- opening and closing ---------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> RunHistory:
        """Open (creating the directory, file and schema) the state DB at ``path``; mark runs whose
        process died as interrupted. A damaged DB is moved aside and a fresh one made (see
        ``lifeboat.state.damage``; ``found_damaged`` says so, and the caller tells the team). Raises
        StateError naming the path when it cannot."""
        hint = "set `state:` in the policy to a writable path"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "locks").mkdir(exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot open the state DB {path}: {exc}; {hint}") from exc
        damaged = set_aside_if_damaged(path, busy_timeout=BUSY_TIMEOUT_SECONDS)
        try:
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state DB {path}: {exc}; {hint}") from exc
        history = cls(path, connection)
        try:
            history._prepare()
            if damaged is not None:
                history._record_damage(damaged)
            history.reap_interrupted()
        except (sqlite3.Error, StateError) as exc:
            connection.close()
            raise StateError(f"cannot use the state DB {path}: {exc}") from exc
        if damaged is not None:
            history.found_damaged = damaged
            log.error(
                "state.damaged",
                path=str(path),
                moved_to=str(damaged.moved_to),
                reason=damaged.reason,
                message=damaged.sentence(),
            )
        return history

    def _record_damage(self, damage: StateDamage) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (META_KEY, damage.to_json()))

    def damage(self) -> StateDamage | None:
        """The damaged state DB this one replaced, if any (kept for ``lifeboat status``)."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (META_KEY,))
        if not rows:
            return None
        try:
            return StateDamage.from_json(rows[0]["value"])
        except (ValueError, KeyError, TypeError):
            return None

    def _prepare(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("state.no_wal", path=str(self.path), journal_mode=mode)
        self._db.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a crash loses no committed run
        with self._transaction() as db:  # read the version inside: two processes may open an old DB at once
            create_or_migrate(db)

    def close(self) -> None:
        """Close the database and give up this process's owner lock (and its file)."""
        with self._mutex:
            self._db.close()
            if self._owner_fd is not None:
                with contextlib.suppress(OSError):
                    (self.lock_dir / f"owner-{self.owner}.lock").unlink()
                os.close(self._owner_fd)
                self._owner_fd = None

    def __enter__(self) -> RunHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so read-then-write cannot race."""
        with self._mutex:
            try:
                if self._db.in_transaction:  # left open by a thread aborted between BEGIN and its try block
                    self._db.execute("ROLLBACK")
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StateError(f"the state DB {self.path} does not take writes: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StateError(f"the state DB {self.path} failed a write: {exc}") from exc
                raise

    def _query(self, sql: str, parameters: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._mutex:
            try:
                cursor = self._db.execute(sql, tuple(parameters))
                cursor.row_factory = sqlite3.Row
                return cursor.fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"cannot read the state DB {self.path}: {exc}") from exc

    # ---- runs ------------------------------------------------------------------------------------

    def start_run(self, kind: RunKind, name: str, *, origin: str, started: datetime | None = None) -> int:
        """Record a run as running; return its id."""
        self._hold_owner_lock()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, name, started, status, origin, host, pid, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind.value,
                    name,
                    timestamp_text(started or utc_now()),
                    RunStatus.RUNNING.value,
                    origin,
                    socket.gethostname(),
                    os.getpid(),
                    self.owner,
                ),
            )
            run_id = cursor.lastrowid
        assert run_id is not None
        return run_id

    def finish_run(
        self,
        run_id: int,
        status: RunStatus | Status,
        *,
        figures: Mapping[str, Any] | None = None,
        snapshot_id: str | None = None,
        error: str | None = None,
        finished: datetime | None = None,
    ) -> None:
        """Record how a run ended. ``error`` must already have its secrets masked."""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET status = ?, finished = ?, figures = ?, snapshot_id = ?, error = ? WHERE id = ?",
                (
                    status.value,
                    timestamp_text(finished or utc_now()),
                    json.dumps(dict(figures or {}), default=str, ensure_ascii=False),
                    snapshot_id,
                    error,
                    run_id,
                ),
            )

    def run(self, run_id: int) -> RunRecord:
        [row] = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run(row)

    def runs(self, kind: RunKind | None = None, name: str | None = None, *, limit: int = 50) -> list[RunRecord]:
        """The newest ``limit`` runs (of ``kind``, of ``name``), newest first."""
        where, parameters = _filters(kind=kind, name=name)
        rows = self._query(f"SELECT * FROM runs {where} ORDER BY id DESC LIMIT ?", [*parameters, limit])
        return [_run(row) for row in rows]

    def last_run(self, kind: RunKind, name: str, statuses: Iterable[RunStatus | Status] | None = None) -> RunRecord | None:
        """The newest run of ``kind`` and ``name`` (with one of ``statuses``), or None."""
        where, parameters = _filters(kind=kind, name=name, statuses=statuses)
        rows = self._query(f"SELECT * FROM runs {where} ORDER BY id DESC LIMIT 1", parameters)
        return _run(rows[0]) if rows else None

    def last_runs(self, kind: RunKind, statuses: Iterable[RunStatus | Status]) -> dict[str, RunRecord]:
        """Per name, the newest run of ``kind`` with one of ``statuses``."""
        where, parameters = _filters(kind=kind, statuses=statuses)
        rows = self._query(f"SELECT * FROM runs WHERE id IN (SELECT MAX(id) FROM runs {where} GROUP BY name)", parameters)
        return {row["name"]: _run(row) for row in rows}

    def run_counts(self) -> list[tuple[str, str, str, int]]:
        """``(kind, name, status, runs)`` of every finished run, counted (for the metrics' counters)."""
        rows = self._query("SELECT kind, name, status, COUNT(*) AS n FROM runs WHERE status != 'running' GROUP BY 1, 2, 3")
        return [(row["kind"], row["name"], row["status"], row["n"]) for row in rows]

    def run_durations(self) -> dict[str, list[float]]:
        """Per kind, the duration in seconds of every finished run (for the metrics' histogram)."""
        rows = self._query(
            "SELECT kind, (julianday(finished) - julianday(started)) * 86400.0 AS seconds FROM runs "
            "WHERE finished IS NOT NULL AND status != 'running'"
        )
        found: dict[str, list[float]] = {}
        for row in rows:
            found.setdefault(row["kind"], []).append(max(0.0, float(row["seconds"] or 0.0)))
        return found

    def reap_interrupted(self) -> list[int]:
        """Mark ``running`` runs whose process is gone as ``interrupted``; return their ids."""
        rows = self._query("SELECT id, owner, host, pid FROM runs WHERE status = 'running' AND owner != ?", (self.owner,))
        reaped = []
        for row in rows:
            if self._owner_alive(row["owner"]):
                continue
            error = f"interrupted: the process running it (host {row['host']}, pid {row['pid']}) ended first"
            with self._transaction() as db:
                cursor = db.execute(
                    "UPDATE runs SET status = 'interrupted', finished = ?, error = ? WHERE id = ? AND status = 'running'",
                    (timestamp_text(utc_now()), error, row["id"]),
                )
            if cursor.rowcount:
                reaped.append(row["id"])
        if reaped:
            log.warning("state.runs_interrupted", runs=reaped, reason="their process ended before they finished")
        return reaped

    def interrupt_own_runs(self, reason: str) -> list[int]:
        """Mark this process's runs still ``running`` as ``interrupted`` (the service, when it stops)."""
        with self._transaction() as db:
            ids = [row[0] for row in db.execute("SELECT id FROM runs WHERE status = 'running' AND owner = ?", (self.owner,))]
            db.execute(
                "UPDATE runs SET status = 'interrupted', finished = ?, error = ? WHERE status = 'running' AND owner = ?",
                (timestamp_text(utc_now()), reason, self.owner),
            )
        return ids

    # ---- incidents -------------------------------------------------------------------------------

    def open_incident(self, event: str, name: str, *, run_id: int | None, message: str) -> Incident:
        """Open the incident ``event:name``, or count one more occurrence of the open one; return it.

        The caller notifies when the returned incident is not ``notified`` yet, then calls
        ``mark_notified``: a repeat of an incident already told stays quiet."""
        key = f"{event}:{name}"
        now = timestamp_text(utc_now())
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE incidents SET occurrences = occurrences + 1, last_seen = ?, last_run = ?, message = ? "
                "WHERE key = ? AND closed IS NULL",
                (now, run_id, message, key),
            )
            if not updated.rowcount:
                db.execute(
                    "INSERT INTO incidents (key, event, name, opened, last_seen, first_run, last_run, message) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, event, name, now, now, run_id, run_id, message),
                )
        return self._open_incident(key)

    def mark_notified(self, incident_id: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE incidents SET notified = 1 WHERE id = ?", (incident_id,))

    def close_incident(self, event: str, name: str, *, run_id: int | None) -> Incident | None:
        """Close the open incident ``event:name``; return it as it was closed, or None if none was open."""
        key = f"{event}:{name}"
        with self._transaction() as db:
            found = db.execute("SELECT id FROM incidents WHERE key = ? AND closed IS NULL", (key,)).fetchone()
            if found is None:
                return None
            db.execute(
                "UPDATE incidents SET closed = ?, closed_by = ? WHERE id = ?", (timestamp_text(utc_now()), run_id, found[0])
            )
        [row] = self._query("SELECT * FROM incidents WHERE id = ?", (found[0],))
        return _incident(row)

    def open_incidents(self) -> list[Incident]:
        return [_incident(row) for row in self._query("SELECT * FROM incidents WHERE closed IS NULL ORDER BY id")]

    def _open_incident(self, key: str) -> Incident:
        [row] = self._query("SELECT * FROM incidents WHERE key = ? AND closed IS NULL", (key,))
        return _incident(row)

    # ---- inventory -------------------------------------------------------------------------------

    def set_inventory(self, counts: Mapping[str, tuple[int, int]], *, repository: str) -> None:
        """Store ``{source: (snapshots, suspicious)}`` from a listing of repository ``repository``."""
        now = timestamp_text(utc_now())
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO inventory (source, snapshots, suspicious, repository, listed) "
                "VALUES (?, ?, ?, ?, ?)",
                [(source, total, suspicious, repository, now) for source, (total, suspicious) in counts.items()],
            )

    def inventory(self) -> dict[str, Inventory]:
        rows = self._query("SELECT * FROM inventory")
        return {
            row["source"]: Inventory(
                row["source"],
                row["snapshots"],
                row["suspicious"],
                row["repository"],
                parse_timestamp(row["listed"]) or utc_now(),
            )
            for row in rows
        }

    # ---- health ----------------------------------------------------------------------------------

    def probe_write(self) -> None:
        """Write a heartbeat row; raises StateError when the database does not take writes."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?)", (timestamp_text(utc_now()),))

    # ---- liveness --------------------------------------------------------------------------------

    def _hold_owner_lock(self) -> None:
        """From this process's first run on, hold ``locks/owner-<token>.lock`` until ``close()``."""
        with self._mutex:
            if self._owner_fd is not None:
                return
            path = self.lock_dir / f"owner-{self.owner}.lock"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise StateError(f"cannot take the owner lock {path}: {exc}") from exc
            os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
            self._owner_fd = fd

    def _owner_alive(self, owner: str) -> bool:
        path = self.lock_dir / f"owner-{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False  # the file exists for as long as its owner has runs going
        except OSError:
            return True  # cannot tell: never call a live run interrupted
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return True
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()  # we held it: its owner is gone
        return False


def _filters(
    *, kind: RunKind | None = None, name: str | None = None, statuses: Iterable[RunStatus | Status] | None = None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    parameters: list[Any] = []
    if kind is not None:
        clauses.append("kind = ?")
        parameters.append(kind.value)
    if name is not None:
        clauses.append("name = ?")
        parameters.append(name)
    if statuses is not None:
        wanted = [status.value for status in statuses]
        clauses.append(f"status IN ({', '.join('?' * len(wanted))})")
        parameters += wanted
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", parameters


def _run(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        kind=RunKind(row["kind"]),
        name=row["name"],
        started=parse_timestamp(row["started"]) or utc_now(),
        finished=parse_timestamp(row["finished"]),
        status=parse_status(row["status"]),
        figures=json.loads(row["figures"] or "{}"),
        snapshot_id=row["snapshot_id"],
        error=row["error"],
        origin=row["origin"],
        host=row["host"],
        pid=row["pid"],
    )


def _incident(row: sqlite3.Row) -> Incident:
    return Incident(
        id=row["id"],
        key=row["key"],
        event=row["event"],
        name=row["name"],
        opened=parse_timestamp(row["opened"]) or utc_now(),
        last_seen=parse_timestamp(row["last_seen"]) or utc_now(),
        closed=parse_timestamp(row["closed"]),
        occurrences=row["occurrences"],
        notified=bool(row["notified"]),
        message=row["message"],
    )
