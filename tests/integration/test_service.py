"""``lifeboat serve`` against a real etcd and a real SMTP sink: jobs triggered now instead of waiting
for their cron time, figures on /metrics, one mail per incident, a bad reload, SIGTERM and SIGKILL
in the middle of a backup.

Every test starts its own etcd (``start_etcd``). The slow backups use an ``etcdctl`` wrapper that
sleeps before ``snapshot save``: the etcd, the repository and the service are the real ones, only
the moment of the signal is pinned down.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import ServerLogs, SmtpSink, init_repository, require_binaries
from policy_builder import PolicyBuilder
from prometheus_client.parser import text_string_to_metric_families

from backup.execute import free_port
from backup.servers import EtcdProcess, start_etcd
from drills.model import Status
from lifeboat.cli import cli
from lifeboat.logs import Redactor
from lifeboat.service.serve import LifeboatService
from lifeboat.state.records import RunKind, RunRecord, RunStatus

pytestmark = pytest.mark.integration

LIFEBOAT = Path(sys.executable).with_name("lifeboat")
FAR_AWAY = "0 0 1 1 *"  # once a year: jobs run when a test says so
WAIT = 30.0


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory, server_logs: ServerLogs) -> Iterator[EtcdProcess]:
    """An etcd of this module's own, holding a few Kubernetes-like keys."""
    require_binaries("etcd", "etcdctl")
    with start_etcd(tmp_path_factory.mktemp("service-etcd") / "data") as server:
        server_logs.register("service etcd", server.log_tail)
        for number in range(30):
            key = f"/registry/configmaps/team-{number % 3}/config-{number}".encode()
            body = json.dumps({"key": _b64(key), "value": _b64(os.urandom(48))}).encode()
            request = urllib.request.Request(f"{server.endpoint}/v3/kv/put", data=body, method="POST")
            urllib.request.urlopen(request, timeout=10).read()
        yield server


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def service_policy(
    root: Path,
    *,
    etcd: str,
    broken: str,
    smtp: SmtpSink,
    port: int,
    etcdctl: str = "etcdctl",
    grace: str = "10m",
    stop_timeout: str = "1s",
) -> PolicyBuilder:
    policy = PolicyBuilder(
        root / "repo",
        state=root / "state" / "state.db",
        prune={"schedule": FAR_AWAY, "grace": "1s"},
        check={"schedule": FAR_AWAY},
    )
    policy.service(listen=f"127.0.0.1:{port}", misfire_grace=grace, stop_timeout=stop_timeout)
    once = {"schedule": FAR_AWAY, "retention": {"keep_last": 1}}
    policy.source("k8s-etcd", "etcd", endpoints=[etcd], etcdctl=etcdctl, **once)
    policy.source("broken", "etcd", endpoints=[broken], **once)
    policy.scratch("local", local={"workdir": root / "scratch"})
    objectives = {"rto": "30m", "rpo": "1h"}
    policy.drill("nightly", schedule=FAR_AWAY, sources=["k8s-etcd"], objectives=objectives, faults=["verifier-canary"])
    return policy.email(
        "team", port=smtp.port, to=["oncall@example.org"], on=["backup-failure", "check-failure", "suspicious"]
    )


