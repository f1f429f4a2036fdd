"""The ``kubernetes`` scratch environment and janitor, the real ``kubernetes`` client speaking HTTP to
the fake API server of tests/k8s_fake.py (no real cluster can run here). Asserts the exact requests:
what a real API server would be asked to do, and that RBAC in deploy/ allows every one of them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from k8s_fake import FakeKubernetes, Request, api_client, serve, statefulset_pods
from unit.deploy.test_manifests import Access, rbac_allows

from drills.janitor_k8s import run_janitor
from drills.scratch import make_scratch
from drills.scratch.kubernetes import Credentials, KubernetesApi, KubernetesScratchEnvironment, TargetClients
from drills.scratch.local import ScratchError
from lifeboat.cli import cli
from policies.model import KubernetesScratch, Scratch

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


def environment(
    fake: FakeKubernetes, clock: FakeClock, *, clients: TargetClients | None = None, **overrides: Any
) -> KubernetesScratchEnvironment:
    return KubernetesScratchEnvironment(
        settings(**overrides),
        RUN_ID,
        drill="nightly",
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
    assert (options.to_host, options.to_port, options.to_database) == (f"clickhouse-1.{NS}.svc", 9000, "restored")
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


def test_etcd_slot_restores_in_init_containers_and_waits_after_restore(fake: FakeKubernetes) -> None:
    fake.on_create.append(statefulset_pods(ready=True))
    clock = FakeClock()
    scratch = environment(fake, clock)
    slot = scratch.slot("etcd-main", "etcd", HEADER)
    assert calls(fake) == [*FENCES, *COPY]  # no readiness wait before the restore; no credentials Secret
    slot.after_restore()
    assert calls(fake)[-1] == ("GET", f"{CORE}/pods/etcd-1-0")
    pod = fake.requests[5].body["spec"]["template"]["spec"]
    assert "envFrom" not in pod["containers"][0]
    fetch, restore = pod["initContainers"]
    assert fetch["args"] == ["--snapshot", HEADER.id, "--to-file", "/restore/snapshot.db", "--yes"]
    assert "etcdutl snapshot restore /restore/snapshot.db" in restore["command"][-1]
    assert slot.verify_target().endpoint == f"http://etcd-1.{NS}.svc:2379"
    for fault in (slot.restore_options, slot.stage_disaster, slot.tamper):
        with pytest.raises(ScratchError, match="not implemented on kubernetes scratch: etcd is restored by"):
            fault()
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
    assert (clickhouse.to_host, clickhouse.to_port, clickhouse.to_http_port) == (f"clickhouse-1.{NS}.svc", 9000, 8123)
    assert (clickhouse.to_user, clickhouse.to_password, clickhouse.yes) == (USER, PASSWORD, True)
    assert again.restore_options().to_password == PASSWORD
    s3 = objects.restore_options()
    assert (s3.to_endpoint, s3.to_bucket) == (f"http://s3-2.{NS}.svc:9000", "restored")
    assert (s3.to_access_key_id, s3.to_secret_access_key) == ("lifeboat-t3000000", "t4".ljust(48, "0"))
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


def test_port_forward_access_is_refused_until_implemented(fake: FakeKubernetes) -> None:
    scratch = environment(fake, FakeClock(), access="port-forward")
    with pytest.raises(ScratchError, match="port-forward is not implemented"):
        scratch.slot("warehouse", "clickhouse", HEADER)
    assert scratch.teardown() == [] and fake.requests == []


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
    scratch = make_scratch(policy, RUN_ID, drill="weekly-objects")
    assert isinstance(scratch, KubernetesScratchEnvironment)
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
    config = tmp_path / "policy.yaml"
    config.write_text(
        f"state: {tmp_path / 'state.db'}\n"
        f"repository: {{url: 'file://{tmp_path / 'repo'}'}}\n"
        "sources: {main: {kind: etcd, endpoints: ['http://127.0.0.1:1']}}\n"
        f"scratch: {{kind: kubernetes, local: {{workdir: '{tmp_path / 'scratch'}'}}, "
        f"kubernetes: {{kubeconfig: '{kubeconfig}', janitor_namespaces: [ml-jobs], finished_max_age: 1h}}}}\n"
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "janitor", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    removed = json.loads(result.stdout)["removed"]
    assert "namespace lifeboat-drill-old" in removed and "namespace lifeboat-drill-fresh" not in removed
    assert {"pod ml-jobs/done-old", "pod ml-jobs/failed-old", "job ml-jobs/complete-old", "job ml-jobs/failed-old"} <= set(
        removed
    )
    assert ("v1", "namespaces", "", "lifeboat-drill-old") not in fake.objects


# ---- RBAC: runs last in this module (pytest keeps definition order) -------------------------------


def test_every_request_made_in_this_module_is_allowed_by_the_rbac_in_deploy() -> None:
    assert len(ALL_REQUESTS) > 50
    refused = {str(access) for request in ALL_REQUESTS if not rbac_allows(access := Access(*request.access))}
    assert refused == set()
