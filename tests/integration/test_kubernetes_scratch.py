"""The ``kubernetes`` scratch environment and janitor, the real ``kubernetes`` client speaking HTTP to
the fake API server of tests/k8s_fake.py (no real cluster can run here). Asserts the exact requests:
what a real API server would be asked to do, and that RBAC in deploy/ allows every one of them."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from click.testing import CliRunner
from k8s_fake import FakeKubernetes, JobEnd, Request, api_client, job_runs, serve, statefulset_pods
from policy_builder import PolicyBuilder
from unit.deploy.test_manifests import Access, manifest_problems, rbac_allows

from backup.repository.manifest import ChunkRef
from drills.checks import run_command_check
from drills.faults import FAULTS, DrillContext
from drills.model import Status
from drills.scratch import make_scratch
from drills.scratch.common import ScratchError
from drills.scratch.kubernetes.api import KubernetesApi
from drills.scratch.kubernetes.environment import KubernetesScratchEnvironment
from drills.scratch.kubernetes.janitor import run_janitor
from drills.scratch.kubernetes.manifests import Credentials
from drills.scratch.kubernetes.slots import TargetClients
from drills.steps import StepOutcome, step
from lifeboat.cli import cli
from policies.loader import load_policy
from policies.model import CommandCheck, KubernetesScratch, Policy, Scratch, SecretFile

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0
RUN_ID = "20270115t020000z-0a1b"
NS = f"lifeboat-drill-{RUN_ID}"
CORE = f"/api/v1/namespaces/{NS}"
HEADER: Any = SimpleNamespace(id="etcd-main-20270115T010000Z-abcd")
ALL_REQUESTS: list[Request] = []  # every request of this module, for the RBAC test at the end


class FakeClock:
    """Time that moves only when the code sleeps."""

    def __init__(self) -> None:
        self.now = NOW
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running
        ALL_REQUESTS.extend(running.requests)


def settings(**overrides: Any) -> KubernetesScratch:
    values: dict[str, Any] = {"access": "service-dns", "ready_timeout": "10s", "teardown_timeout": "20s", **overrides}
    return KubernetesScratch.model_validate(values)


KEY_FILE_BYTES = b"0123456789abcdef" * 4 + b"\n"


def production_policy(directory: Path, url: str = "s3://backups/prod") -> Policy:
    """A policy with an S3 repository whose secrets are a file, an inline value and a key file."""
    (directory / "repo-secret").write_text("repository-secret-key\n")
    (directory / "repo.key").write_bytes(KEY_FILE_BYTES)
    return Policy.model_validate(
        {
            "repository": {
                "url": url,
                "s3": {
                    "endpoint_url": "https://backup-minio.dc2:9000",
                    "access_key_id": "AKIA-REPO-ACCESS",
                    "secret_access_key": {"file": str(directory / "repo-secret")},
                },
                "encryption": {"key_file": str(directory / "repo.key")},
            },
            "sources": {
                "etcd-main": {"kind": "etcd", "endpoints": ["https://10.0.0.11:2379"], "password": "etcd-password"},
                "objects": {"kind": "s3", "buckets": ["models"]},
            },
        }
    )


def environment(
    fake: FakeKubernetes,
    clock: FakeClock,
    *,
    clients: TargetClients | None = None,
    policy: Policy | None = None,
    **overrides: Any,
) -> KubernetesScratchEnvironment:
    return KubernetesScratchEnvironment(
        settings(**overrides),
        RUN_ID,
        drill="nightly",
        policy=policy,
        resolve=lambda host, port: ["10.20.30.40", "10.20.30.41"],
        api_client=api_client(fake),
        clock=clock,
        sleep=clock.sleep,
        token=Tokens(),
        clients=clients,
    )


def calls(fake: FakeKubernetes) -> list[tuple[str, str]]:
    return [(request.method, request.path) for request in fake.requests]


FENCES = [
    ("POST", "/api/v1/namespaces"),
    ("POST", f"{CORE}/resourcequotas"),
    ("POST", f"{CORE}/limitranges"),
    ("POST", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"),
]
SECRET = ("POST", f"{CORE}/secrets")  # the first ClickHouse / MinIO slot's credentials
COPY = [("POST", f"{CORE}/services"), ("POST", f"/apis/apps/v1/namespaces/{NS}/statefulsets")]
PROVISION = [*FENCES, SECRET, *COPY]


class Tokens:
    """Deterministic stand-in for ``secrets.token_hex``: t1, t2, ... padded to the asked length."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self, size: int) -> str:
        self.made += 1
        return f"t{self.made}".ljust(2 * size, "0")


def release(name: str) -> list[tuple[str, str]]:
    return [
        ("DELETE", f"/apis/apps/v1/namespaces/{NS}/statefulsets/{name}"),
        ("DELETE", f"{CORE}/services/{name}"),
        ("DELETE", f"{CORE}/persistentvolumeclaims/data-{name}-0"),
    ]


