"""The etcd source against real etcd 3.4: back up through the CLI, restore to a data dir and a file,
start what was restored and prove it equal; refuse what must be refused, fail clearly, commit nothing bad.

The session etcd is left alone: every test that writes data starts its own etcd (``start_etcd``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import ServerLogs, init_repository, require_binaries
from policy_builder import PolicyBuilder

from backup.execute import ManagedProcess, free_port, free_ports, run, start
from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from backup.servers import EtcdProcess, start_etcd
from backup.sources.base import Verdict
from backup.sources.etcd.census import KeyCensus, read_census
from backup.sources.etcd.gateway import EtcdGateway
from backup.sources.etcd.snapshot_file import verify_trailer
from backup.sources.etcd.source import EtcdSource
from backup.sources.etcd.targets import EtcdDataDirTarget, EtcdEndpointTarget, EtcdFileTarget
from lifeboat.cli import cli
from policies.errors import SourceError
from policies.model import EtcdSettings

pytestmark = pytest.mark.integration

SOURCE = "k8s-etcd"
MiB = 1024 * 1024
LIFEBOAT = Path(sys.executable).with_name("lifeboat")
NAMESPACES = ["default", "kube-system", *(f"team-{number:02d}" for number in range(10))]
MEMBER = [
    "--name",
    "m1",
    "--initial-cluster",
    "m1=http://127.0.0.1:2380",
    "--initial-advertise-peer-urls",
    "http://127.0.0.1:2380",
]


# ---- talking to etcd directly (the test's own client, independent of the code under test) ----------


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


@dataclass(frozen=True)
class Kv:
    """Writes and reads through etcd's JSON gateway."""

    endpoint: str

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(self.endpoint + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def put_many(self, items: dict[bytes, bytes], batch: int = 100) -> None:
        """One txn per ``batch`` keys (etcd allows 128 operations per txn)."""
        pairs = list(items.items())
        for first in range(0, len(pairs), batch):
            puts = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in pairs[first : first + batch]]
            self.call("/v3/kv/txn", {"success": puts})

    def put(self, key: bytes, value: bytes) -> None:
        self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def delete_many(self, keys: list[bytes]) -> None:
        self.call("/v3/kv/txn", {"success": [{"request_delete_range": {"key": b64(key)}} for key in keys]})

    def revision(self) -> int:
        return int(self.call("/v3/kv/range", {"key": b64("x")})["header"]["revision"])

    def compact(self) -> int:
        revision = self.revision()
        self.call("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def everything(self, revision: int = 0) -> dict[bytes, tuple[bytes, int, int, int]]:
        """Every key -> (value, create_revision, mod_revision, version) at ``revision``."""
        answer = self.call("/v3/kv/range", {"key": b64(b"\0"), "range_end": b64(b"\0"), "revision": revision})
        return {
            base64.b64decode(kv["key"]): (
                base64.b64decode(kv.get("value", "")),
                int(kv["create_revision"]),
                int(kv["mod_revision"]),
                int(kv.get("version", 0)),
            )
            for kv in answer.get("kvs", [])
        }


def etcdctl(*args: str, endpoint: str) -> bytes:
    return run(["etcdctl", *args], timeout=60, env={"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": endpoint}).stdout


def etcdctl_keys(endpoint: str, revision: int) -> list[bytes]:
    """Every key at ``revision``, listed by etcdctl itself (``get --prefix --keys-only``)."""
    answer = json.loads(etcdctl("get", "", "--prefix", "--keys-only", f"--rev={revision}", "-w", "json", endpoint=endpoint))
    return [base64.b64decode(kv["key"]) for kv in answer.get("kvs", [])]


def fill_like_a_cluster(kv: Kv, *, pods: int = 1500) -> None:
    """Thousands of Kubernetes-shaped keys across namespaces, binary values, 1 MiB values, overwritten and
    deleted keys, a non-Kubernetes prefix, then a compaction."""
    items: dict[bytes, bytes] = {}
    for number in range(pods):
        namespace = NAMESPACES[number % len(NAMESPACES)]
        items[f"/registry/pods/{namespace}/pod-{number:05d}".encode()] = b'{"kind":"Pod","spec":{}}' * 8
    for number in range(400):
        namespace = NAMESPACES[number % len(NAMESPACES)]
        items[f"/registry/secrets/{namespace}/secret-{number:04d}".encode()] = os.urandom(300)  # binary
        items[f"/registry/configmaps/{namespace}/cm-{number:04d}".encode()] = b"data: " + b"x" * 500
    for number in range(120):
        namespace = NAMESPACES[number % len(NAMESPACES)]
        items[f"/registry/deployments/{namespace}/deploy-{number:03d}".encode()] = b'{"kind":"Deployment"}'
        items[f"/registry/services/specs/{namespace}/svc-{number:03d}".encode()] = b'{"kind":"Service"}'
        items[f"/registry/example.com/widgets/{namespace}/widget-{number:03d}".encode()] = b'{"kind":"Widget"}'
    items |= {f"/registry/namespaces/{namespace}".encode(): b'{"kind":"Namespace"}' for namespace in NAMESPACES}
    items |= {f"/registry/clusterroles/role-{number:02d}".encode(): b'{"kind":"ClusterRole"}' for number in range(40)}
    items |= {f"/calico/ipam/v2/block-{number:02d}".encode(): os.urandom(64) for number in range(30)}
    items[b"/binary-keys/\xff\xfe\x00tail"] = b"\x00\x01\x02"
    kv.put_many(items)
    for number in range(3):  # etcd's default request limit is 1.5 MiB
        kv.put(f"/registry/configmaps/default/big-{number}".encode(), os.urandom(MiB))
    overwritten = {
        f"/registry/pods/default/pod-{number:05d}".encode(): b'{"kind":"Pod","v":2}' for number in range(0, 600, 12)
    }
    kv.put_many(overwritten)
    kv.delete_many([f"/registry/pods/team-00/pod-{number:05d}".encode() for number in range(2, 1200, 12)])
    kv.compact()


# ---- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, server_logs: ServerLogs) -> Iterator[EtcdProcess]:
    """An etcd of our own holding a cluster-like data set; nothing writes to it after setup."""
    require_binaries("etcd", "etcdctl")
    with start_etcd(tmp_path_factory.mktemp("etcd-cluster") / "data") as etcd:
        server_logs.register("etcd (cluster)", etcd.log_tail)
        fill_like_a_cluster(Kv(etcd.endpoint))
        yield etcd


def write_policy(directory: Path, endpoints: list[str], **settings: Any) -> Path:
    """``settings``: the source's other keys (etcdctl, tls, user, password...)."""
    policy = PolicyBuilder(directory / "repo", state=directory / "state.db")
    policy.source(SOURCE, "etcd", endpoints=endpoints, **settings)
    return init_repository(policy.write(directory / "lifeboat.yaml"))


def lifeboat(config: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=env, catch_exceptions=False)


def backup_json(config: Path) -> dict[str, Any]:
    result = lifeboat(config, "backup", "run", "--source", SOURCE, "--json")
    assert result.exit_code == 0, result.stderr
    [snapshot] = json.loads(result.stdout)["snapshots"]
    return snapshot


def listed_snapshots(config: Path) -> list[dict[str, Any]]:
    result = lifeboat(config, "snapshots", "list", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["snapshots"]


def header_of(config: Path, snapshot_id: str) -> SnapshotHeader:
    repository = Repository.open(LocalStore(config.parent / "repo"))
    try:
        return repository.read_header(snapshot_id)
    finally:
        repository.close()


@dataclass(frozen=True)
class BackedUp:
    config: Path
    snapshot: dict[str, Any]
    header: SnapshotHeader
    endpoint: str


@pytest.fixture(scope="module")
def backed_up(cluster: EtcdProcess, tmp_path_factory: pytest.TempPathFactory) -> BackedUp:
    """One backup of ``cluster`` through ``lifeboat backup run --json``."""
    config = write_policy(tmp_path_factory.mktemp("lifeboat"), [cluster.endpoint])
    snapshot = backup_json(config)
    return BackedUp(config, snapshot, header_of(config, snapshot["id"]), cluster.endpoint)


def restore(backed_up: BackedUp, *args: str) -> Result:
    """``lifeboat restore`` of the module's snapshot (pinned: other tests commit newer ones)."""
    return lifeboat(backed_up.config, "restore", SOURCE, "--snapshot", backed_up.snapshot["id"], *args)


def source_for(endpoint: str) -> EtcdSource:
    return EtcdSource(SOURCE, EtcdSettings(kind="etcd", endpoints=[endpoint]))


# ---- backup, census, restore, verify -----------------------------------------------------------------


def test_backup_counts_the_cluster_at_its_revision(backed_up: BackedUp) -> None:
    revision = Kv(backed_up.endpoint).revision()
    snapshot, census = backed_up.snapshot, backed_up.header.census
    assert (snapshot["status"], snapshot["revision"], census["revision"]) == ("good", revision, revision)
    listed = etcdctl_keys(backed_up.endpoint, revision)
    expected = KeyCensus()
    for key in listed:
        expected.add(key)
    assert census == expected.as_dict(revision)
    assert snapshot["keys"] == len(listed) == 1400 + 2 * 400 + 3 * 120 + 12 + 40 + 30 + 1 + 3
    pods = sum(key.startswith(b"/registry/pods/") for key in listed)
    assert census["resources"]["pods"] == pods == 1500 - 100  # 100 pods were deleted
    assert census["resources"]["services/specs"] == census["resources"]["example.com/widgets"] == 120
    assert census["namespaces"]["team-00"] == sum(b"/team-00/" in key for key in listed)
    assert census["prefixes"]["/calico/"] == 30
    assert snapshot["bytes_read"] == backed_up.header.size > 3 * MiB  # the three 1 MiB values are in it
    assert backed_up.header.fingerprint["revision"] == revision


def test_restore_to_a_data_dir_starts_and_holds_the_same_data(
    backed_up: BackedUp, tmp_path: Path, server_logs: ServerLogs
) -> None:
    data_dir = tmp_path / "restored" / "etcd"
    result = restore(backed_up, "--to-data-dir", str(data_dir), *MEMBER)
    assert result.exit_code == 0, result.stderr
    assert f"-> {data_dir}" in result.stdout
    assert "next steps:" in result.stdout and "--initial-cluster-state new" in result.stdout
    assert sorted(path.name for path in data_dir.parent.iterdir()) == ["etcd"]  # no temporary leftovers

    header = backed_up.header
    verification = source_for(backed_up.endpoint).verify(header, EtcdDataDirTarget(data_dir, *MEMBER[1::2]))
    assert verification.verdict is Verdict.MATCH, verification
    assert verification.checked["keys"] == header.census["totals"]["keys"]

    with start_etcd(data_dir, name="m1", log_path=tmp_path / "restored.log") as restored:
        server_logs.register("etcd (restored)", restored.log_tail)
        restored_data = Kv(restored.endpoint).everything()
    original = Kv(backed_up.endpoint).everything(revision=header.census["revision"])
    assert restored_data == original  # every key, value (binary, 1 MiB), and revision
    assert max(len(value) for value, *_ in restored_data.values()) == MiB


def test_census_is_read_at_the_snapshot_revision_while_the_cluster_keeps_writing(
    tmp_path: Path, server_logs: ServerLogs
) -> None:
    with start_etcd(tmp_path / "busy" / "data") as busy:
        server_logs.register("etcd (busy)", busy.log_tail)
        kv = Kv(busy.endpoint)
        fill_like_a_cluster(kv, pods=300)
        config = write_policy(tmp_path / "lifeboat", [busy.endpoint])
        stop = threading.Event()

        def keep_writing() -> None:
            number = 0
            while not stop.is_set():
                kv.put(f"/registry/pods/late/pod-{number:06d}".encode(), b"{}")
                number += 1

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            time.sleep(0.2)
            snapshot = backup_json(config)
        finally:
            stop.set()
            writer.join()
        revision = snapshot["revision"]
        at_snapshot = etcdctl_keys(busy.endpoint, revision)
        now = etcdctl_keys(busy.endpoint, kv.revision())
    census = header_of(config, snapshot["id"]).census
    late = sum(key.startswith(b"/registry/pods/late/") for key in at_snapshot)
    assert len(now) > len(at_snapshot), "the writer should still have been writing after the snapshot"
    assert census["totals"]["keys"] == snapshot["keys"] == len(at_snapshot)
    assert census["namespaces"]["late"] == late > 0


def test_restore_to_file_is_the_snapshot_etcdctl_would_save(backed_up: BackedUp, tmp_path: Path) -> None:
    restored = tmp_path / "out" / "etcd.db"
    result = restore(backed_up, "--to-file", str(restored))
    assert result.exit_code == 0, result.stderr
    fresh = tmp_path / "fresh.db"
    etcdctl("snapshot", "save", str(fresh), endpoint=backed_up.endpoint)  # nothing has written since the backup
    assert restored.read_bytes() == fresh.read_bytes()
    verify_trailer(restored)
    status = json.loads(etcdctl("snapshot", "status", "-w", "json", str(restored), endpoint=backed_up.endpoint))
    assert status["hash"] == backed_up.header.meta["status"]["hash"]
    # The data set ends with deletes and a compaction at the head: status reports the newest surviving key
    # revision, while the snapshot (and a member restored from it) is at the compaction revision.
    assert status["revision"] == backed_up.header.meta["status"]["revision"] < backed_up.snapshot["revision"]

    again = restore(backed_up, "--to-file", str(restored))
    assert again.exit_code == 1 and "exists; add --yes" in again.stderr

    verification = source_for(backed_up.endpoint).verify(backed_up.header, EtcdFileTarget(restored))
    assert verification.verdict is Verdict.MATCH, verification


def test_a_tampered_restore_fails_verification_naming_the_prefix(
    backed_up: BackedUp, tmp_path: Path, server_logs: ServerLogs
) -> None:
    data_dir = tmp_path / "scratch"
    assert restore(backed_up, "--to-data-dir", str(data_dir), *MEMBER).exit_code == 0
    header, source = backed_up.header, source_for(backed_up.endpoint)
    pods = header.census["resources"]["pods"]
    with start_etcd(data_dir, name="m1", log_path=tmp_path / "scratch.log") as scratch:
        server_logs.register("etcd (scratch)", scratch.log_tail)
        assert source.verify(header, EtcdEndpointTarget(scratch.endpoint)).verdict is Verdict.MATCH
        Kv(scratch.endpoint).delete_many([b"/registry/pods/team-01/pod-00003"])
        verification = source.verify(header, EtcdEndpointTarget(scratch.endpoint))
    assert verification.verdict is Verdict.MISMATCH
    assert f"/registry/pods/: {pods} keys in snapshot, {pods - 1} restored" in verification.differences
    assert any(line.startswith("namespace team-01:") for line in verification.differences)
    # The same tampered data dir, verified the way a drill does: a scratch etcd started on it.
    on_disk = source.verify(header, EtcdDataDirTarget(data_dir, *MEMBER[1::2]))
    assert (
        on_disk.verdict is Verdict.MISMATCH
        and f"/registry/pods/: {pods} keys in snapshot, {pods - 1} restored" in on_disk.differences
    )


def test_what_cannot_be_verified_is_never_a_match(backed_up: BackedUp, tmp_path: Path) -> None:
    source = source_for(backed_up.endpoint)
    closed = source.verify(backed_up.header, EtcdEndpointTarget(f"http://127.0.0.1:{free_port()}"))
    assert closed.verdict is Verdict.UNVERIFIED and "connection refused" in closed.message
    empty = source.verify(backed_up.header, EtcdDataDirTarget(tmp_path / "nothing", *MEMBER[1::2]))
    assert empty.verdict is Verdict.UNVERIFIED and "no etcd member data" in empty.message
    (tmp_path / "broken" / "member" / "snap").mkdir(parents=True)
    (tmp_path / "broken" / "member" / "snap" / "db").write_bytes(os.urandom(64 * 1024))
    broken = source.verify(backed_up.header, EtcdDataDirTarget(tmp_path / "broken", *MEMBER[1::2]))
    assert broken.verdict is Verdict.UNVERIFIED and "would not start" in broken.message


def test_a_second_backup_of_unchanged_data_stores_few_new_bytes(backed_up: BackedUp) -> None:
    second = backup_json(backed_up.config)
    print(
        f"\nsecond backup: read {second['bytes_read']} bytes, stored {second['bytes_stored']} new bytes, "
        f"{second['chunks_new']} new chunks, {second['chunks_reused']} reused"
    )
    assert second["bytes_read"] == backed_up.snapshot["bytes_read"]
    assert second["chunks_new"] == 0
    assert second["bytes_stored"] < 16 * 1024  # the manifest and the entries list


# ---- refusals and clear failures ---------------------------------------------------------------------


def test_a_non_empty_data_dir_is_refused_without_yes(backed_up: BackedUp, tmp_path: Path) -> None:
    data_dir = tmp_path / "etcd"
    (data_dir / "member").mkdir(parents=True)
    (data_dir / "member" / "old-state").write_text("precious")
    refused = restore(backed_up, "--to-data-dir", str(data_dir), *MEMBER)
    assert refused.exit_code == 1
    assert "is not empty; add --yes" in refused.stderr
    assert (data_dir / "member" / "old-state").read_text() == "precious"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["etcd"]

    replaced = restore(backed_up, "--to-data-dir", str(data_dir), *MEMBER, "--yes")
    assert replaced.exit_code == 0, replaced.stderr
    [aside] = [path for path in tmp_path.iterdir() if path.name.startswith("etcd.lifeboat-old-")]
    assert (aside / "member" / "old-state").read_text() == "precious"  # moved aside, never deleted
    assert str(aside) in replaced.stdout
    assert (data_dir / "member" / "snap" / "db").is_file()


@pytest.mark.parametrize("target", [["--to-file", "out/etcd.db"], ["--to-data-dir", "out/etcd", *MEMBER]])
def test_dry_run_prints_the_plan_and_writes_nothing(backed_up: BackedUp, tmp_path: Path, target: list[str]) -> None:
    args = [str(tmp_path / arg) if arg.startswith("out/") else arg for arg in target]
    result = restore(backed_up, *args, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"plan: {SOURCE} snapshot {backed_up.snapshot['id']} -> {args[1]}\n")
    assert "snapshot.db" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_options_of_other_kinds_are_refused_naming_the_etcd_ones(backed_up: BackedUp) -> None:
    result = restore(backed_up, "--to-bucket", "models")
    assert result.exit_code == 2  # a usage mistake
    assert "--to-bucket does not apply to etcd source" in result.stderr and "--to-data-dir DIR" in result.stderr


def assert_failed_without_snapshot(config: Path, result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert listed_snapshots(config) == []


def test_an_unreachable_endpoint_fails_clearly(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    config = write_policy(tmp_path, [endpoint])
    result = lifeboat(config, "backup", "run", "--source", SOURCE)
    assert_failed_without_snapshot(config, result, f"{SOURCE}: FAILED", endpoint, "connection refused")


def test_endpoints_are_tried_in_turn(cluster: EtcdProcess, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    config = write_policy(tmp_path, [closed, cluster.endpoint])
    snapshot = backup_json(config)
    assert snapshot["endpoint"] == cluster.endpoint and snapshot["status"] == "good"


def damaging_etcdctl(directory: Path, bad_endpoint: str) -> Path:
    """An etcdctl that runs the real one, then flips a byte in the middle of the snapshot it saved
    when that came from ``bad_endpoint``: a transfer damaged on its way, as etcd's trailer sees it."""
    script = directory / "etcdctl"
    script.write_text(
        f"""#!{sys.executable}
import os, subprocess, sys
code = subprocess.call(["{shutil.which("etcdctl")}", *sys.argv[1:]])
if code == 0 and sys.argv[1:3] == ["snapshot", "save"] and os.environ.get("ETCDCTL_ENDPOINTS") == "{bad_endpoint}":
    with open(sys.argv[3], "r+b") as db:
        db.seek(os.path.getsize(sys.argv[3]) // 2)
        byte = db.read(1)
        db.seek(-1, 1)
        db.write(bytes([byte[0] ^ 0xFF]))
sys.exit(code)
"""
    )
    script.chmod(0o755)
    return script


def test_a_snapshot_that_fails_verification_is_never_a_snapshot(cluster: EtcdProcess, tmp_path: Path) -> None:
    damaging = damaging_etcdctl(tmp_path, cluster.endpoint)
    config = write_policy(tmp_path / "one", [cluster.endpoint], etcdctl=str(damaging))
    result = lifeboat(config, "backup", "run", "--source", SOURCE)
    assert_failed_without_snapshot(config, result, cluster.endpoint)
    # Where and when the flipped byte lands decides which check sees it first: etcd's trailer (the byte
    # was stored flipped), a bbolt page that `snapshot status` cannot read, or the file's crc32 against
    # the bytes stored. Either way the damage is named and nothing is committed.
    named = ("sha256 trailer does not match", "as a snapshot: etcdctl exited", "changed after its bytes were stored")
    assert any(damage in result.stderr for damage in named)
    # Its chunks were stored while it was checked; nothing refers to them and no other writer could have
    # used them, so the failed run removed them itself: prune finds no garbage waiting out its grace.
    pruned = lifeboat(config, "prune", "--json")
    assert pruned.exit_code == 0, pruned.stderr
    assert json.loads(pruned.stdout)["chunks_in_grace"] == 0
    assert lifeboat(config, "check", "--read-data").exit_code == 0

    # The same damage from the first endpoint only: the second one's snapshot is taken, and it is whole.
    other = cluster.endpoint.replace("127.0.0.1", "localhost")
    config = write_policy(tmp_path / "two", [cluster.endpoint, other], etcdctl=str(damaging))
    snapshot = backup_json(config)
    assert snapshot["endpoint"] == other and snapshot["status"] == "good"
    restored = tmp_path / "restored.db"
    assert lifeboat(config, "restore", SOURCE, "--to-file", str(restored)).exit_code == 0
    verify_trailer(restored)


def defect_streaming_etcdctl(directory: Path, defect: str) -> Path:
    """An etcdctl whose ``snapshot save`` lets the real one save aside, then writes the snapshot the
    way etcdctl does (a growing ``.part``, synced, renamed when done), piece by piece so that
    Lifeboat stores it while it arrives, with ``defect``: ``trailer`` (the sha256 trailer's last byte
    flipped), ``truncated`` (the stream stops halfway; etcdctl itself exits well), ``rewritten`` (once
    every byte was written and read, a byte of a value is changed in place and the trailer made to
    match: a whole, valid snapshot, but not the bytes that were stored), ``rewritten-early`` (the same
    while the rest is still to come), ``slow-sync`` (no defect: syncing the file takes 2 s) or
    ``fails-at-sync`` (every byte is written, then syncing it fails). It notes when ``snapshot
    status`` starts (``status-started``) and when the save ends (``save-ended``) beside itself."""
    script = directory / "etcdctl"
    script.write_text(
        f"""#!{sys.executable}
import os, subprocess, sys, time
real = "{shutil.which("etcdctl")}"
if sys.argv[1:3] == ["snapshot", "status"]:
    with open("{directory / "status-started"}", "a") as noted:
        noted.write(f"{{time.time()}}\\n")
if sys.argv[1:3] != ["snapshot", "save"]:
    os.execv(real, [real, *sys.argv[1:]])
target = sys.argv[3]
code = subprocess.call([real, "snapshot", "save", target + ".whole"])
if code:
    sys.exit(code)
with open(target + ".whole", "rb") as whole:
    data = whole.read()
os.unlink(target + ".whole")
if "{defect}" == "trailer":
    data = data[:-1] + bytes([data[-1] ^ 0x01])
elif "{defect}" == "truncated":
    data = data[: len(data) // 2]
changed_at = data.index(b"x" * 500)  # a configmap's value: bbolt checks no value, etcd's trailer all
with open(target + ".part", "wb") as part:
    for at in range(0, len(data), 256 * 1024):
        part.write(data[at : at + 256 * 1024])
        part.flush()
        time.sleep(0.01)
        if "{defect}" == "rewritten-early" and changed_at < at <= changed_at + 256 * 1024:
            import hashlib
            time.sleep(1)  # the reader has read the value by now
            data = data[:changed_at] + b"y" + data[changed_at + 1 : -32]
            data += hashlib.sha256(data).digest()
            part.seek(changed_at)
            part.write(b"y")
            part.seek(0, 2)
            part.flush()
    if "{defect}" == "slow-sync":
        time.sleep(2)
    if "{defect}" == "fails-at-sync":
        print("Error: fsync {{target}}.part: no space left on device", file=sys.stderr)
        sys.exit(1)
    if "{defect}" == "rewritten":
        import hashlib
        time.sleep(2)  # the reader has read every byte by now (all were written before)
        at = data.index(b"x" * 500)  # a configmap's value: bbolt checks no value, etcd's trailer all
        db = data[:at] + b"y" + data[at + 1 : -32]
        part.seek(at)
        part.write(b"y")
        part.seek(len(db))
        part.write(hashlib.sha256(db).digest())
        part.flush()
os.rename(target + ".part", target)
with open("{directory / "save-ended"}", "w") as noted:
    noted.write(f"{{time.time()}}")
"""
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("defect", ["trailer", "truncated", "rewritten", "rewritten-early", "fails-at-sync"])
def test_a_snapshot_damaged_in_the_stream_fails_and_commits_nothing(
    cluster: EtcdProcess, tmp_path: Path, defect: str
) -> None:
    """The bytes are stored while they arrive, and checked once they are all there, while etcdctl
    still syncs the file. A snapshot whose trailer is wrong, which stops halfway, whose file was
    changed after its bytes were stored (its checks would be about other bytes than the stored ones),
    or whose save fails at the end, still fails the backup: no snapshot, and the chunks stored
    meanwhile are garbage."""
    config = write_policy(tmp_path, [cluster.endpoint], etcdctl=str(defect_streaming_etcdctl(tmp_path, defect)))
    result = lifeboat(config, "backup", "run", "--source", SOURCE)
    assert_failed_without_snapshot(config, result, f"{SOURCE}: FAILED", cluster.endpoint)
    # "trailer": the db is whole; "rewritten-early": the bytes stored hold the old value and the new
    # trailer. Only etcd's trailer, checked on the bytes stored, can tell.
    if defect in ("trailer", "rewritten-early"):
        assert "sha256 trailer does not match" in result.stderr
    # "rewritten": the bytes stored and the file are each a valid snapshot, and status and census pass;
    # only comparing the file with the bytes stored can tell. It changed after the checks began: again.
    if defect == "rewritten":
        assert "changed after its bytes were stored" in result.stderr
        assert "etcd.snapshot.rechecked" in result.stderr
    if defect == "fails-at-sync":  # every check of the bytes passed; etcdctl's verdict still counts
        assert "no space left on device" in result.stderr
    assert lifeboat(config, "check", "--read-data").exit_code == 0
    # The same etcdctl's other commands are the real ones: without the defect, the backup is good.
    good = write_policy(tmp_path / "good", [cluster.endpoint])
    assert backup_json(good)["status"] == "good"


def test_the_checks_begin_while_etcdctl_still_syncs_the_file(cluster: EtcdProcess, tmp_path: Path) -> None:
    """etcdctl syncs the whole file to disk before it renames it and exits (0.14 s for 218 MiB here).
    The snapshot's first page says how long it is, so etcd's checks begin once every byte is here;
    the backup is good once etcdctl exits well."""
    config = write_policy(tmp_path, [cluster.endpoint], etcdctl=str(defect_streaming_etcdctl(tmp_path, "slow-sync")))
    assert backup_json(config)["status"] == "good"
    status_started = float((tmp_path / "status-started").read_text().split()[0])
    assert status_started < float((tmp_path / "save-ended").read_text())


def test_without_hard_links_the_file_is_checked_once_etcdctl_is_done(
    cluster: EtcdProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is checked under a second name while etcdctl renames it; a file system without hard
    links makes the checks wait for etcdctl, as before, and the backup is as good."""

    def no_links(source: object, target: object, **_: object) -> None:
        raise PermissionError(1, "Operation not permitted", str(source))

    monkeypatch.setattr(os, "link", no_links)
    config = write_policy(tmp_path, [cluster.endpoint], etcdctl=str(defect_streaming_etcdctl(tmp_path, "slow-sync")))
    assert backup_json(config)["status"] == "good"
    assert float((tmp_path / "status-started").read_text().split()[0]) > float((tmp_path / "save-ended").read_text())


def disagreeing_etcdctl(directory: Path) -> Path:
    """An etcdctl whose ``snapshot status`` says the newest revision is one more than the snapshot
    holds: etcd and Lifeboat's own bbolt reader disagreeing about the file."""
    script = directory / "etcdctl"
    script.write_text(
        f"""#!{sys.executable}
import json, subprocess, sys
done = subprocess.run(["{shutil.which("etcdctl")}", *sys.argv[1:]], stdout=subprocess.PIPE)
output = done.stdout
if done.returncode == 0 and sys.argv[1:3] == ["snapshot", "status"]:
    status = json.loads(output)
    status["revision"] += 1
    output = json.dumps(status).encode()
sys.stdout.buffer.write(output)
sys.exit(done.returncode)
"""
    )
    script.chmod(0o755)
    return script


def test_etcd_and_lifeboats_reader_disagreeing_about_the_newest_revision_fails_the_backup(
    cluster: EtcdProcess, tmp_path: Path
) -> None:
    """The census is read by Lifeboat's own bbolt reader; etcd's ``snapshot status`` must agree with it
    on the newest revision, or the census and fingerprint may not be the snapshot's."""
    config = write_policy(tmp_path, [cluster.endpoint], etcdctl=str(disagreeing_etcdctl(tmp_path)))
    result = lifeboat(config, "backup", "run", "--source", SOURCE)
    assert_failed_without_snapshot(config, result, f"{SOURCE}: FAILED", cluster.endpoint)
    said = re.search(r"etcd says its newest revision is (\d+), its key bucket reads (\d+)", result.stderr)
    assert said and int(said[1]) == int(said[2]) + 1, result.stderr


@pytest.mark.parametrize(
    ("tls", "needles"),
    [
        ({"ca": "/nonexistent/ca.crt"}, [f"sources.{SOURCE}.tls.ca: /nonexistent/ca.crt does not exist"]),
        ({"ca": "CA"}, [f"sources.{SOURCE}.tls.ca:", "holds no usable PEM CA certificate"]),
        ({"cert": "CERT", "key": "CERT"}, [f"sources.{SOURCE}.tls.cert/key:", "not a PEM certificate and its private key"]),
    ],
    ids=["missing-ca", "not-a-ca", "not-a-cert"],
)
def test_wrong_tls_files_fail_clearly(cluster: EtcdProcess, tmp_path: Path, tls: dict[str, str], needles: list[str]) -> None:
    not_a_cert = tmp_path / "not-a-cert.pem"
    not_a_cert.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    files = {key: str(not_a_cert) if value in ("CA", "CERT") else value for key, value in tls.items()}
    config = write_policy(tmp_path, [cluster.endpoint], tls=files)
    result = lifeboat(config, "backup", "run", "--source", SOURCE)
    assert_failed_without_snapshot(config, result, *needles)


def test_a_wrong_password_fails_clearly_and_stays_secret(
    tmp_path: Path, server_logs: ServerLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_etcd(tmp_path / "auth" / "data") as etcd:
        server_logs.register("etcd (auth)", etcd.log_tail)
        Kv(etcd.endpoint).put(b"/registry/pods/default/a", b"{}")
        etcdctl("user", "add", "root:Sup3r-s3cret", endpoint=etcd.endpoint)
        etcdctl("auth", "enable", endpoint=etcd.endpoint)
        monkeypatch.setenv("ETCD_PASSWORD", "Sup3r-s3cret")
        config = write_policy(tmp_path / "lifeboat", [etcd.endpoint], user="root", password="${ETCD_PASSWORD}")
        good = lifeboat(config, "backup", "run", "--source", SOURCE, "--json")
        assert good.exit_code == 0, good.stderr
        assert json.loads(good.stdout)["snapshots"][0]["keys"] == 1
        monkeypatch.setenv("ETCD_PASSWORD", "Wr0ng-s3cret")
        bad = lifeboat(config, "backup", "run", "--source", SOURCE)
    assert bad.exit_code == 1
    assert "authentication failed" in bad.stderr
    assert "Wr0ng-s3cret" not in bad.stderr + bad.stdout and "Sup3r-s3cret" not in good.stderr + good.stdout
    assert len(listed_snapshots(config)) == 1


def test_a_backup_leaves_nothing_in_the_temporary_directory(
    cluster: EtcdProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot file etcdctl saved, and the second name it was checked under, are removed once it
    is stored and checked."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = write_policy(tmp_path / "lifeboat", [cluster.endpoint])
    assert backup_json(config)["status"] == "good"
    assert list(scratch.iterdir()) == []


def test_an_etcd_killed_mid_snapshot_fails_clearly(tmp_path: Path, server_logs: ServerLogs) -> None:
    with start_etcd(tmp_path / "victim" / "data") as victim:
        server_logs.register("etcd (victim)", victim.log_tail)
        kv = Kv(victim.endpoint)
        for number in range(40):  # ~40 MiB: the snapshot takes long enough to be caught in flight
            kv.put(f"/registry/configmaps/default/blob-{number}".encode(), os.urandom(MiB))
        config = write_policy(tmp_path / "lifeboat", [victim.endpoint])
        scratch = tmp_path / "tmp"
        scratch.mkdir()
        backup = subprocess.Popen(
            [str(LIFEBOAT), "--config", str(config), "backup", "run", "--source", SOURCE],
            env={**os.environ, "TMPDIR": str(scratch)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not list(scratch.glob("lifeboat-*/snapshot.db.part")):  # etcdctl's file while it downloads
            assert backup.poll() is None and time.monotonic() < deadline, "the snapshot never started"
            time.sleep(0.001)
        victim.process.kill()
        stdout, stderr = backup.communicate(timeout=60)
    assert backup.returncode == 1, stdout + stderr
    assert f"{SOURCE}: FAILED: no verified snapshot" in stderr and victim.endpoint in stderr
    assert "Traceback" not in stderr
    assert listed_snapshots(config) == []
    assert list(scratch.iterdir()) == []  # the partial snapshot was removed


# ---- a TLS etcd with client certificates, as kubeadm runs it ------------------------------------------


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _certificate(subject: str, key: Any, *, issuer: tuple[str, Any] | None = None, server: bool = False) -> Any:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        # etcd's gateway dials etcd itself with the server certificate: it needs client auth too (as kubeadm's has)
        usages = (
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            if server
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server:
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True)
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _certificate("lifeboat-test-ca", ca_key)
    files = {
        "ca": (ca, None),
        "server": (_certificate("etcd", server_key, issuer=("lifeboat-test-ca", ca_key), server=True), server_key),
        "client": (_certificate("root", client_key, issuer=("lifeboat-test-ca", ca_key)), client_key),
    }
    paths = {}
    for name, (certificate, key) in files.items():
        paths[name] = directory / f"{name}.crt"
        paths[name].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            paths[f"{name}-key"] = directory / f"{name}.key"
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            paths[f"{name}-key"].write_bytes(pem)
    return paths


def start_tls_etcd(directory: Path, pki: dict[str, Path]) -> tuple[ManagedProcess, str]:
    """etcd serving clients over TLS and requiring a client certificate (``--client-cert-auth``)."""
    import ssl

    client_port, peer_port, metrics_port = free_ports(3)
    endpoint, peer = f"https://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    process = start(
        [
            "etcd", "--name", "tls", "--data-dir", str(directory / "data"),
            "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"tls={peer}",
            "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}",
            "--cert-file", str(pki["server"]), "--key-file", str(pki["server-key"]),
            "--trusted-ca-file", str(pki["ca"]), "--client-cert-auth",
        ],
        log_path=directory / "etcd.log",
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(str(pki["client"]), str(pki["client-key"]))
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/health", context=context, timeout=1) as response:
                if json.loads(response.read()).get("health") == "true":
                    return process, endpoint
        except OSError:
            pass
        if not process.alive() or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"TLS etcd did not start:\n{process.log_tail()}")
        time.sleep(0.05)


def test_a_tls_etcd_with_client_certificates_backs_up(tmp_path: Path, server_logs: ServerLogs) -> None:
    pki = write_pki(tmp_path / "pki")
    process, endpoint = start_tls_etcd(tmp_path / "etcd", pki)
    with process:
        server_logs.register("etcd (tls)", process.log_tail)
        tls = {"ca": pki["ca"], "cert": pki["client"], "key": pki["client-key"]}
        config = write_policy(tmp_path / "lifeboat", [endpoint], tls=tls)
        empty = backup_json(config)
        assert (empty["status"], empty["endpoint"], empty["keys"], empty["revision"]) == ("good", endpoint, 0, 1)
        client = {
            "ETCDCTL_CACERT": str(pki["ca"]),
            "ETCDCTL_CERT": str(pki["client"]),
            "ETCDCTL_KEY": str(pki["client-key"]),
        }
        for name in ("a", "b", "c"):
            run(
                ["etcdctl", "put", f"/registry/pods/default/{name}", "{}"],
                timeout=30,
                env={"ETCDCTL_ENDPOINTS": endpoint, **client},
            )
        snapshot = backup_json(config)
        assert (snapshot["keys"], snapshot["revision"]) == (3, 4)
        assert header_of(config, snapshot["id"]).census["namespaces"] == {"default": 3}

        without_client_cert = write_policy(tmp_path / "no-cert", [endpoint], tls={"ca": pki["ca"]})
        result = lifeboat(without_client_cert, "backup", "run", "--source", SOURCE)
    assert_failed_without_snapshot(without_client_cert, result, endpoint, "TLS failed")


def test_a_census_at_a_compacted_revision_is_refused_not_guessed(cluster: EtcdProcess) -> None:
    with EtcdGateway(cluster.endpoint) as gateway, pytest.raises(SourceError, match="required revision has been compacted"):
        read_census(gateway, revision=2)


# ---- values, leases and auth (issue 13: a restored copy that differs is never a match) -----------------


def flip_value_in_place(db: Path, value: bytes) -> int:
    """Change the last byte of every copy of ``value`` in the bbolt file ``db``, in place and at the same
    length: a value changed behind etcd's back, with no new revision. Returns how many copies changed."""
    data = bytearray(db.read_bytes())
    copies, at = 0, data.find(value)
    while at >= 0:
        data[at + len(value) - 1] ^= 0x01
        copies += 1
        at = data.find(value, at + 1)
    db.write_bytes(bytes(data))
    return copies


def test_a_value_changed_without_a_revision_bump_is_a_mismatch_naming_its_prefix(
    backed_up: BackedUp, tmp_path: Path, server_logs: ServerLogs
) -> None:
    header, source = backed_up.header, source_for(backed_up.endpoint)
    key = b"/registry/secrets/team-01/secret-0003"
    value, create, mod, version = Kv(backed_up.endpoint).everything(revision=header.census["revision"])[key]
    assert len(value) == 300  # random bytes: found nowhere else in the file
    data_dir = tmp_path / "scratch"
    assert restore(backed_up, "--to-data-dir", str(data_dir), *MEMBER).exit_code == 0
    assert flip_value_in_place(data_dir / "member" / "snap" / "db", value) >= 1

    verification = source.verify(header, EtcdDataDirTarget(data_dir, *MEMBER[1::2]))
    assert verification.verdict is Verdict.MISMATCH, verification
    assert any("/registry/secrets/team-01/" in line and "values" in line for line in verification.differences), (
        verification.differences
    )
    # The copy really changed only the value: same revisions, same key count (the old fingerprint matched).
    with start_etcd(data_dir, name="m1", log_path=tmp_path / "scratch.log") as scratch:
        server_logs.register("etcd (patched)", scratch.log_tail)
        kv = Kv(scratch.endpoint)
        changed, *revisions = kv.everything()[key]
        assert revisions == [create, mod, version] and changed != value and len(changed) == len(value)
        assert kv.revision() == header.fingerprint["revision"]
        assert read_census(EtcdGateway(scratch.endpoint))["prefixes"] == header.census["prefixes"]


def test_an_old_snapshot_without_value_digests_verifies_as_before_and_says_so(backed_up: BackedUp, tmp_path: Path) -> None:
    old = {name: backed_up.header.fingerprint[name] for name in ("revision", "prefixes", "resources", "namespaces", "keys")}
    header = dataclasses.replace(backed_up.header, fingerprint=old)
    data_dir = tmp_path / "scratch"
    assert restore(backed_up, "--to-data-dir", str(data_dir), *MEMBER).exit_code == 0
    verification = source_for(backed_up.endpoint).verify(header, EtcdDataDirTarget(data_dir, *MEMBER[1::2]))
    assert verification.verdict is Verdict.MATCH, verification
    assert "values, leases and auth were not covered by this snapshot" in verification.message


def etcdctl_as(endpoint: str, *args: str, user: str | None = None) -> bytes:
    extra = {"ETCDCTL_USER": user} if user else {}
    return run(["etcdctl", *args], timeout=60, env={"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": endpoint, **extra}).stdout


def seed_leases_and_auth(endpoint: str) -> None:
    """Keys (one on a lease), two leases, users with roles, a role with permissions; auth stays off."""
    kv = Kv(endpoint)
    kv.put_many({f"/registry/pods/default/p{number}".encode(): b"{}" for number in range(5)})
    lease = int(kv.call("/v3/lease/grant", {"TTL": 3600})["ID"])
    kv.call("/v3/lease/grant", {"TTL": 7200})
    kv.call("/v3/kv/put", {"key": b64("/registry/events/default/e1"), "value": b64("{}"), "lease": lease})
    for user in ("root", "alice", "bob"):
        etcdctl_as(endpoint, "user", "add", f"{user}:pw-{user}")
    etcdctl_as(endpoint, "user", "grant-role", "root", "root")
    etcdctl_as(endpoint, "role", "add", "reader")
    etcdctl_as(endpoint, "role", "grant-permission", "reader", "read", "/registry/", "--prefix")
    for user in ("alice", "bob"):
        etcdctl_as(endpoint, "user", "grant-role", user, "reader")


def test_leases_users_roles_and_auth_state_are_verified(tmp_path: Path, server_logs: ServerLogs) -> None:
    with start_etcd(tmp_path / "guarded" / "data") as etcd:
        server_logs.register("etcd (guarded)", etcd.log_tail)
        seed_leases_and_auth(etcd.endpoint)
        config = write_policy(tmp_path / "lifeboat", [etcd.endpoint])
        snapshot = backup_json(config)
        header, source = header_of(config, snapshot["id"]), source_for(etcd.endpoint)
    data_dir = tmp_path / "restored"
    assert lifeboat(config, "restore", SOURCE, "--to-data-dir", str(data_dir), *MEMBER).exit_code == 0
    with start_etcd(data_dir, name="m1", log_path=tmp_path / "restored.log") as member:
        server_logs.register("etcd (restored)", member.log_tail)
        endpoint, kv = member.endpoint, Kv(member.endpoint)

        def verify() -> Any:
            return source.verify(header, EtcdEndpointTarget(endpoint))

        untouched = verify()
        assert untouched.verdict is Verdict.MATCH, untouched
        assert "2 leases" in untouched.message and "3 users" in untouched.message

        extra = kv.call("/v3/lease/grant", {"TTL": 600})["ID"]
        added_lease = verify()
        assert added_lease.verdict is Verdict.MISMATCH
        assert any(f"lease {int(extra):016x}" in line for line in added_lease.differences), added_lease.differences
        kv.call("/v3/kv/lease/revoke", {"ID": extra})
        assert verify().verdict is Verdict.MATCH

        etcdctl_as(endpoint, "user", "delete", "bob")
        deleted_user = verify()
        assert deleted_user.verdict is Verdict.MISMATCH
        assert any("user bob" in line for line in deleted_user.differences), deleted_user.differences
        etcdctl_as(endpoint, "user", "add", "bob:another-password")
        assert verify().verdict is Verdict.MISMATCH  # bob is back, without his role
        etcdctl_as(endpoint, "user", "grant-role", "bob", "reader")
        assert verify().verdict is Verdict.MATCH

        etcdctl_as(endpoint, "user", "add", "mallory:pw")
        added_user = verify()
        assert added_user.verdict is Verdict.MISMATCH
        assert any("user mallory" in line for line in added_user.differences), added_user.differences
        etcdctl_as(endpoint, "user", "delete", "mallory")

        etcdctl_as(endpoint, "role", "grant-permission", "reader", "readwrite", "/secret/")
        widened = verify()
        assert widened.verdict is Verdict.MISMATCH
        assert any("role reader" in line for line in widened.differences), widened.differences
        etcdctl_as(endpoint, "role", "revoke-permission", "reader", "/secret/")
        assert verify().verdict is Verdict.MATCH

        etcdctl_as(endpoint, "auth", "enable")
        enabled = verify()
    assert enabled.verdict is Verdict.MISMATCH, enabled
    assert any(line.startswith("auth: disabled in snapshot, enabled restored") for line in enabled.differences)


def test_an_auth_enabled_snapshot_verifies_with_the_sources_credentials(tmp_path: Path, server_logs: ServerLogs) -> None:
    with start_etcd(tmp_path / "locked" / "data") as etcd:
        server_logs.register("etcd (locked)", etcd.log_tail)
        seed_leases_and_auth(etcd.endpoint)
        etcdctl_as(etcd.endpoint, "auth", "enable")
        config = write_policy(tmp_path / "lifeboat", [etcd.endpoint], user="root", password="pw-root")
        snapshot = backup_json(config)
        header = header_of(config, snapshot["id"])
        source = EtcdSource(SOURCE, EtcdSettings(kind="etcd", endpoints=[etcd.endpoint], user="root", password="pw-root"))
    assert header.fingerprint["auth"]["enabled"] is True
    data_dir = tmp_path / "restored"
    assert lifeboat(config, "restore", SOURCE, "--to-data-dir", str(data_dir), *MEMBER).exit_code == 0
    with start_etcd(data_dir, name="m1", log_path=tmp_path / "restored.log") as member:
        server_logs.register("etcd (restored, auth)", member.log_tail)
        untouched = source.verify(header, EtcdEndpointTarget(member.endpoint))
        assert untouched.verdict is Verdict.MATCH, untouched
        without_credentials = source_for(member.endpoint).verify(header, EtcdEndpointTarget(member.endpoint))
        assert without_credentials.verdict is not Verdict.MATCH
        etcdctl_as(member.endpoint, "auth", "disable", user="root:pw-root")
        disabled = source.verify(header, EtcdEndpointTarget(member.endpoint))
    assert disabled.verdict is Verdict.MISMATCH, disabled
    assert any(line.startswith("auth: enabled in snapshot, disabled restored") for line in disabled.differences)


def test_the_canarys_value_tamper_changes_only_a_value_and_is_caught(
    backed_up: BackedUp, tmp_path: Path, server_logs: ServerLogs
) -> None:
    from drills.scratch.common import first_etcd_value, patch_etcd_value

    header, source = backed_up.header, source_for(backed_up.endpoint)
    data_dir = tmp_path / "scratch"
    assert restore(backed_up, "--to-data-dir", str(data_dir), *MEMBER).exit_code == 0
    with start_etcd(data_dir, name="m1", log_path=tmp_path / "before.log") as scratch:
        kv = first_etcd_value(scratch.endpoint)
    said = patch_etcd_value(data_dir / "member" / "snap" / "db", kv)
    key = base64.b64decode(kv["key"])
    assert key.decode(errors="replace") in said
    with start_etcd(data_dir, name="m1", log_path=tmp_path / "after.log") as scratch:
        server_logs.register("etcd (canary)", scratch.log_tail)
        value, create, mod, version = Kv(scratch.endpoint).everything()[key]
        verification = source.verify(header, EtcdEndpointTarget(scratch.endpoint))
    assert (create, mod, version) == (int(kv["create_revision"]), int(kv["mod_revision"]), int(kv["version"]))
    assert value != base64.b64decode(kv["value"]) and len(value) == len(base64.b64decode(kv["value"]))
    assert verification.verdict is Verdict.MISMATCH
    assert verification.differences and all(line.startswith("values under ") for line in verification.differences)
