"""What counts as a damaged state DB: only what SQLite calls damage, never a busy or sound one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lifeboat.state.damage import damage_of, set_aside_if_damaged
from lifeboat.state.history import RunHistory
from lifeboat.state.records import RunKind


def test_a_sound_db_busy_with_a_writer_is_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with RunHistory.open(path) as history:
        history.start_run(RunKind.BACKUP, "etcd", origin="cli")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=DELETE")
    writer.execute("BEGIN EXCLUSIVE")
    try:
        assert damage_of(path, busy_timeout=0.1) is None
        assert set_aside_if_damaged(path, busy_timeout=0.1) is None
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert list(tmp_path.glob("state.db.damaged-*")) == []


def test_a_damaged_db_is_moved_aside_with_its_wal_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database at all" * 100)
    Path(f"{path}-wal").write_bytes(b"old wal")
    with RunHistory.open(path) as history:
        damage = history.found_damaged
        assert damage is not None and damage.reason == "file is not a database"
        assert damage.moved_to.read_bytes() == b"not a database at all" * 100
        assert Path(f"{damage.moved_to}-wal").read_bytes() == b"old wal"
        assert history.damage() == damage
    with RunHistory.open(path) as history:  # told once; still shown
        assert history.found_damaged is None and history.damage() == damage


def test_an_empty_file_is_new_until_lifeboat_has_run_jobs_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch()
    assert damage_of(path, busy_timeout=0.1) is None
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "source-etcd.lock").touch()
    assert damage_of(path, busy_timeout=0.1) == "it is empty although Lifeboat has run jobs with it"
