"""The ``kubernetes`` backup executor: ``Operations.backup`` in the service submits a Job, follows it
and records the outcome in the state DB as a local run would. The real ``kubernetes`` client speaks
HTTP to the fake API server of tests/k8s_fake.py; the test plays the Job controller and kubelet
(``finish_job``: the Job's status and the pod's log). RBAC in deploy/ must allow every request.

A sharded source (``executor.kubernetes.shards``) is N Jobs whose pods the test plays by running the
Job's own ``lifeboat backup run --shard I/N --part-of RUN`` against the real S3 server; the service
merges their parts into one snapshot, or fails the run naming the failed shard."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import S3Endpoint
from helpers import init_repository
from k8s_fake import FakeKubernetes, Request, api_client, finish_job, job_pods, serve
from policy_builder import PolicyBuilder
from unit.deploy.test_manifests import Access, manifest_problems, parse_invocation, rbac_allows

from backup.repository import Repository, open_repository
from backup.repository.maintenance import check as check_repository
from lifeboat.cli import cli
from lifeboat.executor import KubernetesBackupExecutor
from lifeboat.operations import Operations
from lifeboat.service.abort import JobAborted
from lifeboat.state.history import RunHistory
from lifeboat.state.records import RunKind, RunStatus
from lifeboat.state.source_locks import SourceLocks
from policies.errors import LifeboatError, SourceError
from policies.loader import load_policy
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


@pytest.mark.parametrize("exit_4_fails_the_job", [True, False])
def test_a_suspicious_snapshot_in_the_job_is_a_suspicious_run(
    fake: FakeKubernetes, policy: Policy, history: RunHistory, repository: Repository, exit_4_fails_the_job: bool
) -> None:
    """The pod's `backup run` exits 4 for a suspicious snapshot: the Job's podFailurePolicy fails it
    without a retry, and the snapshot it committed is still the run's (a cluster without pod failure
    policies retries and may complete it)."""
    suspicious = {**SNAPSHOT, "status": "suspicious", "anomalies": ["keys shrank by 90% (1000 -> 100)"]}

    def cluster(sleeps: int) -> None:
        job = fake.of("jobs")[0]
        [rule] = job["spec"]["podFailurePolicy"]["rules"]
        assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [4]
        log = job_log({"snapshots": [suspicious], "errors": []})
        finish_job(fake, NS, job["metadata"]["name"], succeeded=not exit_4_fails_the_job, log=log)

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


# ---- shards: N Jobs, one merged snapshot ---------------------------------------------------------

SHARDED = "models"


@pytest.fixture
def sharded_config(tmp_path: Path, s3_server: S3Endpoint) -> Path:
    """A policy whose S3 source of three buckets runs as three shard Jobs (the Jobs' pods, played by
    the test, run the CLI with this same file)."""
    client = s3_server.client()
    buckets = [f"sharded-{number}-{uuid.uuid4().hex[:8]}" for number in range(3)]
    for number, bucket in enumerate(buckets):
        client.create_bucket(Bucket=bucket)
        for index in range(number + 2):
            client.put_object(Bucket=bucket, Key=f"object-{index}", Body=f"{bucket}/{index}".encode() * 100)
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state" / "state.db")
    keys = {"access_key_id": "testing", "secret_access_key": "testing"}
    policy.source(SHARDED, "s3", endpoint_url=s3_server.endpoint_url, **keys, buckets=buckets)
    policy.executor("kubernetes", kubernetes={"poll_interval": "5s", "active_deadline": "1m", "shards": {SHARDED: 3}})
    return init_repository(policy.write(tmp_path / "lifeboat.yaml"))


def run_pod(config: Path, job: dict[str, Any]) -> str:
    """What the Job's pod prints: its `lifeboat` command run here, with the test's policy file."""
    args = list(job["spec"]["template"]["spec"]["containers"][0]["args"])
    args[args.index("--config") + 1] = str(config)
    aws: dict[str, str | None] = {name: None for name in os.environ if name.startswith("AWS_")}
    result = CliRunner().invoke(cli, args, env={**aws, "LIFEBOAT_NOTIFICATIONS": "off"}, catch_exceptions=False)
    return result.stdout


def shard_jobs(fake: FakeKubernetes) -> list[dict[str, Any]]:
    return [request.body for request in fake.sent("POST") if request.path == JOBS]


def test_a_sharded_source_runs_one_job_per_shard_and_records_one_merged_snapshot(
    fake: FakeKubernetes, sharded_config: Path
) -> None:
    policy = load_policy(sharded_config)

    def cluster(sleeps: int) -> None:  # the pods run one after the other, the Jobs finish together
        if sleeps == 2:
            for job in fake.of("jobs"):
                finish_job(fake, NS, job["metadata"]["name"], succeeded=True, log=run_pod(sharded_config, job))

    clock = FakeClock(cluster)
    with RunHistory.open(policy.state) as history, open_repository(policy.repository, create=True) as repository:
        result = operations(policy, history, fake, clock).backup(SHARDED, repository=lambda: repository)
        runs = history.runs(RunKind.BACKUP, SHARDED)
        listed = repository.list_snapshots(SHARDED)
        parts = repository.list_parts()
        check = check_repository(repository, read_data=1.0)

    jobs = shard_jobs(fake)
    assert [job["metadata"]["name"] for job in jobs] == [f"lifeboat-backup-models-{runs[0].id}-{i}of3" for i in (1, 2, 3)]
    runs_of_parts = set()
    for index, job in enumerate(jobs, start=1):
        assert manifest_problems(job) == []
        container = job["spec"]["template"]["spec"]["containers"][0]
        invocation = parse_invocation([*container["command"], *container["args"]])  # the CLI contract's words
        assert invocation.command == ("backup", "run")
        assert invocation.options["--shard"] == f"{index}/3" and "--json" in invocation.options
        runs_of_parts.add(invocation.options["--part-of"])
        assert job["metadata"]["labels"]["lifeboat.io/shard"] == f"{index}of3"
    assert len(runs_of_parts) == 1 and runs_of_parts.pop().startswith(f"{runs[0].id}-")
    assert [run.status for run in runs] == [RunStatus.OK]  # one run, not one per shard
    assert runs[0].snapshot_id == result.header.id == listed[0].id and len(listed) == 1
    assert result.figures["shards"] == 3 and result.figures["objects_listed"] == 2 + 3 + 4
    assert runs[0].figures["objects_downloaded"] == 9
    assert parts == [] and check.ok and check.snapshots == 1
    assert clock.sleeps == [5.0, 5.0]


def test_a_failed_shard_fails_the_run_names_the_shard_and_leaves_nothing(fake: FakeKubernetes, sharded_config: Path) -> None:
    policy = load_policy(sharded_config)
    error = "source 'models': cannot read s3://bucket/object-1: SlowDown"
    lines = [json.dumps({"event": "s3.retry", "attempt": n}) for n in range(30)]
    failed_log = "\n".join([*lines, json.dumps({"snapshots": [], "errors": [{"source": SHARDED, "message": error}]})])

    def cluster(sleeps: int) -> None:  # shard 1 commits its part and shard 2 fails; shard 3 still runs
        jobs = {job["metadata"]["name"][-4:]: job for job in fake.of("jobs")}
        finish_job(fake, NS, jobs["1of3"]["metadata"]["name"], succeeded=True, log=run_pod(sharded_config, jobs["1of3"]))
        finish_job(fake, NS, jobs["2of3"]["metadata"]["name"], succeeded=False, log=failed_log)

    with RunHistory.open(policy.state) as history, open_repository(policy.repository, create=True) as repository:
        with pytest.raises(SourceError) as raised:
            operations(policy, history, fake, FakeClock(cluster)).backup(SHARDED, repository=lambda: repository)
        runs = history.runs(RunKind.BACKUP, SHARDED)
        listed = repository.list_snapshots(SHARDED)
        parts = repository.list_parts()
        incidents = [incident.event for incident in history.open_incidents()]

    message = str(raised.value)
    assert message.startswith("sharded backup of 'models' failed; nothing committed")
    assert "shard 2/3: backup Job lifeboat/lifeboat-backup-models-" in message and "BackoffLimitExceeded" in message
    assert f"{SHARDED}: {error}" in message and lines[-1] in message and lines[0] not in message
    assert "shard 1/3" not in message and "shard 3/3" not in message
    assert [run.status for run in runs] == [RunStatus.FAILED] and runs[0].error == message
    assert incidents == ["backup-failure"]
    assert listed == [] and parts == [], "the part of shard 1 is discarded with the run"
    deleted = [request.path.rsplit("/", 1)[-1] for request in fake.sent("DELETE")]
    assert [name[-4:] for name in deleted] == ["3of3"], "only the shard still running is deleted"
    assert {job["metadata"]["name"][-4:] for job in fake.of("jobs")} == {"1of3", "2of3"}


def test_an_aborted_sharded_run_deletes_every_shard_job(fake: FakeKubernetes, sharded_config: Path) -> None:
    policy = load_policy(sharded_config)

    def progress(moved: int) -> None:
        if len(fake.of("jobs")) == 3:
            raise JobAborted("backup:models: the service is stopping")

    with RunHistory.open(policy.state) as history, open_repository(policy.repository, create=True) as repository:
        with pytest.raises(JobAborted):
            operations(policy, history, fake, FakeClock()).backup(SHARDED, repository=lambda: repository, progress=progress)
        assert history.runs(RunKind.BACKUP, SHARDED)[0].status is RunStatus.INTERRUPTED
        assert repository.list_parts() == [] and repository.list_snapshots() == []
    assert not fake.of("jobs") and len(fake.sent("DELETE")) == 3


def test_every_request_the_executor_made_is_allowed_by_rbac() -> None:
    assert ALL_REQUESTS, "run with the other tests of this module"
    refused = {str(access) for request in ALL_REQUESTS if not rbac_allows(access := Access(*request.access))}
    assert not refused