def test_provision_wait_kill_teardown_sends_exactly_these_requests(fake: FakeKubernetes) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    fake.namespace_linger = 2  # Terminating for two reads, then gone
    clock = FakeClock()
    scratch = environment(fake, clock)

    slot = scratch.slot("warehouse", "clickhouse", HEADER)
    options = slot.restore_options()
    said = slot.interrupt()
    removed = scratch.teardown()

    assert calls(fake) == [
        *PROVISION,
        ("GET", f"{CORE}/pods/clickhouse-1-0"),
        ("DELETE", f"{CORE}/pods/clickhouse-1-0"),
        *release("clickhouse-1"),
        ("DELETE", f"/api/v1/namespaces/{NS}"),
        *[("GET", f"/api/v1/namespaces/{NS}")] * 3,
    ]
    namespace = fake.requests[0].body
    assert namespace["metadata"] == {
        "name": NS,
        "labels": {
            "app.kubernetes.io/managed-by": "lifeboat",
            "lifeboat.io/drill": "nightly",
            "lifeboat.io/expires-at": str(int(NOW + 6 * 3600)),
        },
    }
    assert fake.requests[1].body["spec"]["hard"]["requests.cpu"] == "4"
    assert fake.requests[2].body["spec"]["limits"][0]["default"] == {"cpu": "2", "memory": "4Gi"}
    statefulset = fake.requests[6].body
    assert statefulset["spec"]["template"]["spec"]["containers"][0]["image"] == "clickhouse/clickhouse-server:24.8"
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] == {"requests": {"storage": "20Gi"}}
    delete_namespace = fake.requests[-4]
    assert delete_namespace.query == {"propagationPolicy": "Foreground"}
    assert (options.get("to_host"), options.get("to_port"), options.get("to_database")) == (
        f"clickhouse-1.{NS}.svc",
        9000,
        "restored",
    )
    assert said == f"deleted pod clickhouse-1-0 in namespace {NS}"
    assert removed == [f"scratch clickhouse clickhouse-1 in namespace {NS}", f"namespace {NS}"]
    assert fake.objects == {}
    assert scratch.teardown() == []  # twice is safe: nothing left, no request
    assert len(fake.requests) == 16


def test_a_pod_that_never_gets_ready_is_an_error_with_its_events_and_log_and_teardown_still_runs(
    fake: FakeKubernetes,
) -> None:
    fake.on_create.append(statefulset_pods(ready=False, events=("Back-off pulling image minio/minio",)))
    fake.logs[(NS, "s3-1-0")] = "\n".join(f"line {n}" for n in range(30))
    clock = FakeClock()
    scratch = environment(fake, clock)

    with pytest.raises(ScratchError) as raised:
        scratch.slot("objects", "s3", HEADER)
    removed = scratch.teardown()

    message = str(raised.value)
    assert f"pod s3-1-0 in namespace {NS} not ready after 10s" in message
    assert "event Warning Failed: Back-off pulling image minio/minio" in message
    assert "log: line 29" in message and "log: line 10" in message and "log: line 9\n" not in message
    polls = [("GET", f"{CORE}/pods/s3-1-0")] * 6  # at 0, 2, 4, 6, 8, 10 s
    assert calls(fake) == [
        *PROVISION,
        *polls,
        ("GET", f"{CORE}/events"),
        ("GET", f"{CORE}/pods/s3-1-0/log"),
        *release("s3-1"),
        ("DELETE", f"/api/v1/namespaces/{NS}"),
        ("GET", f"/api/v1/namespaces/{NS}"),
    ]
    assert fake.requests[13].query == {"fieldSelector": "involvedObject.name=s3-1-0"}
    assert fake.requests[14].query == {"tailLines": "20"}
    assert clock.sleeps == [2.0] * 5
    assert removed[-1] == f"namespace {NS}" and fake.objects == {}


def test_teardown_that_outlasts_its_timeout_says_so(fake: FakeKubernetes) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    fake.namespace_linger = 100
    clock = FakeClock()
    scratch = environment(fake, clock, teardown_timeout="4s")
    scratch.slot("warehouse", "clickhouse", HEADER)
    with pytest.raises(ScratchError, match="still terminating after 4s; the janitor removes it"):
        scratch.teardown()


