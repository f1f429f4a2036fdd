"""The run history: SQLite in WAL mode, runs of dead processes marked interrupted, incidents told once,
a database of an older Lifeboat migrated."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeboat.state import StateError
from lifeboat.state.history import RunHistory
from lifeboat.state.records import RunKind, RunStatus


@pytest.fixture
def history(tmp_path: Path) -> Iterator[RunHistory]:
    with RunHistory.open(tmp_path / "state" / "state.db") as opened:
        yield opened


def in_another_process(state: Path, body: str, *, wait: bool = True) -> subprocess.Popen[str]:
    """Run ``body`` in a fresh Python that has ``history`` (the state DB) open."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from lifeboat.state.history import RunHistory
        from lifeboat.state.records import RunKind, RunStatus
        history = RunHistory.open(Path({str(state)!r}))
        """
    ) + textwrap.dedent(body)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    if wait:
        process.wait(timeout=30)
    return process


def test_the_database_is_created_with_its_directory_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "lifeboat" / "state.db"
    with RunHistory.open(path):
        pass
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "incidents", "inventory"} <= tables


def test_readers_are_not_blocked_by_a_writer_in_another_connection(history: RunHistory) -> None:
    run_id = history.start_run(RunKind.BACKUP, "k8s-etcd", origin="cli")
    writer = sqlite3.connect(history.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE runs SET status = 'ok' WHERE id = ?", (run_id,))
    try:
        started = time.monotonic()
        assert history.run(run_id).status is RunStatus.RUNNING  # the committed state, at once
        assert time.monotonic() - started < 1
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_run_is_recorded_from_start_to_end_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with RunHistory.open(path) as history:
        run_id = history.start_run(RunKind.BACKUP, "k8s-etcd", origin="service")
        history.finish_run(
            run_id, RunStatus.SUSPICIOUS, figures={"bytes_read": 10, "anomalies": ["keys shrank"]}, snapshot_id="k8s-etcd-x"
        )
        failed = history.start_run(RunKind.BACKUP, "k8s-etcd", origin="cli")
        history.finish_run(failed, RunStatus.FAILED, error="etcd at http://127.0.0.1:1 refused the connection")
    with RunHistory.open(path) as history:
        newest, older = history.runs(RunKind.BACKUP, "k8s-etcd")
        assert (newest.status, newest.error, newest.origin) == (
            RunStatus.FAILED,
            "etcd at http://127.0.0.1:1 refused the connection",
            "cli",
        )
        assert older.figures == {"bytes_read": 10, "anomalies": ["keys shrank"]} and older.snapshot_id == "k8s-etcd-x"
        assert older.seconds is not None and older.seconds >= 0
        completed = history.last_run(RunKind.BACKUP, "k8s-etcd", [RunStatus.OK, RunStatus.SUSPICIOUS])
        assert completed is not None and completed.id == older.id
        assert history.last_run(RunKind.BACKUP, "k8s-etcd", [RunStatus.OK]) is None


def test_a_run_whose_process_died_is_marked_interrupted_when_the_database_is_next_opened(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    child = in_another_process(
        path,
        """
        run_id = history.start_run(RunKind.BACKUP, "k8s-etcd", origin="service")
        print(run_id, os.getpid(), flush=True)
        os._exit(0)  # no close(), no finish_run(): as after SIGKILL
        """,
    )
    run_id, pid = map(int, child.stdout.read().split()) if child.stdout else (0, 0)
    with RunHistory.open(path) as history:
        run = history.run(run_id)
    assert run.status is RunStatus.INTERRUPTED and run.pid == pid and run.finished is not None
    assert f"pid {pid}" in (run.error or "") and "ended first" in (run.error or "")


def test_a_run_of_a_live_process_is_left_running(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    child = in_another_process(
        path,
        """
        run_id = history.start_run(RunKind.DRILL, "nightly", origin="cli")
        print(run_id, flush=True)
        time.sleep(60)
        """,
        wait=False,
    )
    try:
        assert child.stdout is not None
        run_id = int(child.stdout.readline())
        with RunHistory.open(path) as history:
            assert history.run(run_id).status is RunStatus.RUNNING
            assert history.reap_interrupted() == []
    finally:
        child.kill()
        child.wait()
    with RunHistory.open(path) as history:
        assert history.run(run_id).status is RunStatus.INTERRUPTED


def test_a_stopping_service_marks_its_own_unfinished_runs_interrupted(history: RunHistory) -> None:
    mine = history.start_run(RunKind.PRUNE, "repository", origin="service")
    done = history.start_run(RunKind.CHECK, "repository", origin="service")
    history.finish_run(done, RunStatus.OK)
    assert history.interrupt_own_runs("interrupted: the service stopped") == [mine]
    assert history.run(mine).status is RunStatus.INTERRUPTED and history.run(done).status is RunStatus.OK


def test_an_incident_is_told_once_and_closed_by_the_next_success(history: RunHistory) -> None:
    first = history.open_incident("backup-failure", "k8s-etcd", run_id=1, message="refused")
    assert not first.notified and first.occurrences == 1
    history.mark_notified(first.id)
    repeat = history.open_incident("backup-failure", "k8s-etcd", run_id=2, message="refused again")
    assert repeat.id == first.id and repeat.notified and repeat.occurrences == 2
    other = history.open_incident("backup-failure", "models", run_id=3, message="timeout")
    assert other.id != first.id and not other.notified
    assert [incident.name for incident in history.open_incidents()] == ["k8s-etcd", "models"]

    closed = history.close_incident("backup-failure", "k8s-etcd", run_id=4)
    assert closed is not None and closed.id == first.id and closed.occurrences == 2 and closed.closed is not None
    assert history.close_incident("backup-failure", "k8s-etcd", run_id=5) is None  # nothing open any more
    again = history.open_incident("backup-failure", "k8s-etcd", run_id=6, message="refused")
    assert again.id != first.id and not again.notified and again.occurrences == 1


def test_an_incident_whose_news_was_never_delivered_is_told_at_the_next_repeat(history: RunHistory) -> None:
    history.open_incident("check-failure", "repository", run_id=1, message="missing chunk")
    repeat = history.open_incident("check-failure", "repository", run_id=2, message="missing chunk")
    assert not repeat.notified  # no mark_notified: every delivery had failed


def test_the_inventory_keeps_the_last_listing_per_source(history: RunHistory) -> None:
    history.set_inventory({"k8s-etcd": (4, 1), "models": (2, 0)}, repository="repo-a")
    history.set_inventory({"k8s-etcd": (5, 1)}, repository="repo-a")
    inventory = history.inventory()
    assert (inventory["k8s-etcd"].snapshots, inventory["k8s-etcd"].suspicious) == (5, 1)
    assert inventory["models"].snapshots == 2 and inventory["models"].repository == "repo-a"


VERSION_1_RUNS = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('backup', 'prune', 'check', 'drill')),
    name TEXT NOT NULL, started TEXT NOT NULL, finished TEXT, status TEXT NOT NULL,
    figures TEXT NOT NULL DEFAULT '{}', snapshot_id TEXT, error TEXT, origin TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, owner TEXT NOT NULL
);
CREATE INDEX runs_by_name ON runs (kind, name, id);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
INSERT INTO runs VALUES (41, 'backup', 'k8s-etcd', '2026-11-01T00:00:00+00:00', '2026-11-01T00:01:00+00:00',
    'ok', '{"keys": 12}', 'k8s-etcd-20261101T000000Z-ab12', NULL, 'service', 'h', 1, 'gone');
PRAGMA user_version = 1;
"""