def lifeboat(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def status(config: Path) -> dict[str, Any]:
    result = lifeboat(config, "status", "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""  # not listening (yet)


def wait_until(what: str, condition: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def run_job(service: LifeboatService, job_id: str, kind: RunKind, name: str) -> RunRecord:
    """Start a job now; wait for the run it records and for the job (notifications included) to end."""
    before = [run.id for run in service.history.runs(kind, name, limit=1)]
    service.run_now(job_id)

    def finished() -> RunRecord | None:
        newest = service.history.last_run(kind, name)
        fresh = newest is not None and [newest.id] != before and newest.status is not RunStatus.RUNNING
        return newest if fresh and job_id not in service.running() else None

    return wait_until(f"a finished run of {job_id}", finished)  # type: ignore[no-any-return]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# ---- in-process: the jobs, the figures, the incidents, reloads, a restart ---------------------------


def test_the_service_runs_every_kind_of_job_exports_figures_and_mails_a_failure_once(
    tmp_path: Path, etcd: EtcdProcess, smtp_inbox: SmtpSink
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    policy = service_policy(tmp_path, etcd=etcd.endpoint, broken=dead, smtp=smtp_inbox, port=port)
    config = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    service = LifeboatService(config, redactor=Redactor())
    service.start()
    try:
        first = run_job(service, "backup:k8s-etcd", RunKind.BACKUP, "k8s-etcd")
        second = run_job(service, "backup:k8s-etcd", RunKind.BACKUP, "k8s-etcd")
        assert (first.status, second.status) == (RunStatus.OK, RunStatus.OK)
        assert second.snapshot_id and second.figures["bytes_read"] > 0 and second.origin == "service"
        prune = run_job(service, "prune", RunKind.PRUNE, "repository")
        assert prune.status is RunStatus.OK and prune.figures["forgotten"] == [first.snapshot_id]
        check = run_job(service, "check", RunKind.CHECK, "repository")
        assert check.status is RunStatus.OK and check.figures["snapshots"] == 1
        drill = run_job(service, "drill:nightly", RunKind.DRILL, "nightly")
        assert drill.status is Status.PASS, drill.figures
        assert Path(drill.figures["report_files"]["html"]).is_file()

        # A job that raises (the source is down) is recorded; the first failure is mailed, the repeat is not.
        failures = [run_job(service, "backup:broken", RunKind.BACKUP, "broken") for _ in range(2)]
        assert [run.status for run in failures] == [RunStatus.FAILED, RunStatus.FAILED]
        assert dead in (failures[0].error or "")
        [mail] = smtp_inbox.wait_for(1)
        assert mail["Subject"] == "[lifeboat] backup of broken FAILED" and dead in mail.get_content()
        code, body = http_get(f"{service.url}/healthz")
        health = json.loads(body)
        assert code == 200 and health["status"] == "ok" and health["scheduler"] == "running"
        assert len(smtp_inbox.messages) == 1  # the second failure, long finished, sent nothing

        code, body = http_get(f"{service.url}/metrics")
        figures = samples(body.decode())
        assert code == 200
        assert figures[("lifeboat_last_success_timestamp_seconds", (("source", "k8s-etcd"),))] == pytest.approx(
            second.finished.timestamp() if second.finished else 0
        )
        assert figures[("lifeboat_last_success_timestamp_seconds", (("source", "broken"),))] == 0
        assert figures[("lifeboat_backup_bytes", (("kind", "read"), ("source", "k8s-etcd")))] == second.figures["bytes_read"]
        assert figures[("lifeboat_backup_bytes", (("kind", "stored"), ("source", "k8s-etcd")))] >= 0
        assert figures[("lifeboat_backup_duration_seconds", (("source", "k8s-etcd"),))] > 0
        assert figures[("lifeboat_snapshots", (("source", "k8s-etcd"),))] == 1
        assert figures[("lifeboat_suspicious_snapshots", (("source", "k8s-etcd"),))] == 0
        assert figures[("lifeboat_drill_verdict", (("drill", "nightly"), ("source", "k8s-etcd")))] == 1
        assert figures[("lifeboat_drill_rto_seconds", (("drill", "nightly"), ("source", "k8s-etcd")))] > 0
        assert figures[("lifeboat_check_ok", ())] == 1

        # A reload with mistakes is refused and the schedule stays; a good one applies.
        jobs = health["jobs"]
        policy.copy().set("repository.prune.schedule", "every night").write(config)
        assert service.reload() is False
        health = json.loads(http_get(f"{service.url}/healthz")[1])
        assert health["jobs"] == jobs and "every night" in health["policy"]["reload_error"]
        policy.copy().set("sources.broken.endpoints", [etcd.endpoint]).write(config)
        assert service.reload() is True
        recovered = run_job(service, "backup:broken", RunKind.BACKUP, "broken")
        assert recovered.status is RunStatus.OK
        _, note = smtp_inbox.wait_for(2)
        assert note["Subject"] == "[lifeboat] recovered: backups of broken succeed again"
    finally:
        assert service.stop() is True

    # A restart: the figures come back from the state DB.
    again = LifeboatService(config, redactor=Redactor())
    again.start()
    try:
        restored = samples(http_get(f"{again.url}/metrics")[1].decode())
        for key in (
            ("lifeboat_last_success_timestamp_seconds", (("source", "k8s-etcd"),)),
            ("lifeboat_backup_bytes", (("kind", "read"), ("source", "k8s-etcd"))),
            ("lifeboat_drill_verdict", (("drill", "nightly"), ("source", "k8s-etcd"))),
            ("lifeboat_drill_rto_seconds", (("drill", "nightly"), ("source", "k8s-etcd"))),
        ):
            assert restored[key] == figures[key], key
        assert restored[("lifeboat_last_success_timestamp_seconds", (("source", "broken"),))] > 0
    finally:
        assert again.stop() is True
    document = status(config)
    [etcd_status, broken_status] = document["sources"]
    assert etcd_status["snapshots"] == 1 and etcd_status["last_success"]["snapshot_id"] == second.snapshot_id
    assert broken_status["last_failure"]["status"] == "failed" and broken_status["last_run"]["status"] == "ok"
    assert document["drills"][0]["last_verdict"] == "PASS" and document["incidents"] == []
    assert all(len(item["next_runs"]) == 3 for item in document["sources"])


def test_the_service_fails_a_backup_into_a_missing_repository_and_creates_none(
    tmp_path: Path, etcd: EtcdProcess, smtp_inbox: SmtpSink
) -> None:
    """Only `lifeboat repo init` creates a repository: a typo in repository.url must not start a new,
    empty one. The job fails (recorded, mailed) saying how to create it."""
    policy = service_policy(tmp_path, etcd=etcd.endpoint, broken=etcd.endpoint, smtp=smtp_inbox, port=free_port())
    config = policy.write(tmp_path / "lifeboat.yaml")
    service = LifeboatService(config, redactor=Redactor())
    service.start()
    try:
        run = run_job(service, "backup:k8s-etcd", RunKind.BACKUP, "k8s-etcd")
    finally:
        assert service.stop() is True
    assert run.status is RunStatus.FAILED and "lifeboat repo init" in (run.error or "")
    assert not (tmp_path / "repo").exists()
    [mail] = smtp_inbox.wait_for(1)
    assert "lifeboat repo init" in mail.get_content()


def test_the_service_runs_a_restore_point_on_its_schedule_beside_its_members_own_backups(
    tmp_path: Path, etcd: EtcdProcess, smtp_inbox: SmtpSink, s3_server: Any, s3_bucket: str
) -> None:
    """A restore point's job runs what `backup run --restore-point` runs: a complete restore point of
    etcd and S3 (moto) committed, recorded as a restore-point run. Started at the same moment as the
    etcd source's own backup job, both commit (the source lock makes one wait for the other). A restore
    point whose member fails is recorded failed, and the member's failure is mailed once."""
    s3_server.client().put_object(Bucket=s3_bucket, Key="models/m0.bin", Body=os.urandom(500))
    dead = f"http://127.0.0.1:{free_port()}"
    policy = service_policy(tmp_path, etcd=etcd.endpoint, broken=dead, smtp=smtp_inbox, port=free_port())
    keys = {"access_key_id": "testing", "secret_access_key": "testing"}
    policy.source("models", "s3", endpoint_url=s3_server.endpoint_url, **keys, buckets=[s3_bucket])
    policy.set(
        "restore_points",
        {
            "platform": {"sources": ["k8s-etcd", "models"], "schedule": FAR_AWAY},
            "half-broken": {"sources": ["models", "broken"], "schedule": FAR_AWAY},
        },
    )
    config = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    service = LifeboatService(config, redactor=Redactor())
    service.start()
    try:
        scheduled = {job["id"]: job["schedule"] for job in service.jobs()}
        assert scheduled["restore-point:platform"] == FAR_AWAY and scheduled["backup:k8s-etcd"] == FAR_AWAY
        own_before = [run.id for run in service.history.runs(RunKind.BACKUP, "k8s-etcd", limit=1)]
        service.run_now("backup:k8s-etcd")  # the member's own job, at the same moment as the restore point's
        point = run_job(service, "restore-point:platform", RunKind.RESTORE_POINT, "platform")
        assert point.status is RunStatus.OK and point.origin == "service", point.error
        own = wait_until(
            "the etcd source's own backup",
            lambda: (
                [run for run in service.history.runs(RunKind.BACKUP, "k8s-etcd", limit=3) if run.id not in own_before]
                if "backup:k8s-etcd" not in service.running()
                else None
            ),
        )
        assert {run.status for run in own} == {RunStatus.OK}, [run.error for run in own]
        assert len(own) == 2  # one for the restore point, one of the source's own schedule

        failed = [run_job(service, "restore-point:half-broken", RunKind.RESTORE_POINT, "half-broken") for _ in range(2)]
        assert [run.status for run in failed] == [RunStatus.FAILED, RunStatus.FAILED]
        assert "broken" in (failed[0].error or "")
        [mail] = smtp_inbox.wait_for(1)
        assert mail["Subject"] == "[lifeboat] backup of broken FAILED"
    finally:
        assert service.stop() is True
    assert len(smtp_inbox.messages) == 1  # the repeat, and the failed restore point itself, mailed nothing more

    listed = lifeboat(config, "restore-point", "list", "--json")
    assert listed.exit_code == 0, listed.output
    points = {item["name"]: item for item in json.loads(listed.stdout)["restore_points"]}
    assert points["platform"]["status"] == "complete" and points["platform"]["id"] == point.snapshot_id
    assert sorted(member["source"] for member in points["platform"]["members"]) == ["k8s-etcd", "models"]
    assert all(member["snapshot"] for member in points["platform"]["members"])
    assert points["half-broken"]["status"] == "failed"


def test_a_restore_point_that_cannot_be_committed_is_mailed_once_and_its_recovery_noted(
    tmp_path: Path, etcd: EtcdProcess, smtp_inbox: SmtpSink
) -> None:
    """Every member committed but the manifest cannot be written (a file where the repository's
    restore-points/platform directory goes): the run fails, one mail; the repeat is quiet; the next
    complete restore point closes the incident with a recovery note."""
    policy = service_policy(tmp_path, etcd=etcd.endpoint, broken=etcd.endpoint, smtp=smtp_inbox, port=free_port())
    policy.set("restore_points", {"platform": {"sources": ["k8s-etcd"], "schedule": FAR_AWAY}})
    config = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    blocker = tmp_path / "repo" / "restore-points" / "platform"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way\n")
    service = LifeboatService(config, redactor=Redactor())
    service.start()
    try:
        failed = [run_job(service, "restore-point:platform", RunKind.RESTORE_POINT, "platform") for _ in range(2)]
        assert [run.status for run in failed] == [RunStatus.FAILED, RunStatus.FAILED]
        [mail] = smtp_inbox.wait_for(1)
        assert mail["Subject"] == "[lifeboat] restore point platform FAILED"
        assert "restore-points" in (failed[0].error or ""), failed[0].error
        assert "restore-points" in mail.get_content()
        assert service.history.last_run(RunKind.BACKUP, "k8s-etcd").status is RunStatus.OK  # type: ignore[union-attr]
        blocker.unlink()
        recovered = run_job(service, "restore-point:platform", RunKind.RESTORE_POINT, "platform")
        assert recovered.status is RunStatus.OK, recovered.error
        _, note = smtp_inbox.wait_for(2)
        assert note["Subject"] == "[lifeboat] recovered: backups of restore point platform succeed again"
    finally:
        assert service.stop() is True
    assert len(smtp_inbox.messages) == 2


# ---- `lifeboat serve` as a process: signals ---------------------------------------------------------


def slow_etcdctl(root: Path, seconds: int = 30) -> tuple[Path, Path]:
    """An etcdctl that, for ``snapshot save``, touches a marker then sleeps before doing the real thing."""
    marker = root / "saving"
    wrapper = root / "slow-etcdctl"
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = snapshot ] && [ "$2" = save ]; then touch {marker}; sleep {seconds}; fi\n'
        'exec etcdctl "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, marker


def start_serve(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``lifeboat serve`` in a session of its own (so a test can kill it with everything it started)."""
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [str(LIFEBOAT), "--config", str(config), "--log-format", "json", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )


def events(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_sigterm_during_a_backup_aborts_it_cleanly_and_a_bad_reload_changes_nothing(
    tmp_path: Path, etcd: EtcdProcess, smtp_inbox: SmtpSink
) -> None:
    wrapper, marker = slow_etcdctl(tmp_path)
    port = free_port()
    good = service_policy(
        tmp_path, etcd=etcd.endpoint, broken=etcd.endpoint, smtp=smtp_inbox, port=port, etcdctl=str(wrapper)
    )
    config = init_repository(good.write(tmp_path / "lifeboat.yaml"))
    log = tmp_path / "serve.log"
    process = start_serve(config, log, "--run-now", "backup:k8s-etcd")
    try:
        wait_until("the backup to reach etcdctl snapshot save", marker.exists)
        assert len(list((tmp_path / "repo" / "locks").iterdir())) == 1  # the backup's repository lock
        jobs = json.loads(http_get(f"http://127.0.0.1:{port}/healthz")[1])["jobs"]

        good.copy().set("sources.k8s-etcd.retention", {"keep_last": 0}).write(config)
        refused = lifeboat(config, "serve", "--reload")  # checks the file first: nothing is sent
        assert refused.exit_code == 2 and "sources.k8s-etcd.retention" in refused.stderr
        process.send_signal(signal.SIGHUP)  # the service checks it too
        rejected = wait_until(
            "the reload to be refused", lambda: [e for e in events(log) if e.get("event") == "policy.reload_rejected"]
        )
        assert any("sources.k8s-etcd.retention" in error for error in rejected[0]["errors"])
        code, body = http_get(f"http://127.0.0.1:{port}/healthz")
        health = json.loads(body)
        assert code == 200 and health["jobs"] == jobs and health["running"] == ["backup:k8s-etcd"]
        assert len(rejected) == 1 and "retention" in health["policy"]["reload_error"]
        good.write(config)
        reload = lifeboat(config, "serve", "--reload")
        assert reload.exit_code == 0 and f"(pid {process.pid})" in reload.stdout
        wait_until("the reload", lambda: any(e.get("event") == "policy.reloaded" for e in events(log)))

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT) == 0
    finally:
        kill_group(process)
    assert list((tmp_path / "repo" / "locks").iterdir()) == []
    assert {"service.aborting", "job.aborted", "service.stopped"} <= {e.get("event") for e in events(log)}
    check = lifeboat(config, "check")
    assert check.exit_code == 0, check.output
    last = status(config)["sources"][0]["last_run"]
    assert last["status"] == "interrupted" and last["error"] == "aborted: the service stopped"
    assert smtp_inbox.messages == []  # an aborted backup is no backup failure


def test_sigterm_lets_a_backup_that_ends_within_the_stop_timeout_finish(
    tmp_path: Path, etcd: EtcdProcess, smtp_inbox: SmtpSink
) -> None:
    wrapper, marker = slow_etcdctl(tmp_path, seconds=2)
    port = free_port()
    policy = service_policy(
        tmp_path,
        etcd=etcd.endpoint,
        broken=etcd.endpoint,
        smtp=smtp_inbox,
        port=port,
        etcdctl=str(wrapper),
        stop_timeout="60s",
    )
    config = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    log = tmp_path / "serve.log"
    process = start_serve(config, log, "--run-now", "backup:k8s-etcd")
    try:
        wait_until("the backup to reach etcdctl snapshot save", marker.exists)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT) == 0
    finally:
        kill_group(process)
    assert "service.aborting" not in {e.get("event") for e in events(log)}
    document = status(config)
    last = document["sources"][0]["last_run"]
    assert last["status"] == "ok" and document["sources"][0]["snapshots"] == 1
    assert list((tmp_path / "repo" / "locks").iterdir()) == []


def test_a_service_killed_mid_backup_shows_an_interrupted_run_after_a_restart(
    tmp_path: Path, etcd: EtcdProcess, smtp_inbox: SmtpSink
) -> None:
    wrapper, marker = slow_etcdctl(tmp_path)
    port = free_port()
    policy = service_policy(
        tmp_path, etcd=etcd.endpoint, broken=etcd.endpoint, smtp=smtp_inbox, port=port, etcdctl=str(wrapper)
    )
    config = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    log = tmp_path / "serve.log"
    process = start_serve(config, log, "--run-now", "backup:k8s-etcd")
    try:
        wait_until("the backup to reach etcdctl snapshot save", marker.exists)
    finally:
        kill_group(process)  # SIGKILL: no finally block runs, the run stays "running" in the DB

    restarted = start_serve(config, log)
    try:
        wait_until("the restarted service", lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200)
        run = status(config)["sources"][0]["last_run"]
        assert run["status"] == "interrupted" and "ended first" in run["error"]
        assert run["pid"] == process.pid
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=WAIT) == 0
    finally:
        kill_group(restarted)