ETCD_FEED = [
    ("POST", f"{CORE}/configmaps"),
    ("POST", f"{CORE}/secrets"),
    ("POST", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"),
]


def test_restore_pods_read_the_repository_with_the_drill_key_pair_when_one_is_given(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    """``scratch.kubernetes.restore_credentials``: a key pair that can read backups but not delete
    them; the repository's own key pair never enters the drill namespace."""
    fake.on_create.append(statefulset_pods(ready=True))
    base = production_policy(tmp_path)
    restricted = {"access_key_id": "AKIA-DRILL-READER", "secret_access_key": "drill-reader-secret"}
    scratch_settings = base.scratch.model_dump() | {"kubernetes": {"restore_credentials": restricted}}
    policy = Policy.model_validate(base.model_dump() | {"scratch": scratch_settings})
    scratch = environment(fake, FakeClock(), policy=policy)

    scratch.slot("etcd-main", "etcd", HEADER)

    config_map, secret = (request.body for request in fake.requests[4:6])
    files = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert files["repository-access-key-id"] == b"AKIA-DRILL-READER"
    assert files["repository-secret-access-key"] == b"drill-reader-secret"
    sent = json.dumps([config_map, secret])
    assert "AKIA-REPO-ACCESS" not in sent and base64.b64encode(b"repository-secret-key").decode() not in sent
    assert "drill-reader-secret" not in config_map["data"]["policy.yaml"]
    scratch.teardown()


def test_etcd_slot_feeds_its_restore_pod_and_the_statefulset_comes_with_the_timed_restore(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    scratch = environment(fake, FakeClock(), policy=production_policy(tmp_path))

    slot = scratch.slot("etcd-main", "etcd", HEADER)
    assert calls(fake) == [*FENCES, *ETCD_FEED, ("POST", f"{CORE}/services")]  # no StatefulSet before the restore
    options = slot.restore_options(yes=True)
    assert (options.get("to_file"), options.dry_run, options.yes) == ("/restore/snapshot.db", True, True)
    slot.after_restore()
    assert calls(fake)[-2:] == [("POST", f"/apis/apps/v1/namespaces/{NS}/statefulsets"), ("GET", f"{CORE}/pods/etcd-1-0")]
    assert slot.verify_target().endpoint == f"http://etcd-1.{NS}.svc:2379"

    config_map, secret, egress = (request.body for request in fake.requests[4:7])
    for body in (config_map, secret, egress, fake.requests[8].body):  # valid objects by the client's models
        assert manifest_problems(body) == []
    pod_policy = tmp_path / "pod-policy.yaml"
    pod_policy.write_text(config_map["data"]["policy.yaml"])
    loaded = load_policy(pod_policy)  # Lifeboat's own loader accepts what the init container reads
    assert loaded.repository.url == "s3://backups/prod"
    assert loaded.repository.s3.endpoint_url == "https://backup-minio.dc2:9000"
    assert loaded.repository.s3.access_key_id == SecretFile(file=Path("/etc/lifeboat/secrets/repository-access-key-id"))
    assert loaded.repository.s3.secret_access_key == SecretFile(
        file=Path("/etc/lifeboat/secrets/repository-secret-access-key")
    )
    assert loaded.repository.encryption is not None
    assert loaded.repository.encryption.key_file == Path("/etc/lifeboat/secrets/repository.key")
    assert list(loaded.sources) == ["etcd-main"]  # the S3 source, and every source secret, stay out
    for secret_value in ("AKIA-REPO-ACCESS", "repository-secret-key", "etcd-password", "0123456789abcdef"):
        assert secret_value not in config_map["data"]["policy.yaml"]
    assert secret["metadata"]["name"] == "lifeboat-credentials"
    assert {key: base64.b64decode(value) for key, value in secret["data"].items()} == {
        "repository-access-key-id": b"AKIA-REPO-ACCESS",
        "repository-secret-access-key": b"repository-secret-key",
        "repository.key": KEY_FILE_BYTES,
    }
    assert egress["spec"] == {
        "podSelector": {"matchLabels": {"lifeboat.io/restores-from": "repository"}},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "10.20.30.40/32"}}, {"ipBlock": {"cidr": "10.20.30.41/32"}}],
                "ports": [{"protocol": "TCP", "port": 9000}],
            }
        ],
    }
    template = fake.requests[8].body["spec"]["template"]
    assert template["metadata"]["labels"] == {"lifeboat.io/slot": "etcd-1", "lifeboat.io/restores-from": "repository"}
    (restore,) = template["spec"]["initContainers"]  # Lifeboat's own data-dir restore; no shell in the etcd image
    assert restore["command"] == ["lifeboat", "--config", "/etc/lifeboat/policy.yaml", "restore", "etcd-main"]
    assert restore["args"] == [
        *("--snapshot", HEADER.id),
        *("--to-data-dir", "/var/lib/etcd/data"),
        *("--name", "drill"),
        *("--initial-cluster", "drill=http://127.0.0.1:2380"),
        *("--initial-advertise-peer-urls", "http://127.0.0.1:2380"),
        "--yes",
    ]
    assert {mount["mountPath"] for mount in restore["volumeMounts"]} == {
        "/var/lib/etcd",
        "/etc/lifeboat/policy.yaml",
        "/etc/lifeboat/secrets",
    }
    credentials = next(volume for volume in template["spec"]["volumes"] if volume["name"] == "credentials")
    assert [item["key"] for item in credentials["secret"]["items"]] == sorted(secret["data"])
    assert "envFrom" not in template["spec"]["containers"][0]
    scratch.teardown()


def test_a_second_etcd_source_reuses_the_feed_of_the_run(fake: FakeKubernetes, tmp_path: Path) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    scratch = environment(fake, FakeClock(), policy=production_policy(tmp_path))
    scratch.slot("etcd-main", "etcd", HEADER)
    scratch.slot("etcd-events", "etcd", HEADER)
    assert [path for _, path in calls(fake)].count(f"{CORE}/configmaps") == 1
    scratch.teardown()


def test_etcd_on_kubernetes_refuses_a_local_repository_before_creating_anything(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    url = "file:///var/lib/lifeboat/repo"
    scratch = environment(fake, FakeClock(), policy=production_policy(tmp_path, url=url))
    with pytest.raises(ScratchError) as raised:
        scratch.slot("etcd-main", "etcd", HEADER)
    assert str(raised.value) == (
        "an etcd copy on kubernetes scratch is restored inside the cluster, which cannot read the file "
        f"repository {url}: use an s3:// repository reachable from the cluster, or scratch.kind: local"
    )
    assert scratch.teardown() == [] and fake.requests == []


def test_etcd_on_kubernetes_without_the_policy_is_refused(fake: FakeKubernetes) -> None:
    scratch = environment(fake, FakeClock())
    with pytest.raises(ScratchError, match="this scratch environment was made without the policy"):
        scratch.slot("etcd-main", "etcd", HEADER)
    assert fake.requests == []


FAILED_RESTORE = [
    {
        "name": "etcd-restore",
        "ready": False,
        "restartCount": 2,
        "image": "ghcr.io/lifeboat/lifeboat:latest",
        "imageID": "",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}},
    },
]


