"""etcd restore targets: ``--initial-cluster``, member consistency, the restore options, and a
snapshot that is not an etcd one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from backup.repository.manifest import Entry
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from backup.sources.base import RestoreOptions
from backup.sources.etcd.source import EtcdSource
from backup.sources.etcd.targets import EtcdDataDirTarget, EtcdFileTarget, check_membership, parse_initial_cluster
from policies.errors import IntegrityError, RestoreError
from policies.model import EtcdSettings


def test_initial_cluster_is_parsed() -> None:
    assert parse_initial_cluster("n1=https://10.0.0.11:2380,n2=https://10.0.0.12:2380,n1=https://[::1]:2380") == {
        "n1": ["https://10.0.0.11:2380", "https://[::1]:2380"],
        "n2": ["https://10.0.0.12:2380"],
    }
    for bad in ("n1", "n1=10.0.0.11:2380", ",", "=http://a:1"):
        with pytest.raises(ValueError):
            parse_initial_cluster(bad)


@pytest.mark.parametrize(
    ("name", "cluster", "urls", "message"),
    [
        ("n3", "n1=http://a:2380,n2=http://b:2380", "http://c:2380", "--name n3 is not a member"),
        ("n1", "n1=http://a:2380,n2=http://b:2380", "http://b:2380", "must be member n1's URLs"),
        ("n1", "n1:http://a:2380", "http://a:2380", "--initial-cluster 'n1:http://a:2380'"),
    ],
)
def test_inconsistent_membership_is_refused(name: str, cluster: str, urls: str, message: str) -> None:
    with pytest.raises(RestoreError, match=message):
        check_membership(name, cluster, urls)


SOURCE = EtcdSource("k8s-etcd", EtcdSettings(kind="etcd", endpoints=["http://127.0.0.1:2379"]))
MEMBER = {
    "name": "n1",
    "initial_cluster": "n1=http://10.0.0.11:2380",
    "initial_advertise_peer_urls": "http://10.0.0.11:2380",
}


def test_targets_are_parsed(tmp_path: Path) -> None:
    assert SOURCE.parse_target(RestoreOptions.of(to_file=str(tmp_path / "s.db"))) == EtcdFileTarget(tmp_path / "s.db")
    target = SOURCE.parse_target(RestoreOptions.of(to_data_dir=str(tmp_path / "etcd"), **MEMBER))
    assert isinstance(target, EtcdDataDirTarget)
    assert (target.data_dir, target.name, target.members) == (tmp_path / "etcd", "n1", {"n1": ["http://10.0.0.11:2380"]})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RestoreOptions.of(to_bucket="b"), "--to-bucket does not apply to etcd source 'k8s-etcd'; use --to-file PATH"),
        (RestoreOptions.of(to_host="ch", to_database="d"), "--to-host, --to-database do not apply"),
        (RestoreOptions.of(), "say where to restore: use --to-file PATH.*--to-data-dir DIR"),
        (RestoreOptions.of(to_file="a", to_data_dir="b"), "give only one of --to-file and --to-data-dir"),
        (RestoreOptions.of(to_file="a", name="n1"), "--name apply only with --to-data-dir"),
        (RestoreOptions.of(to_data_dir="d", name="n1"), "also needs --initial-cluster, --initial-advertise-peer-urls"),
    ],
)
def test_wrong_target_options_say_what_to_use(options: RestoreOptions, message: str) -> None:
    with pytest.raises(RestoreError, match=message):
        SOURCE.parse_target(options)


def test_a_snapshot_without_the_etcd_db_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """A snapshot of the source's name that holds no ``snapshot.db`` (the name was an S3 source's
    before the policy changed its kind): restoring it to a file is refused, and no file is written."""
    repository = Repository.init(LocalStore(tmp_path / "repo"))
    try:
        with repository.begin_snapshot("k8s-etcd", "s3") as writer:
            stored = writer.write_stream(io.BytesIO(b"an object, not an etcd db"))
            writer.add(Entry("bucket/key", stored.size, stored.sha256, stored.chunks))
            header = writer.commit()
        options = RestoreOptions.of(to_file=str(tmp_path / "etcd.db"))
        with pytest.raises(IntegrityError, match=f"snapshot {header.id} holds no snapshot.db entry: it is not an etcd"):
            SOURCE.restore(repository, header, SOURCE.parse_target(options), options=options)
    finally:
        repository.close()
    assert not (tmp_path / "etcd.db").exists()