def test_a_version_1_database_is_migrated_keeping_its_runs(tmp_path: Path) -> None:
    """Lifeboat 0.1's state DB (no janitor runs allowed) opens: every run kept with its id, janitor
    runs recorded after, new runs numbered after the old ones."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as old:
        old.executescript(VERSION_1_RUNS)
    old.close()
    with pytest.raises(sqlite3.IntegrityError):  # what version 1 refused
        with sqlite3.connect(path) as old:
            old.execute(
                "INSERT INTO runs (kind, name, started, status, origin, host, pid, owner) "
                "VALUES ('janitor', 'scratch', 'x', 'ok', 'cli', 'h', 1, 'o')"
            )
    with RunHistory.open(path) as history:
        kept = history.last_run(RunKind.BACKUP, "k8s-etcd")
        assert kept is not None and kept.id == 41 and kept.figures == {"keys": 12}
        swept = history.start_run(RunKind.JANITOR, "scratch", origin="cli")
        history.finish_run(swept, RunStatus.OK, figures={"removed": 3})
        assert swept > 41
        assert history.last_run(RunKind.JANITOR, "scratch").figures == {"removed": 3}  # type: ignore[union-attr]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'")}
        assert {"runs_by_name", "runs_running"} <= indexes
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'runs_old'").fetchone()[0] == 0
    db.close()


def test_a_version_2_database_is_migrated_and_then_records_restore_point_runs(tmp_path: Path) -> None:
    """Lifeboat's state DB before restore points were scheduled (no ``restore-point`` runs allowed)
    opens with every run kept, and then records the run of a restore point."""
    path = tmp_path / "state.db"
    version_2 = VERSION_1_RUNS.replace("'check', 'drill')", "'check', 'drill', 'janitor')").replace(
        "user_version = 1", "user_version = 2"
    )
    with sqlite3.connect(path) as old:
        old.executescript(version_2)
    old.close()
    with RunHistory.open(path) as history:
        kept = history.last_run(RunKind.BACKUP, "k8s-etcd")
        assert kept is not None and kept.id == 41
        run = history.start_run(RunKind.RESTORE_POINT, "platform", origin="service")
        history.finish_run(run, RunStatus.OK, figures={"status": "complete"})
        assert history.last_run(RunKind.RESTORE_POINT, "platform").figures == {"status": "complete"}  # type: ignore[union-attr]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    db.close()


def test_a_database_of_a_newer_lifeboat_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with RunHistory.open(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 9")
    db.close()
    with pytest.raises(StateError, match="schema version 9 is newer"):
        RunHistory.open(path)