def test_a_restore_failing_in_the_init_container_is_an_error_with_its_log_at_once(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    fake.on_create.append(statefulset_pods(ready=False, init_statuses=FAILED_RESTORE))
    fake.logs[(NS, "etcd-1-0", "etcd-restore")] = "\n".join(
        [*(f"noise {n}" for n in range(25)), "Error: chunk 3f2a... failed its integrity check"]
    )
    clock = FakeClock()
    scratch = environment(fake, clock, policy=production_policy(tmp_path))
    slot = scratch.slot("etcd-main", "etcd", HEADER)

    with pytest.raises(ScratchError) as raised:
        slot.after_restore()

    lines = str(raised.value).splitlines()
    assert lines[:2] == [
        f"pod etcd-1-0 in namespace {NS}: the restore failed in its init containers",
        "init container etcd-restore: Error, exit code 3, restarts 2",
    ]
    assert lines[-1] == "log etcd-restore: Error: chunk 3f2a... failed its integrity check"
    assert len(lines) == 2 + 20 and lines[2] == "log etcd-restore: noise 6"
    assert clock.sleeps == []  # no wait for ready_timeout: a failed restore does not heal
    assert fake.requests[-1].path == f"{CORE}/pods/etcd-1-0/log"
    assert fake.requests[-1].query == {"container": "etcd-restore", "tailLines": "20"}
    scratch.teardown()


def test_etcd_disaster_deletes_the_copy_and_its_data_dir_and_the_recovery_restores_it_again(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    scratch = environment(fake, FakeClock(), policy=production_policy(tmp_path))
    slot = scratch.slot("etcd-main", "etcd", HEADER)
    slot.after_restore()
    assert fake.get("v1", "persistentvolumeclaims", "data-etcd-1-0", NS) is not None
    before = len(fake.requests)

    said = slot.stage_disaster()
    slot.after_restore()  # what the disaster scenario's recovery restore ends with

    assert said == (f"deleted StatefulSet etcd-1, pod etcd-1-0 and its data dir (PVC data-etcd-1-0) in namespace {NS}")
    assert calls(fake)[before:] == [
        ("DELETE", f"/apis/apps/v1/namespaces/{NS}/statefulsets/etcd-1"),
        ("DELETE", f"{CORE}/pods/etcd-1-0"),
        ("DELETE", f"{CORE}/persistentvolumeclaims/data-etcd-1-0"),
        ("GET", f"{CORE}/pods/etcd-1-0"),
        ("GET", f"{CORE}/persistentvolumeclaims/data-etcd-1-0"),
        ("POST", f"/apis/apps/v1/namespaces/{NS}/statefulsets"),
        ("GET", f"{CORE}/pods/etcd-1-0"),
    ]
    recreated = fake.requests[-2].body
    assert recreated["spec"]["template"]["spec"]["initContainers"][0]["args"][1] == HEADER.id
    assert fake.get("v1", "persistentvolumeclaims", "data-etcd-1-0", NS) is not None  # a new, empty one
    scratch.teardown()


class SnapshotRepository:
    """The part of a repository the store-fault scenarios touch before they ask for a slot."""

    def entries(self, header: Any) -> list[Any]:
        return [SimpleNamespace(size=100, chunks=[ChunkRef("c0ffee", 100)])]


@pytest.mark.parametrize("fault", ["corrupt-chunk", "missing-chunk", "flaky-storage", "kill-target"])
def test_faults_that_need_a_fresh_etcd_copy_are_an_error_never_a_pass(
    fake: FakeKubernetes, tmp_path: Path, fault: str
) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    scratch = environment(fake, FakeClock(), policy=production_policy(tmp_path))
    main = scratch.slot("etcd-main", "etcd", HEADER)
    source: Any = SimpleNamespace(name="etcd-main", kind="etcd")
    repository: Any = SnapshotRepository()
    context = DrillContext(source=source, repository=repository, header=HEADER, scratch=scratch, main=main)
    made = len(fake.requests)

    steps: list[Any] = []
    with step(steps, f"fault:{fault}"):
        FAULTS[fault]().run(context, StepOutcome())

    assert steps[0].verdict is Status.ERROR
    assert steps[0].message.startswith("ScratchError: could not verify: this scenario needs a fresh etcd copy")
    assert "restored by the copy's init container, out of their reach" in steps[0].message
    assert len(fake.requests) == made  # nothing was created for it
    scratch.teardown()


def test_etcd_canary_deletes_one_key_through_the_service_endpoint(fake: FakeKubernetes, tmp_path: Path) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    scratch = environment(fake, FakeClock(), policy=production_policy(tmp_path))
    slot = scratch.slot("etcd-main", "etcd", HEADER)
    sent: list[tuple[str, dict[str, Any]]] = []

    def answer(request: Any, timeout: float) -> Any:
        sent.append((request.full_url, json.loads(request.data)))
        body = {"kvs": [{"key": base64.b64encode(b"/registry/pods/a").decode()}]} if "range" in request.full_url else {}
        return io.BytesIO(json.dumps(body).encode())

    with mock.patch("urllib.request.urlopen", answer):
        said = slot.tamper()
    assert said == "deleted key /registry/pods/a from the scratch etcd"
    assert [url for url, _ in sent] == [
        f"http://etcd-1.{NS}.svc:2379/v3/kv/range",
        f"http://etcd-1.{NS}.svc:2379/v3/kv/deleterange",
    ]
    assert sent[1][1] == {"key": base64.b64encode(b"/registry/pods/a").decode()}
    scratch.teardown()


USER, PASSWORD = "lifeboat-t1000000", "t2".ljust(48, "0")  # what Tokens makes for the first kind's Secret


def test_clickhouse_and_minio_get_per_run_credentials_from_a_secret_and_restores_carry_them(
    fake: FakeKubernetes,
) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    scratch = environment(fake, FakeClock())

    warehouse = scratch.slot("warehouse", "clickhouse", HEADER)
    objects = scratch.slot("objects", "s3", HEADER)
    again = scratch.slot("warehouse", "clickhouse", HEADER)  # a fault's fresh slot: same Secret, no new one

    posts = [(request.path, request.body) for request in fake.sent("POST")]
    assert [path for path, _ in posts] == [
        *[path for _, path in FENCES],
        *[f"{CORE}/secrets", f"{CORE}/services", f"/apis/apps/v1/namespaces/{NS}/statefulsets"] * 2,
        f"{CORE}/services",
        f"/apis/apps/v1/namespaces/{NS}/statefulsets",
    ]
    clickhouse_secret, minio_secret = posts[4][1], posts[7][1]
    assert clickhouse_secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "lifeboat-scratch-clickhouse",
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "lifeboat"},
        },
        "type": "Opaque",
        "stringData": {
            "CLICKHOUSE_USER": USER,
            "CLICKHOUSE_PASSWORD": PASSWORD,
            "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT": "1",
        },
    }
    assert minio_secret["metadata"]["name"] == "lifeboat-scratch-s3"
    assert minio_secret["stringData"] == {"MINIO_ROOT_USER": "lifeboat-t3000000", "MINIO_ROOT_PASSWORD": "t4".ljust(48, "0")}
    for statefulset, secret in (
        (posts[6][1], clickhouse_secret),
        (posts[9][1], minio_secret),
        (posts[11][1], clickhouse_secret),
    ):
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]

    clickhouse = warehouse.restore_options(yes=True)
    assert (clickhouse.get("to_host"), clickhouse.get("to_port"), clickhouse.get("to_http_port")) == (
        f"clickhouse-1.{NS}.svc",
        9000,
        8123,
    )
    assert (clickhouse.get("to_user"), clickhouse.get("to_password"), clickhouse.yes) == (USER, PASSWORD, True)
    assert again.restore_options().get("to_password") == PASSWORD
    s3 = objects.restore_options()
    assert (s3.get("to_endpoint"), s3.get("to_bucket")) == (f"http://s3-2.{NS}.svc:9000", "restored")
    assert (s3.get("to_access_key_id"), s3.get("to_secret_access_key")) == ("lifeboat-t3000000", "t4".ljust(48, "0"))
    scratch.teardown()


