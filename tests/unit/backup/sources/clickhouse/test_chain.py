"""Which native backups retention may delete: never a base a kept incremental needs (clickhouse.chain),
and prune doing so through the kind's hook."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from backup.repository.maintenance import prune
from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from backup.sources import prune_hooks
from backup.sources.clickhouse.chain import NativeBackupInfo, deletable_native_backups, native_backup_locations
from backup.sources.clickhouse.native import plan_native_backup
from policies.model import Retention

from .samples import DESTINATION, T0, chain_of, header


def test_retention_never_deletes_a_base_a_kept_incremental_needs() -> None:
    full, first, second = chain_of(3)
    locations = {info.location for h in (full, first, second) if (info := NativeBackupInfo.of(h))}
    orphan = "native/features/features-20261001T000000Z-dead"
    stored = locations | {orphan}

    assert deletable_native_backups(stored, [second]) == [orphan], "the newest incremental needs the whole chain"
    second_info = NativeBackupInfo.of(second)
    assert second_info is not None
    assert deletable_native_backups(stored, [first]) == sorted([orphan, second_info.location])
    assert deletable_native_backups(stored, [full, second]) == [orphan]
    assert deletable_native_backups(stored, [header("features-20261105T000000Z-1111")]) == sorted(stored)
    assert deletable_native_backups(stored, []) == sorted(stored)


def test_native_locations_come_from_object_keys() -> None:
    keys = [
        "native/features/features-20261101T000000Z-0000/.backup",
        "native/features/features-20261101T000000Z-0000/data/f/t/1_1_1_0/data.bin",
        "native/models/models-20261101T000000Z-0001/.lock",
        "native/broken",
        "chunks/ab/abcdef",
    ]
    assert native_backup_locations(keys) == {
        "native/features/features-20261101T000000Z-0000",
        "native/models/models-20261101T000000Z-0001",
    }


# ---- prune, through the kind's hook -----------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    repository = Repository.init(LocalStore(tmp_path / "repo"))
    yield repository
    repository.close()


def native_snapshots(repo: Repository, count: int) -> list[SnapshotHeader]:
    """``count`` native snapshots of ``features`` an hour apart, each one's backup stored in the
    repository's store and planned on the previous one."""
    headers: list[SnapshotHeader] = []
    for number in range(count):
        with repo.begin_snapshot("features", "clickhouse", started=T0 + timedelta(hours=number)) as writer:
            previous = headers[-1] if headers else None
            info = plan_native_backup("features", writer.id, previous, DESTINATION, base_exists=True)
            repo.store.put(f"{info.location}/.backup", io.BytesIO(b"<backup/>"))
            headers.append(writer.commit(meta={"strategy": "native", "native": info.to_json()}))
    return headers


def stored_locations(repo: Repository) -> set[str]:
    return native_backup_locations(info.key for info in repo.store.list("native/"))


def test_prune_deletes_the_native_backups_of_forgotten_snapshots_but_no_base_a_kept_one_needs(repo: Repository) -> None:
    full, incremental = native_snapshots(repo, 2)
    orphan = "native/features/features-20261001T000000Z-dead"
    repo.store.put(f"{orphan}/.backup", io.BytesIO(b"<backup/>"))
    keep_last = {"features": Retention(keep_last=1)}
    before = stored_locations(repo)

    preview = prune(repo, keep_last, grace=timedelta(0), dry_run=True, hooks=prune_hooks())
    assert preview.native_deleted == [orphan] and stored_locations(repo) == before, "a dry run deletes nothing"
    done = prune(repo, keep_last, grace=timedelta(0), dry_run=False, hooks=prune_hooks())
    assert done.forgotten == [full.id] and done.native_deleted == [orphan]
    full_info, incremental_info = NativeBackupInfo.of(full), NativeBackupInfo.of(incremental)
    assert full_info is not None and incremental_info is not None
    assert stored_locations(repo) == {full_info.location, incremental_info.location}, "the kept incremental's base stays"


def test_prune_without_the_hook_keeps_every_native_backup(repo: Repository) -> None:
    native_snapshots(repo, 2)
    before = stored_locations(repo)
    report = prune(repo, {"features": Retention(keep_last=1)}, grace=timedelta(0), dry_run=False)
    assert len(report.forgotten) == 1 and report.native_deleted == [] and stored_locations(repo) == before
