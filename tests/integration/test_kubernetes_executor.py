"""The ``kubernetes`` backup executor: ``Operations.backup`` in the service submits a Job, follows it
and records the outcome in the state DB as a local run would. The real ``kubernetes`` client speaks
HTTP to the fake API server of tests/k8s_fake.py; the test plays the Job controller and kubelet
(``finish_job``: the Job's status and the pod's log). RBAC in deploy/ must allow every request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_fake import FakeKubernetes, Request, api_client, finish_job, job_pods, serve
from unit.deploy.test_manifests import Access, manifest_problems, rbac_allows

from backup.repository import Repository, open_repository
from lifeboat.executor import KubernetesBackupExecutor
from lifeboat.operations import JobAborted, Operations
from lifeboat.state import RunHistory, RunKind, RunStatus, SourceLocks
from policies.errors import LifeboatError, SourceError
from policies.model import Policy

pytestmark = pytest.mark.integration

NS = "lifeboat"
SOURCE = "etcd-main"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
ALL_REQUESTS: list[Request] = []  # every request of this module, for the RBAC test at the end

SNAPSHOT = {
    "id": "etcd-main-20270115T020000Z-0a1b",
    "source": SOURCE,
    "kind": "etcd",
    "status": "good",
    "started": "2027-01-15T02:00:00+00:00",
    "finished": "2027-01-15T02:00:42+00:00",
    "seconds": 42.125,
    "bytes_read": 1048576,
    "bytes_stored": 4096,
    "chunks_new": 3,
    "chunks_reused": 250,
    "size": 1048576,
    "entries": 1,
    "anomalies": [],
    "revision": 1234,
}


class FakeClock:
    """Monotonic time that moves only when the code sleeps; ``on_sleep`` plays the cluster."""

    def __init__(self, on_sleep: Any = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve(FakeKubernetes(on_create=[job_pods()])) as running:
        running.put("v1", "namespaces", {"metadata": {"name": NS}})
        yield running
        ALL_REQUESTS.extend(running.requests)


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return Policy.model_validate(
        {
            "repository": {"url": f"file://{tmp_path / 'repo'}"},
            "state": str(tmp_path / "state" / "state.db"),
            "sources": {
                SOURCE: {
                    "kind": "etcd",
                    "endpoints": ["http://127.0.0.1:1"],  # never reached: the Job's pod takes the snapshot
                    "password": {"file": "/etc/lifeboat/secrets/etcd-password"},
                }
            },
            "executor": {"kind": "kubernetes", "kubernetes": {"poll_interval": "5s", "active_deadline": "1m"}},
        }
    )


@pytest.fixture
def history(policy: Policy) -> Iterator[RunHistory]:
    with RunHistory.open(policy.state) as opened:
        yield opened


@pytest.fixture
def repository(policy: Policy) -> Iterator[Repository]:
    with open_repository(policy.repository, create=True) as opened:
        yield opened


def operations(policy: Policy, history: RunHistory, fake: FakeKubernetes, clock: FakeClock) -> Operations:
    executor = KubernetesBackupExecutor(policy, api_client=api_client(fake), clock=clock, sleep=clock.sleep)
    return Operations(policy, history, SourceLocks(history.lock_dir), origin="service", backup_executor=executor)


def job_log(document: dict[str, Any]) -> str:
    """A pod log as kubectl shows it: the JSON log lines of stderr around the indented stdout document."""
    before = json.dumps({"event": "snapshot.started", "source": SOURCE, "level": "info"})
    after = json.dumps({"event": "backup.done", "level": "info"})
    return f"{before}\n{json.dumps(document, indent=2)}\n{after}\n"


def the_job(fake: FakeKubernetes) -> dict[str, Any]:
    created = [request.body for request in fake.sent("POST") if request.path == JOBS]
    assert len(created) == 1
    return created[0]


def test_a_job_that_succeeds_is_recorded_as_an_ok_run_with_the_pods_figures(
    fake: FakeKubernetes, policy: Policy, history: RunHistory, repository: Repository
) -> None:
    def cluster(sleeps: int) -> None:
        if sleeps == 2:  # two polls see it running, then it completes
            name = fake.of("jobs")[0]["metadata"]["name"]
            finish_job(fake, NS, name, succeeded=True, log=job_log({"snapshots": [SNAPSHOT], "errors": []}))

    clock = FakeClock(cluster)
    result = operations(policy, history, fake, clock).backup(SOURCE, repository=lambda: repository)

    run = history.runs(RunKind.BACKUP, SOURCE)[0]
    assert run.status is RunStatus.OK and run.origin == "service"
    assert run.snapshot_id == SNAPSHOT["id"] == result.header.id
    assert run.figures == SNAPSHOT  # the figures a local run records: BackupResult.as_dict()
    assert run.error is None
    job = the_job(fake)
    assert job["metadata"]["name"] == f"lifeboat-backup-etcd-main-{run.id}"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-4:] == ["run", "--source", SOURCE, "--json"]
    assert manifest_problems(job) == []
    assert clock.sleeps == [5.0, 5.0]
    name = job["metadata"]["name"]
    assert [(request.method, request.path) for request in fake.requests] == [
        ("POST", JOBS),
        ("GET", f"{JOBS}/{name}"),
        ("GET", f"{JOBS}/{name}"),
        ("GET", f"{JOBS}/{name}"),
        ("GET", f"/api/v1/namespaces/{NS}/pods"),
        ("GET", f"/api/v1/namespaces/{NS}/pods/{fake.of('pods')[0]['metadata']['name']}/log"),
    ]
    assert fake.requests[4].query["labelSelector"] == f"job-name={name}"
    assert fake.requests[5].query["container"] == "backup"
    assert fake.get("batch/v1", "jobs", name, NS) is not None  # left to ttlSecondsAfterFinished
    assert not history.open_incidents()


def test_a_suspicious_snapshot_in_the_job_is_a_suspicious_run(
    fake: FakeKubernetes, policy: Policy, history: RunHistory, repository: Repository
) -> None:
    suspicious = {**SNAPSHOT, "status": "suspicious", "anomalies": ["keys shrank by 90% (1000 -> 100)"]}

    def cluster(sleeps: int) -> None:
        name = fake.of("jobs")[0]["metadata"]["name"]
        finish_job(fake, NS, name, succeeded=True, log=job_log({"snapshots": [suspicious], "errors": []}))

    operations(policy, history, fake, FakeClock(cluster)).backup(SOURCE, repository=lambda: repository)

    run = history.runs(RunKind.BACKUP, SOURCE)[0]
    assert run.status is RunStatus.SUSPICIOUS
    assert run.figures["anomalies"] == suspicious["anomalies"]
    assert [incident.event for incident in history.open_incidents()] == ["suspicious"]


def test_a_job_that_fails_is_a_failed_run_with_the_error_and_the_log_tail(
    fake: FakeKubernetes, policy: Policy, history: RunHistory, repository: Repository
) -> None:
    error = "etcd: cannot reach http://etcd-0:2379: connection refused"
    lines = [json.dumps({"event": "snapshot.retry", "attempt": n}) for n in range(30)]
    text = "\n".join(lines) + "\n" + json.dumps({"snapshots": [], "errors": [{"source": SOURCE, "message": error}]}) + "\n"

    def cluster(sleeps: int) -> None:
        finish_job(fake, NS, fake.of("jobs")[0]["metadata"]["name"], succeeded=False, log=text)

    with pytest.raises(SourceError) as raised:
        operations(policy, history, fake, FakeClock(cluster)).backup(SOURCE, repository=lambda: repository)

    run = history.runs(RunKind.BACKUP, SOURCE)[0]
    assert run.status is RunStatus.FAILED
    assert run.error == str(raised.value)
    assert "BackoffLimitExceeded" in run.error
    assert f"{SOURCE}: {error}" in run.error
    assert lines[-1] in run.error and lines[0] not in run.error  # the last lines only
    assert [incident.event for incident in history.open_incidents()] == ["backup-failure"]
    assert fake.of("jobs"), "a failed Job is kept for inspection until its TTL"


def test_a_job_that_succeeds_without_a_result_is_a_failed_run(
    fake: FakeKubernetes, policy: Policy, history: RunHistory, repository: Repository
) -> None:
    def cluster(sleeps: int) -> None:
        finish_job(fake, NS, fake.of("jobs")[0]["metadata"]["name"], succeeded=True, log="Traceback: boom\n")

    with pytest.raises(SourceError, match="no backup JSON document"):
        operations(policy, history, fake, FakeClock(cluster)).backup(SOURCE, repository=lambda: repository)
    assert history.runs(RunKind.BACKUP, SOURCE)[0].status is RunStatus.FAILED


def test_a_job_past_its_deadline_is_deleted_and_failed(
    fake: FakeKubernetes, policy: Policy, history: RunHistory, repository: Repository
) -> None:
    clock = FakeClock()  # the Job never finishes
    with pytest.raises(SourceError, match="did not finish within its active deadline"):
        operations(policy, history, fake, clock).backup(SOURCE, repository=lambda: repository)

    assert 60 + 120 <= sum(clock.sleeps) <= 60 + 120 + 5
    assert fake.sent("DELETE")[-1].path.startswith(f"{JOBS}/lifeboat-backup-etcd-main-")
    assert fake.sent("DELETE")[-1].query["propagationPolicy"] == "Background"
    assert not fake.of("jobs")
    assert history.runs(RunKind.BACKUP, SOURCE)[0].status is RunStatus.FAILED


def test_an_aborted_service_deletes_the_job_and_records_an_interrupted_run(
    fake: FakeKubernetes, policy: Policy, history: RunHistory, repository: Repository
) -> None:
    def progress(moved: int) -> None:
        if fake.of("jobs") and fake.sent("GET"):
            raise JobAborted("backup:etcd-main: the service is stopping")

    with pytest.raises(JobAborted):
        operations(policy, history, fake, FakeClock()).backup(SOURCE, repository=lambda: repository, progress=progress)

    assert not fake.of("jobs")
    assert history.runs(RunKind.BACKUP, SOURCE)[0].status is RunStatus.INTERRUPTED


def test_the_cli_origin_backs_up_locally_even_with_the_kubernetes_executor(
    fake: FakeKubernetes, policy: Policy, history: RunHistory, repository: Repository
) -> None:
    """The Job's own pod runs `lifeboat backup run` with the same policy: it must not submit a Job."""
    executor = KubernetesBackupExecutor(policy, api_client=api_client(fake))
    cli = Operations(policy, history, SourceLocks(history.lock_dir), origin="cli", backup_executor=executor)
    with pytest.raises(LifeboatError):  # a local snapshot: here the policy's secret file is missing
        cli.backup(SOURCE, repository=lambda: repository)
    assert fake.requests == []


def test_every_request_the_executor_made_is_allowed_by_rbac() -> None:
    assert ALL_REQUESTS, "run with the other tests of this module"
    refused = {str(access) for request in ALL_REQUESTS if not rbac_allows(access := Access(*request.access))}
    assert not refused