class RecordingSql:
    """A ClickHouse client that answers the table census and records every statement."""

    def __init__(self, tables: list[tuple[str, int]]) -> None:
        self.tables = tables
        self.statements: list[str] = []

    def execute(self, query: str, params: Any = None) -> Any:
        self.statements.append(query)
        return self.tables if query.startswith("SELECT table, total_rows") else []


def test_clickhouse_disaster_and_canary_go_to_the_service_with_the_run_credentials(fake: FakeKubernetes) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    sql = RecordingSql([("events", 1000), ("users", 10)])
    reached: list[tuple[str, int, Credentials]] = []

    def connect(host: str, port: int, credentials: Credentials) -> RecordingSql:
        reached.append((host, port, credentials))
        return sql

    scratch = environment(fake, FakeClock(), clients=TargetClients(clickhouse=connect))
    slot = scratch.slot("warehouse", "clickhouse", HEADER)

    assert slot.stage_disaster() == "dropped table restored.events (1000 rows)"
    assert slot.tamper() == "inserted one duplicate row into restored.events"
    assert sql.statements[1] == "DROP TABLE `restored`.`events`"
    assert sql.statements[3] == "INSERT INTO `restored`.`events` SELECT * FROM `restored`.`events` LIMIT 1"
    assert reached == [(f"clickhouse-1.{NS}.svc", 9000, Credentials(USER, PASSWORD))] * 2
    sql.tables = []
    with pytest.raises(ScratchError, match="restored holds no table with rows to drop"):
        slot.stage_disaster()
    scratch.teardown()


def test_s3_disaster_and_canary_go_to_the_minio_service_with_the_run_credentials(
    fake: FakeKubernetes, s3_server: Any
) -> None:
    """The slot's S3 calls go to the real S3 server fixture standing in for the in-cluster MinIO."""
    fake.on_create.append(statefulset_pods(ready=True))
    reached: list[tuple[str, Credentials]] = []
    client = s3_server.client()
    client.create_bucket(Bucket="restored")
    try:
        for key in ("a/1", "a/2", "b/3"):
            client.put_object(Bucket="restored", Key=key, Body=b"data of " + key.encode())

        def connect(endpoint: str, credentials: Credentials) -> Any:
            reached.append((endpoint, credentials))
            return client

        scratch = environment(fake, FakeClock(), clients=TargetClients(s3=connect))
        slot = scratch.slot("objects", "s3", HEADER)

        assert slot.tamper() == "appended bytes to object 'a/1' in the scratch bucket"
        assert client.get_object(Bucket="restored", Key="a/1")["Body"].read() == b"data of a/1tampered"
        assert slot.stage_disaster() == "emptied scratch bucket restored (3 objects deleted)"
        assert client.list_objects_v2(Bucket="restored").get("KeyCount") == 0
        with pytest.raises(ScratchError, match="holds no object to tamper with"):
            slot.tamper()
        scratch.teardown()
    finally:
        for item in client.list_objects_v2(Bucket="restored").get("Contents", []):
            client.delete_object(Bucket="restored", Key=item["Key"])
        client.delete_bucket(Bucket="restored")
    assert reached == [(f"http://s3-1.{NS}.svc:9000", Credentials(USER, PASSWORD))] * 3


