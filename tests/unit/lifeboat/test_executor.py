"""The backup Job of the ``kubernetes`` executor (lifeboat/executor.py), as built from the in-cluster
policy of deploy/kubernetes/base: a valid ``batch/v1`` Job for the client's models, admitted by Pod
Security "restricted" in the lifeboat namespace, running the CLI contract's ``backup run`` with the
ConfigMap and Secret mounted where the policy reads them; and the pod's JSON read back."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from backup.jobs import BackupResult
from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import WriteStats
from lifeboat.executor import backup_document, backup_job_manifest, job_name, result_from_dict
from policies.loader import parse_policy
from policies.model import Executor, Policy
from unit.deploy.test_manifests import (
    ROOT,
    RUNNER_SA,
    _policy_files,
    _projected_files,
    cluster_policy,
    cluster_policy_text,
    dockerfile_uid,
    example_policy,
    find,
    manifest_problems,
    parse_invocation,
)

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Pod Security Standards, "restricted" profile (v1.30): the volume types it allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected"}
RESTRICTED_VOLUMES |= {"secret"}


def kubernetes_policy(**executor: Any) -> Policy:
    data = cluster_policy().model_dump(mode="json", by_alias=True, exclude={"executor"})
    return Policy.model_validate({**data, "executor": {"kind": "kubernetes", "kubernetes": executor}})


def restricted_problems(pod: dict[str, Any]) -> list[str]:
    """What Pod Security "restricted" refuses in ``pod`` (the checks that a pod spec alone can show)."""
    problems = []
    context = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {kinds} is not allowed")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        own = container.get("securityContext", {})
        where = f"container {container['name']}"
        if own.get("privileged"):
            problems.append(f"{where}: privileged")
        if own.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if "ALL" not in own.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities must drop ALL")
        if set(own.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities")
        if own.get("runAsNonRoot", context.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot must be true")
        if own.get("runAsUser", context.get("runAsUser")) == 0:
            problems.append(f"{where}: runs as uid 0")
        seccomp = own.get("seccompProfile", context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        if any("hostPort" in port for port in container.get("ports", [])):
            problems.append(f"{where}: hostPort")
    return problems


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    return backup_job_manifest(kubernetes_policy(), "etcd-main", 42)


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    return dict(job["spec"]["template"]["spec"])


def test_the_job_is_a_valid_batch_v1_job_that_keeps_every_field(job: dict[str, Any]) -> None:
    assert manifest_problems(job) == []


def test_the_pod_passes_pod_security_restricted_of_the_lifeboat_namespace(job: dict[str, Any]) -> None:
    namespace = find("Namespace", "lifeboat")
    assert job["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert restricted_problems(pod_of(job)) == []


def test_the_restricted_check_catches_what_the_profile_refuses(job: dict[str, Any]) -> None:
    pod = json.loads(json.dumps(pod_of(job)))
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    del pod["containers"][0]["securityContext"]["seccompProfile"]
    del pod["securityContext"]["seccompProfile"]
    assert len(restricted_problems(pod)) == 3


def test_the_pod_runs_read_only_as_the_runner_account_without_a_token(job: dict[str, Any]) -> None:
    pod = pod_of(job)
    assert pod["restartPolicy"] == "Never"
    assert (job["metadata"]["namespace"], pod["serviceAccountName"]) == RUNNER_SA
    find("ServiceAccount", RUNNER_SA[1])
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    writable = {
        mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"] if not mount.get("readOnly")
    }
    assert set(writable) == {"/tmp", str(cluster_policy().state.parent)}
    assert all("emptyDir" in volume for volume in writable.values())
    assert container["resources"]["requests"] and "memory" in container["resources"]["limits"]


def test_the_job_is_bounded_and_cleaned_up(job: dict[str, Any]) -> None:
    spec = job["spec"]
    defaults = Executor().kubernetes
    assert spec["ttlSecondsAfterFinished"] == defaults.ttl_seconds_after_finished
    assert spec["backoffLimit"] == defaults.backoff_limit
    assert spec["activeDeadlineSeconds"] == defaults.active_deadline.total_seconds()
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "lifeboat"
    assert labels["lifeboat.io/source"] == "etcd-main"
    assert job["spec"]["template"]["metadata"]["labels"] == labels


def test_the_pod_runs_backup_run_of_the_cli_contract_for_its_source(job: dict[str, Any]) -> None:
    container = pod_of(job)["containers"][0]
    invocation = parse_invocation([*container["command"], *container["args"]])
    assert invocation.command == ("backup", "run")
    assert invocation.options == {"--source": "etcd-main", "--json": None}
    assert invocation.config == "/etc/lifeboat/lifeboat.yaml"


def test_the_pod_mounts_the_policy_and_every_secret_file_it_reads_like_the_deployment(job: dict[str, Any]) -> None:
    files = _projected_files(pod_of(job))
    assert files["/etc/lifeboat/lifeboat.yaml"] == ("ConfigMap", "lifeboat-policy", "lifeboat.yaml")
    needed = sorted(set(_policy_files(yaml.safe_load(cluster_policy_text()))))
    assert needed
    deployment = _projected_files(pod_of({"spec": find("Deployment", "lifeboat")["spec"]}))
    for path in needed:
        assert files[path] == deployment[path], path
    config = next(volume for volume in pod_of(job)["volumes"] if volume["name"] == "config")
    assert config["projected"]["defaultMode"] == 0o440


def test_the_settings_reach_the_job() -> None:
    settings = {"namespace": "backups", "image": "registry.example/lifeboat:1.2.3", "ttl_seconds_after_finished": 600}
    settings |= {"backoff_limit": 2, "active_deadline": "2h", "resources": {"requests": {"cpu": "2"}, "limits": {}}}
    job = backup_job_manifest(kubernetes_policy(**settings), "etcd-main", 7)
    assert job["metadata"]["namespace"] == "backups"
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 7200
    container = pod_of(job)["containers"][0]
    assert container["image"] == "registry.example/lifeboat:1.2.3"
    assert container["resources"] == {"requests": {"cpu": "2"}, "limits": {}}
    assert manifest_problems(job) == []


@pytest.mark.parametrize(
    ("source", "run_id", "expected"),
    [
        ("etcd-main", 42, "lifeboat-backup-etcd-main-42"),
        ("click_house", 7, "lifeboat-backup-click-house-7"),
        ("s" * 63, 123456789, "lifeboat-backup-" + "s" * 37 + "-123456789"),
        ("x" * 36 + "-yz", 1234567890, "lifeboat-backup-" + "x" * 36 + "-1234567890"),
    ],
)
def test_job_names_are_dns_labels_of_source_and_run(source: str, run_id: int, expected: str) -> None:
    name = job_name(source, run_id)
    assert name == expected
    assert DNS_1123_LABEL.match(name) and len(name) <= 63


def test_the_executor_is_local_unless_the_policy_says_kubernetes() -> None:
    assert example_policy().executor.kind == "local"
    assert cluster_policy().executor.kind == "local"
    assert Policy.model_validate({"sources": {"e": {"kind": "etcd", "endpoints": ["http://e:2379"]}}}).executor == Executor()


def test_a_bad_executor_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="namespace"):
        kubernetes_policy(namespace="Not_A_Label")


def _result() -> BackupResult:
    started = datetime(2027, 1, 15, 2, 0, tzinfo=UTC)
    header = SnapshotHeader(
        "etcd-main-20270115T020000Z-0a1b", "etcd-main", "etcd", started, started, "good", "0.1", 1, 10, []
    )
    return BackupResult(header, WriteStats(10, 5, 1, 0), {"revision": 9}, 1.5, [])


def test_the_pods_json_document_comes_back_as_the_same_result() -> None:
    document = {"snapshots": [_result().as_dict()], "errors": []}
    log = "\n".join(
        [
            json.dumps({"event": "snapshot.started", "level": "info"}),
            json.dumps(document, indent=2),
            json.dumps({"event": "snapshot.committed", "level": "info"}),
        ]
    )
    found = backup_document(log)
    assert found == document
    assert result_from_dict(found["snapshots"][0]).as_dict() == _result().as_dict()


def test_a_log_without_the_document_gives_none() -> None:
    assert backup_document('{"event": "x"}\nTraceback (most recent call last):\n{not json\n') is None


def test_the_commented_executor_block_of_the_production_example_is_valid() -> None:
    text = (ROOT / "policies" / "examples" / "production.yaml").read_text(encoding="utf-8")
    block = re.search(r"^# executor:\n(?:#   .*\n)+", text, flags=re.MULTILINE)
    assert block, "production.yaml documents the executor in a commented block"
    uncommented = "\n".join(line[2:] for line in block.group(0).splitlines()) + "\n"
    text = text.replace(block.group(0), "").replace("executor:\n  kind: local\n", uncommented)
    executor = parse_policy(text, label="production.yaml", env={}).executor
    assert executor.kind == "kubernetes"
    assert executor.kubernetes.service_account == RUNNER_SA[1]


def test_the_pod_leaves_notifications_to_the_service_that_submitted_it(job: dict[str, Any]) -> None:
    """Otherwise a failing backup in a Job would mail the team twice: once from the pod's fresh state DB."""
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert {"name": "LIFEBOAT_NOTIFICATIONS", "value": "off"} in container["env"]
