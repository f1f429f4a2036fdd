"""The repository under crashes and concurrent prunes, over both real stores."""

from __future__ import annotations

import io
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from repo_writer import payload

from backup.repository.locks import RepositoryLocked, list_locks
from backup.repository.maintenance import check, prune
from backup.repository.manifest import Entry
from backup.repository.repository import Repository
from backup.repository.s3store import S3Store
from backup.repository.store import LocalStore
from policies.model import Retention

pytestmark = pytest.mark.integration
WRITER = Path(__file__).with_name("repo_writer.py")
TRIALS = 20


@pytest.fixture(params=["local", "s3"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "local":
        yield {"kind": "local", "root": str(tmp_path / "repo")}
        return
    s3 = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    yield {
        "kind": "s3",
        "endpoint_url": s3.endpoint_url,
        "access_key_id": s3.access_key_id,
        "secret_access_key": s3.secret_access_key,
        "bucket": bucket,
        "prefix": "lifeboat/repo",
    }


def make_store(spec: dict[str, Any]) -> LocalStore | S3Store:
    from repo_writer import open_store

    return open_store(spec)  # type: ignore[return-value]


def restored(repository: Repository, snapshot_id: str) -> tuple[bytes, int]:
    header = repository.read_header(snapshot_id)
    [entry] = list(repository.entries(header))
    out = io.BytesIO()
    repository.restore_entry(entry, out, snapshot=snapshot_id)
    return out.getvalue(), entry.meta["seed"]


def test_a_writer_killed_at_random_moments_never_corrupts_the_repository(store_spec: dict[str, Any]) -> None:
    Repository.init(make_store(store_spec)).close()
    rng = random.Random(2026)
    committed = 0
    for trial in range(TRIALS):
        writer = subprocess.Popen(
            [sys.executable, str(WRITER), json.dumps(store_spec), str(trial * 1000)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert writer.stdout is not None
        while not writer.stdout.readline().startswith(b"ready"):  # imports: 0.3 s idle, seconds on a busy machine
            assert writer.poll() is None, "the writer ended by itself"
        time.sleep(rng.uniform(0.0, 0.6))  # kills land before, during and after commits
        writer.send_signal(signal.SIGKILL)
        lines = writer.communicate()[0].decode().splitlines()  # logs go there too
        committed += sum(line.strip().isdigit() for line in lines)

    with Repository.open(make_store(store_spec)) as repository:
        assert len(list_locks(repository.store)) <= 1  # the last writer's, if killed in a snapshot: the next removed each
        with repository.lock("shared", "check"):  # as `lifeboat check` does: it removes the dead writer's lock
            report = check(repository, read_data=1.0)
        assert report.ok, report.problems
        ids = repository.snapshot_ids()
        assert len(ids) >= committed > 0  # a kill after the commit but before the print still counts
        for snapshot_id in ids:
            data, seed = restored(repository, snapshot_id)
            assert data == payload(seed), snapshot_id

        # Killed writers left chunks no manifest names: they wait out the grace period, then go.
        now = datetime.now(UTC)
        keep_all = {"crash": Retention(keep_last=10_000)}
        early = prune(repository, keep_all, grace=timedelta(hours=24), dry_run=False, now=now, stale_after=0.01)
        assert early.chunks_deleted == 0 and early.forgotten == []
        late = prune(repository, keep_all, grace=timedelta(hours=24), dry_run=False, now=now + timedelta(hours=25))
        assert late.chunks_deleted == early.chunks_in_grace
        assert check(repository, read_data=1.0).ok
        for snapshot_id in ids:
            data, seed = restored(repository, snapshot_id)
            assert data == payload(seed)


def test_a_prune_killed_at_random_moments_loses_nothing_and_blocks_nobody(store_spec: dict[str, Any]) -> None:
    """Each trial adds a snapshot, then a prune process (keep_last 2, no grace) is SIGKILLed at a
    random moment. A backup right after the kill must not be refused: the dead prune's exclusive
    lock is stale at once on this host. Every snapshot left restores; check finds nothing wrong."""
    repository = Repository.init(make_store(store_spec))
    rng = random.Random(2027)
    pruned = 0
    try:
        for trial in range(TRIALS):
            backup(repository, seed=trial % 4)
            pruner = subprocess.Popen(
                [sys.executable, str(WRITER), json.dumps(store_spec), "prune"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            # Half the kills land within 0.4 s of the start (in the first prune or before it), the
            # others after a finished prune (in a later one): a busy machine shifts no kill out.
            awaited = b"ready" if trial % 2 else b"pruned"
            assert pruner.stdout is not None
            while not pruner.stdout.readline().startswith(awaited):
                assert pruner.poll() is None, "the prune writer ended by itself"
            pruned += awaited == b"pruned"
            time.sleep(rng.uniform(0.0, 0.4))  # a local prune takes milliseconds, an S3 one tenths of a second
            pruner.send_signal(signal.SIGKILL)
            pruned += pruner.communicate()[0].decode().count("pruned")
            backup(repository, seed=100 + trial)  # raises RepositoryLocked if the dead prune's lock counted
        assert pruned > 0  # some prunes finished, others were killed inside
        assert list_locks(repository.store) == []  # every dead prune's lock was removed by the next backup
        report = check(repository, read_data=1.0)
        assert report.ok, report.problems
        for snapshot_id in repository.snapshot_ids():
            data, seed = restored(repository, snapshot_id)
            assert data == payload(seed), snapshot_id
    finally:
        repository.close()


def backup(repository: Repository, *, seed: int) -> None:
    with repository.begin_snapshot("crash", "test") as writer:
        stored = writer.write_stream(io.BytesIO(payload(seed)))
        writer.add(Entry("payload", stored.size, stored.sha256, stored.chunks, {"seed": seed}))
        writer.commit()


def test_backups_racing_an_aggressive_prune_never_lose_a_chunk(store_spec: dict[str, Any]) -> None:
    """Prune with no grace period and keep_last 2, in a loop, while backups cycle through three
    data sets: each backup finds the chunks of a forgotten snapshot in the store and reuses them,
    while prune is deleting exactly those. Without the lock protocol this loses chunks."""
    Repository.init(make_store(store_spec)).close()
    repository = Repository.open(make_store(store_spec))
    stop, pruned = threading.Event(), threading.Event()
    outcomes = {"backups": 0, "prunes": 0, "backup_locked": 0, "prune_locked": 0}
    crashes: list[BaseException] = []

    def guarded(work: Any) -> Any:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - a thread's exception must fail the test, not vanish
                crashes.append(exc)
                stop.set()

        return run

    def backups() -> None:
        for seed in range(12):
            while True:
                try:
                    with repository.begin_snapshot("race", "test") as writer:
                        stored = writer.write_stream(io.BytesIO(payload(seed % 3)))
                        writer.add(Entry("payload", stored.size, stored.sha256, stored.chunks, {"seed": seed % 3}))
                        writer.commit()
                    outcomes["backups"] += 1
                    # Let prune in between (it also keeps racing the next backup): back to back, the
                    # backups could hold the shared lock every time prune tries on a busy machine.
                    pruned.wait(timeout=5)
                    pruned.clear()
                    break
                except RepositoryLocked:
                    outcomes["backup_locked"] += 1
                    time.sleep(0.05)
        stop.set()

    def prunes() -> None:
        while not stop.is_set():
            try:
                prune(repository, {"race": Retention(keep_last=2)}, grace=timedelta(0), dry_run=False)
                outcomes["prunes"] += 1
                pruned.set()
            except RepositoryLocked:
                outcomes["prune_locked"] += 1
            time.sleep(0.01)

    threads = [threading.Thread(target=guarded(backups)), threading.Thread(target=guarded(prunes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    try:
        assert crashes == []
        assert outcomes["backups"] == 12 and outcomes["prunes"] > 0, outcomes
        report = check(repository, read_data=1.0)
        assert report.ok, report.problems
        ids = [header.id for header in repository.list_snapshots("race")]
        for snapshot_id in ids:
            data, seed = restored(repository, snapshot_id)
            assert data == payload(seed)
        assert restored(repository, ids[-1])[1] == 11 % 3  # the newest snapshot is always kept
    finally:
        repository.close()


# ---- a failed backup's own chunks -----------------------------------------------------------------


class SourceWentAway(Exception):
    pass


def chunk_ids(repository: Repository) -> set[str]:
    return repository.stored_object_names()


def test_a_failed_backup_removes_the_chunks_it_wrote_and_nothing_else(store_spec: dict[str, Any]) -> None:
    Repository.init(make_store(store_spec)).close()
    with Repository.open(make_store(store_spec)) as repository:
        with repository.begin_snapshot("crash", "test") as writer:
            stored = writer.write_stream(io.BytesIO(payload(1)))
            writer.add(Entry("payload", stored.size, stored.sha256, stored.chunks, {"seed": 1}))
            kept = writer.commit()
        before = chunk_ids(repository)

        with pytest.raises(SourceWentAway), repository.begin_snapshot("crash", "test") as writer:
            writer.write_stream(io.BytesIO(payload(2)))  # half of it is shared with payload(1): reused, not new
            assert writer.stats.chunks_new > 0 and writer.stats.chunks_reused > 0
            raise SourceWentAway

        assert chunk_ids(repository) == before  # the new chunks went at once, the reused ones stayed
        assert list(repository.store.list("locks/")) == []
        assert restored(repository, kept.id) == (payload(1), 1)


def test_a_failed_backup_leaves_its_chunks_to_prune_while_another_writer_may_use_them(
    store_spec: dict[str, Any],
) -> None:
    """Writer B starts after A stored its chunks and finds them in the store: it reuses them, not
    uploads them again. When A fails while B is still writing, A must leave them alone."""
    Repository.init(make_store(store_spec)).close()
    with Repository.open(make_store(store_spec)) as repository:
        first = repository.begin_snapshot("crash", "test").__enter__()
        first.write_stream(io.BytesIO(payload(3)))
        with repository.begin_snapshot("crash", "test") as second:
            stored = second.write_stream(io.BytesIO(payload(3)))
            assert second.stats.chunks_new == 0  # every chunk reused from the failing writer
            first.__exit__(SourceWentAway, SourceWentAway(), None)  # A fails while B still writes
            second.add(Entry("payload", stored.size, stored.sha256, stored.chunks, {"seed": 3}))
            header = second.commit()
        assert restored(repository, header.id) == (payload(3), 3)
        assert check(repository, read_data=1.0).ok


def test_a_failed_backup_keeps_chunks_a_snapshot_committed_meanwhile_uses(store_spec: dict[str, Any]) -> None:
    """B starts after A stored its chunks, reuses them and commits before A fails: B's lock is gone,
    but its manifest names A's chunks."""
    Repository.init(make_store(store_spec)).close()
    with Repository.open(make_store(store_spec)) as repository:
        with pytest.raises(SourceWentAway), repository.begin_snapshot("crash", "test") as first:
            first.write_stream(io.BytesIO(payload(4)))
            with repository.begin_snapshot("crash", "test") as second:
                stored = second.write_stream(io.BytesIO(payload(4)))
                assert second.stats.chunks_new == 0
                second.add(Entry("payload", stored.size, stored.sha256, stored.chunks, {"seed": 4}))
                header = second.commit()
            raise SourceWentAway
        assert restored(repository, header.id) == (payload(4), 4)
        assert check(repository, read_data=1.0).ok