def test_a_scratch_made_without_a_drill_name_is_labelled_by_its_run_id(fake: FakeKubernetes, tmp_path: Path) -> None:
    policy = Scratch.model_validate(
        {"kind": "kubernetes", "kubernetes": {"kubeconfig": str(write_kubeconfig(fake, tmp_path)), "access": "service-dns"}}
    )
    fake.on_create.append(statefulset_pods(ready=True))
    scratch = make_scratch(policy, RUN_ID)
    scratch.slot("objects", "s3", HEADER)
    assert fake.requests[0].body["metadata"]["labels"]["lifeboat.io/drill"] == RUN_ID
    scratch.teardown()


def write_kubeconfig(fake: FakeKubernetes, directory: Path) -> Path:
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{fake.url}'}}}}]\n"
        "users: [{name: fake, user: {token: x}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
    )
    return kubeconfig


def test_the_registry_builds_the_kubernetes_scratch_from_a_kubeconfig(fake: FakeKubernetes, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(fake, tmp_path)
    fake.on_create.append(statefulset_pods(ready=True))
    policy = Scratch.model_validate(
        {"kind": "kubernetes", "kubernetes": {"kubeconfig": str(kubeconfig), "access": "service-dns"}}
    )
    full = Policy.model_validate(
        {
            "repository": {"url": "s3://lifeboat/repo"},
            "sources": {"objects": {"kind": "s3", "endpoint_url": "http://minio:9000", "buckets": ["models"]}},
            "scratch": policy.model_dump(),
        }
    )
    scratch = make_scratch(policy, RUN_ID, drill="weekly-objects", policy=full)
    assert isinstance(scratch, KubernetesScratchEnvironment)
    assert scratch.policy is full  # what the etcd restore pods get their policy from
    scratch.slot("objects", "s3", HEADER)
    assert fake.requests[0].body["metadata"]["labels"]["lifeboat.io/drill"] == "weekly-objects"
    scratch.teardown()
    assert fake.objects == {}


# ---- the janitor ---------------------------------------------------------------------------------


def _iso(seconds_ago: float, now: float = NOW) -> str:
    return (datetime.fromtimestamp(now, UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _namespace(fake: FakeKubernetes, name: str, labels: dict[str, str]) -> None:
    fake.put("v1", "namespaces", {"metadata": {"name": name, "labels": labels}})


def _pod(fake: FakeKubernetes, namespace: str, name: str, phase: str, ended_ago: float | None, now: float) -> None:
    statuses = []
    if ended_ago is not None:
        terminated = {"exitCode": 0, "finishedAt": _iso(ended_ago, now)}
        statuses = [
            {
                "name": "c",
                "ready": False,
                "restartCount": 0,
                "image": "i",
                "imageID": "",
                "state": {"terminated": terminated},
            }
        ]
    pod = {"metadata": {"name": name, "creationTimestamp": _iso(90000, now)}, "spec": {"containers": [{"name": "c"}]}}
    pod["status"] = {"phase": phase, "containerStatuses": statuses}
    fake.put("v1", "pods", pod, namespace)


def _job(fake: FakeKubernetes, namespace: str, name: str, status: dict[str, Any], now: float) -> None:
    job = {
        "metadata": {"name": name, "creationTimestamp": _iso(90000, now)},
        "spec": {"template": {"spec": {"containers": []}}},
    }
    fake.put("batch/v1", "jobs", {**job, "status": status}, namespace)


def seed_janitor_world(fake: FakeKubernetes, now: float = NOW) -> None:
    ours = {"app.kubernetes.io/managed-by": "lifeboat"}
    _namespace(fake, "lifeboat-drill-old", {**ours, "lifeboat.io/expires-at": str(int(now) - 1)})
    _namespace(fake, "lifeboat-drill-fresh", {**ours, "lifeboat.io/expires-at": str(int(now) + 3600)})
    _namespace(fake, "lifeboat-drill-unlabelled", {"lifeboat.io/expires-at": "1"})
    _namespace(fake, "lifeboat-drill-bad-expiry", {**ours, "lifeboat.io/expires-at": "soon"})
    _namespace(fake, "production", {**ours, "lifeboat.io/expires-at": "1"})  # labelled, but not our prefix
    _namespace(fake, "ml-jobs", {})
    day = 86400
    _pod(fake, "ml-jobs", "done-old", "Succeeded", day + 60, now)
    _pod(fake, "ml-jobs", "failed-old", "Failed", day + 60, now)
    _pod(fake, "ml-jobs", "running-old", "Running", None, now)
    _pod(fake, "ml-jobs", "done-recent", "Succeeded", 60, now)
    _pod(fake, "elsewhere", "done-old", "Succeeded", day + 60, now)  # not a configured namespace
    _job(fake, "ml-jobs", "complete-old", {"succeeded": 1, "completionTime": _iso(day + 60, now)}, now)
    failed = {"type": "Failed", "status": "True", "lastTransitionTime": _iso(day + 60, now)}
    _job(fake, "ml-jobs", "failed-old", {"failed": 3, "conditions": [failed]}, now)
    _job(fake, "ml-jobs", "running", {"active": 1}, now)
    _job(fake, "ml-jobs", "complete-recent", {"succeeded": 1, "completionTime": _iso(60, now)}, now)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "for-real"])
def test_janitor_removes_only_expired_labelled_namespaces_and_old_finished_pods_and_jobs(
    fake: FakeKubernetes, dry_run: bool
) -> None:
    seed_janitor_world(fake)
    before = set(fake.objects)
    policy = settings(janitor_namespaces=["ml-jobs"], finished_max_age="24h")

    report = run_janitor(KubernetesApi(api_client(fake)), policy, dry_run=dry_run, clock=lambda: NOW)

    assert report.namespaces == ["lifeboat-drill-old"]
    assert report.pods == ["ml-jobs/done-old", "ml-jobs/failed-old"]
    assert report.jobs == ["ml-jobs/complete-old", "ml-jobs/failed-old"]
    assert report.counts() == {"namespaces": 1, "pods": 2, "jobs": 2}
    deletes = [(request.path, request.query) for request in fake.sent("DELETE")]
    if dry_run:
        assert deletes == [] and set(fake.objects) == before
        return
    assert deletes == [
        ("/api/v1/namespaces/lifeboat-drill-old", {"propagationPolicy": "Foreground"}),
        ("/api/v1/namespaces/ml-jobs/pods/done-old", {}),
        ("/api/v1/namespaces/ml-jobs/pods/failed-old", {}),
        ("/apis/batch/v1/namespaces/ml-jobs/jobs/complete-old", {"propagationPolicy": "Background"}),
        ("/apis/batch/v1/namespaces/ml-jobs/jobs/failed-old", {"propagationPolicy": "Background"}),
    ]
    assert fake.sent("GET")[0].query == {"labelSelector": "app.kubernetes.io/managed-by=lifeboat"}


def test_lifeboat_janitor_cleans_the_cluster_too_when_scratch_is_kubernetes(fake: FakeKubernetes, tmp_path: Path) -> None:
    seed_janitor_world(fake, now=time.time())  # the CLI's clock is the real one
    kubeconfig = write_kubeconfig(fake, tmp_path)
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source("main", "etcd", endpoints=["http://127.0.0.1:1"])
    janitor = {"kubeconfig": kubeconfig, "janitor_namespaces": ["ml-jobs"], "finished_max_age": "1h"}
    policy.scratch("kubernetes", local={"workdir": tmp_path / "scratch"}, kubernetes=janitor)
    config = policy.write(tmp_path / "policy.yaml")
    result = CliRunner().invoke(cli, ["--config", str(config), "janitor", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    removed = json.loads(result.stdout)["removed"]
    assert "namespace lifeboat-drill-old" in removed and "namespace lifeboat-drill-fresh" not in removed
    assert {"pod ml-jobs/done-old", "pod ml-jobs/failed-old", "job ml-jobs/complete-old", "job ml-jobs/failed-old"} <= set(
        removed
    )
    assert ("v1", "namespaces", "", "lifeboat-drill-old") not in fake.objects


# ---- command checks: a Job in the drill namespace --------------------------------------------------

JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
SMOKE_LOG = "".join(f"smoke line {n}\n" for n in range(30))


def smoke_check(**overrides: Any) -> CommandCheck:
    values: dict[str, Any] = {"name": "smoke_test", "command": ["/smoke", "--all"], "timeout": "2m"}
    return CommandCheck.model_validate({"image": "registry.corp/ml-smoke:1", **values, **overrides})


def run_check(scratch: KubernetesScratchEnvironment, check: CommandCheck, env: dict[str, str]) -> Any:
    """The check as the drill runs it: one step, its record as the report shows it."""
    steps: list[Any] = []
    with step(steps, f"check:{check.name}") as outcome:
        run_command_check(check, env, [], outcome, scratch.run_command)
    return steps[0]


def test_a_command_check_is_a_job_of_the_drill_namespace_reaching_the_copy_by_service_dns(fake: FakeKubernetes) -> None:
    fake.on_create += [statefulset_pods(ready=True), job_runs({"/smoke": JobEnd(exit_code=0, log=SMOKE_LOG)})]
    clock = FakeClock()
    scratch = environment(fake, clock, access="port-forward")  # this process reaches the copy on 127.0.0.1
    slot = scratch.slot("warehouse", "clickhouse", HEADER)
    assert slot.restore_options().get("to_host") == "127.0.0.1"
    seen = scratch.command_view(slot).restore_options()  # what the Job's pod reaches instead
    assert (seen.get("to_host"), seen.get("to_port"), seen.get("to_http_port")) == (f"clickhouse-1.{NS}.svc", 9000, 8123)
    credentials = slot.restore_options()
    env = {
        "LIFEBOAT_DRILL": "nightly",
        "LIFEBOAT_WAREHOUSE_CLICKHOUSE_HOST": str(seen.get("to_host")),
        "LIFEBOAT_WAREHOUSE_CLICKHOUSE_USER": str(credentials.get("to_user")),
        "LIFEBOAT_WAREHOUSE_CLICKHOUSE_PASSWORD": str(credentials.get("to_password")),
    }

    record = run_check(scratch, smoke_check(), env)
    removed = scratch.teardown()

    assert (record.verdict, record.message) == (Status.PASS, "/smoke --all exited 0 (expected 0)")
    assert record.details["output"] == [f"smoke line {n}" for n in range(10, 30)]  # the tail, as on local scratch
    (created,) = [request for request in fake.sent("POST") if request.path == JOBS]
    job = created.body
    assert manifest_problems(job) == []
    labels = {"app.kubernetes.io/managed-by": "lifeboat", "lifeboat.io/drill": "nightly", "lifeboat.io/check": "smoke_test"}
    assert job["metadata"] == {"name": "check-1-smoke-test", "namespace": NS, "labels": labels}
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (0, 120, 3600)
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == labels
    assert (pod["restartPolicy"], pod["automountServiceAccountToken"], pod["enableServiceLinks"]) == ("Never", False, False)
    (container,) = pod["containers"]
    assert (container["image"], container["command"]) == ("registry.corp/ml-smoke:1", ["/smoke", "--all"])
    assert "args" not in container
    password = str(credentials.get("to_password"))
    assert container["env"] == [
        {"name": "LIFEBOAT_DRILL", "value": "nightly"},
        {"name": "LIFEBOAT_WAREHOUSE_CLICKHOUSE_HOST", "value": f"clickhouse-1.{NS}.svc"},
        {
            "name": "LIFEBOAT_WAREHOUSE_CLICKHOUSE_PASSWORD",  # from the run's Secret: never in the Job's spec
            "valueFrom": {"secretKeyRef": {"name": "lifeboat-scratch-clickhouse", "key": "CLICKHOUSE_PASSWORD"}},
        },
        {"name": "LIFEBOAT_WAREHOUSE_CLICKHOUSE_USER", "value": str(credentials.get("to_user"))},
    ]
    assert password not in json.dumps(job)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # Followed to the end, its pod's log read; teardown deletes it (Background: its pod goes with it).
    job_url = f"{JOBS}/check-1-smoke-test"
    assert ("GET", job_url) in calls(fake)
    (listed,) = [request for request in fake.sent("GET") if request.path == f"{CORE}/pods" and request.query]
    assert listed.query == {"labelSelector": "job-name=check-1-smoke-test"}
    (deleted,) = [request for request in fake.sent("DELETE") if request.path == job_url]
    assert deleted.query == {"propagationPolicy": "Background"}
    assert calls(fake).index(("DELETE", job_url)) < calls(fake).index(("DELETE", f"/api/v1/namespaces/{NS}"))
    assert removed[0] == f"job check-1-smoke-test in namespace {NS}"


@pytest.mark.parametrize(
    ("end", "verdict", "message"),
    [
        (JobEnd(exit_code=3, log=SMOKE_LOG), Status.FAIL, "/smoke --all exited with code 3 (expected 0)"),
        (
            JobEnd(waiting="ErrImagePull"),
            Status.ERROR,
            "could not run /smoke: Job check-1-smoke-test in namespace "
            f"{NS} cannot start its container: ErrImagePull: "
            'Back-off pulling image "registry.corp/ml-smoke:1"',
        ),
        (
            JobEnd(deadline=True, log=SMOKE_LOG),
            Status.ERROR,
            f"could not run /smoke: Job check-1-smoke-test in namespace {NS} did not finish within the check's "
            "timeout 2m (DeadlineExceeded: Job was active longer than specified deadline)",
        ),
        (
            JobEnd(start_error='exec: "/smoke": stat /smoke: no such file or directory'),
            Status.ERROR,
            f"could not run /smoke: Job check-1-smoke-test in namespace {NS}: its program did not start: "
            'exec: "/smoke": stat /smoke: no such file or directory',
        ),
    ],
    ids=["non-zero-exit", "image-pull-error", "deadline-exceeded", "program-missing"],
)
def test_a_command_check_job_that_fails_is_a_fail_and_one_that_cannot_run_an_error(
    fake: FakeKubernetes, end: JobEnd, verdict: Status, message: str
) -> None:
    fake.on_create += [statefulset_pods(ready=True), job_runs({"/smoke": end})]
    scratch = environment(fake, FakeClock())
    scratch.slot("objects", "s3", HEADER)

    record = run_check(scratch, smoke_check(), {"LIFEBOAT_DRILL": "nightly"})
    removed = scratch.teardown()

    assert (record.verdict, record.message) == (verdict, message)
    expected_tail = [f"smoke line {n}" for n in range(10, 30)] if end.log else []
    assert record.details["output"] == expected_tail
    assert ("DELETE", f"{JOBS}/check-1-smoke-test") in calls(fake)
    assert removed[0] == f"job check-1-smoke-test in namespace {NS}"


def test_a_command_check_job_that_never_ends_is_an_error_once_its_timeout_has_passed(fake: FakeKubernetes) -> None:
    fake.on_create += [statefulset_pods(ready=True), job_runs({})]  # the Job stays active, its pod Pending
    clock = FakeClock()
    scratch = environment(fake, clock)
    scratch.slot("objects", "s3", HEADER)

    record = run_check(scratch, smoke_check(timeout="10s"), {})
    scratch.teardown()

    assert record.verdict is Status.ERROR
    assert record.message.startswith(
        f"could not run /smoke: Job check-1-smoke-test in namespace {NS} did not finish within the check's timeout 10s"
    )
    assert clock.now - NOW >= 10  # polled past the deadline, no longer than it and its slack
    assert ("DELETE", f"{JOBS}/check-1-smoke-test") in calls(fake)


def test_a_command_check_without_an_image_on_kubernetes_scratch_is_an_error_naming_what_to_add(
    fake: FakeKubernetes,
) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    scratch = environment(fake, FakeClock())
    scratch.slot("objects", "s3", HEADER)

    record = run_check(scratch, smoke_check(image=None), {})
    scratch.teardown()

    assert record.verdict is Status.ERROR
    assert record.message == (
        "could not run /smoke: a command check on kubernetes scratch runs as a Job in the drill namespace: "
        "add image: to drill check smoke_test, an image that has /smoke"
    )
    assert not [request for request in fake.requests if "/jobs" in request.path]


# ---- RBAC: runs last in this module (pytest keeps definition order) -------------------------------


def test_every_request_made_in_this_module_is_allowed_by_the_rbac_in_deploy() -> None:
    assert len(ALL_REQUESTS) > 50
    refused = {str(access) for request in ALL_REQUESTS if not rbac_allows(access := Access(*request.access))}
    assert refused == set()
