"""Key objects (keys.py, key_rotation.py): the data key wrapped by key files, on a local store."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from backup.repository.key_rotation import add_key, remove_key, repository_keys
from backup.repository.keys import RepositoryKeyError, key_object
from backup.repository.manifest import Entry
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from policies.errors import UsageError


def _snapshot(repository: Repository, data: bytes) -> str:
    with repository.begin_snapshot("src", "test") as writer:
        stored = writer.write_stream(io.BytesIO(data))
        writer.add(Entry("blob", stored.size, stored.sha256, stored.chunks))
        return writer.commit().id


def test_a_new_encrypted_repository_wraps_a_random_data_key_with_the_key_file(tmp_path: Path) -> None:
    key = os.urandom(32)
    with Repository.init(LocalStore(tmp_path), key=key) as repository:
        assert repository.data_key is not None and repository.data_key != key
        assert repository.key_id and (tmp_path / key_object(repository.key_id)).exists()
    assert "wrapped_keys" in json.loads((tmp_path / "config.json").read_text())["encryption"]
    with pytest.raises(RepositoryKeyError, match="wrong repository key"):
        Repository.open(LocalStore(tmp_path), key=os.urandom(32))


def test_a_changed_key_object_is_a_clear_key_error(tmp_path: Path) -> None:
    key = os.urandom(32)
    with Repository.init(LocalStore(tmp_path), key=key) as repository:
        path = tmp_path / key_object(repository.key_id or "")
    document = json.loads(path.read_text())
    document["data_key"] = ("00" if not document["data_key"].startswith("00") else "11") + document["data_key"][2:]
    path.write_text(json.dumps(document))
    with pytest.raises(RepositoryKeyError, match="does not open with it"):
        Repository.open(LocalStore(tmp_path), key=key)


def test_keys_added_and_removed_keep_the_data_and_the_rules(tmp_path: Path) -> None:
    first, second = os.urandom(32), os.urandom(32)
    with Repository.init(LocalStore(tmp_path), key=first) as repository:
        snapshot = _snapshot(repository, os.urandom(3000))
        added, migrated = add_key(repository, second)
        assert not migrated
        with pytest.raises(UsageError, match="already"):
            add_key(repository, second)
        with pytest.raises(UsageError, match="key_file"):
            remove_key(repository, repository.key_id or "")
    with Repository.open(LocalStore(tmp_path), key=second) as repository:
        assert repository.key_id == added.id
        assert [key.id for key in repository_keys(repository).keys if key.id != added.id]
        old = next(key.id for key in repository_keys(repository).keys if key.id != added.id)
        remove_key(repository, old)
        with pytest.raises(UsageError, match="last key"):
            remove_key(repository, added.id)
        [entry] = repository.entries(repository.read_header(snapshot))
        assert len(b"".join(repository.iter_chunks(entry.chunks))) == 3000
    with pytest.raises(RepositoryKeyError, match="wrong repository key"):
        Repository.open(LocalStore(tmp_path), key=first)
