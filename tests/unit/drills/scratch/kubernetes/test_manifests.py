"""Every manifest the kubernetes scratch environment generates is a valid object by the official
client's models (deserialize + re-serialize, nothing dropped: ``manifest_problems`` of the deploy
tests), and the fences say what DESIGN section 5 promises."""

from __future__ import annotations

from typing import Any

import click
import pytest

from drills.scratch.kubernetes.manifests import (
    Credentials,
    credentials_secret_name,
    etcd_restore_init_containers,
    limit_range_manifest,
    namespace_manifest,
    network_policy_manifest,
    quota_manifest,
    scratch_servers,
    secret_manifest,
    service_manifest,
    statefulset_manifest,
)
from lifeboat.cli import cli
from policies.model import KubernetesScratch
from unit.deploy.test_manifests import dockerfile_uid, manifest_problems, parse_invocation

NS = "lifeboat-drill-20270115t020000z-0a1b"
SETTINGS = KubernetesScratch.model_validate({"storage_class": "fast", "quota": {"requests.cpu": "2", "pods": "5"}})


def generated() -> dict[str, dict[str, Any]]:
    servers = scratch_servers(SETTINGS)
    init = etcd_restore_init_containers("etcd-main", "etcd-main-20270115T010000Z-abcd", SETTINGS)
    found = {
        "namespace": namespace_manifest(NS, drill="nightly", expires_at=1_800_000_000),
        "quota": quota_manifest(NS, SETTINGS),
        "limit-range": limit_range_manifest(NS, SETTINGS),
        "network-policy": network_policy_manifest(NS),
        "etcd-statefulset-with-restore": statefulset_manifest(NS, "etcd-1", servers["etcd"], SETTINGS, init_containers=init),
    }
    for kind, server in servers.items():
        found[f"{kind}-service"] = service_manifest(NS, f"{kind}-1", server)
        secret = credentials_secret_name(kind) if server.credentials_env else None
        found[f"{kind}-statefulset"] = statefulset_manifest(NS, f"{kind}-1", server, SETTINGS, credentials_secret=secret)
        if server.credentials_env:
            found[f"{kind}-secret"] = secret_manifest(NS, credentials_secret_name(kind), server.credentials_env(CREDENTIALS))
    return found


CREDENTIALS = Credentials("lifeboat-0a1b2c3d", "p" * 48)


@pytest.mark.parametrize("name", sorted(generated()))
def test_every_generated_manifest_validates_as_the_clients_model(name: str) -> None:
    assert manifest_problems(generated()[name]) == []


def test_the_validator_would_catch_a_typo_in_a_generated_manifest() -> None:
    broken = generated()["s3-statefulset"]
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    assert manifest_problems(broken) != []


def test_network_policy_lets_out_only_the_namespace_and_dns() -> None:
    spec = network_policy_manifest(NS)["spec"]
    assert spec["policyTypes"] == ["Egress"] and spec["podSelector"] == {}
    inside, dns = spec["egress"]
    assert inside == {"to": [{"podSelector": {}}]}  # a bare podSelector: this namespace's pods only
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]
    assert sorted((port["protocol"], port["port"]) for port in dns["ports"]) == [("TCP", 53), ("UDP", 53)]


def test_quota_limits_and_storage_come_from_the_policy() -> None:
    assert quota_manifest(NS, SETTINGS)["spec"]["hard"] == {"requests.cpu": "2", "pods": "5"}
    claim = generated()["clickhouse-statefulset"]["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast",
    }


def test_etcd_is_restored_by_one_shell_free_lifeboat_init_container_into_the_data_dir_etcd_serves() -> None:
    pod = generated()["etcd-statefulset-with-restore"]["spec"]["template"]["spec"]
    (restore,) = pod["initContainers"]  # nothing runs in the etcd image but etcd: it may have no shell
    assert restore["image"] == SETTINGS.lifeboat_image
    invocation = parse_invocation([*restore["command"], *restore["args"]])  # the CLI contract's words
    assert invocation.config == "/etc/lifeboat/policy.yaml"
    assert (invocation.command, invocation.arguments) == (("restore",), ("etcd-main",))
    assert invocation.options == {
        "--snapshot": "etcd-main-20270115T010000Z-abcd",
        "--to-data-dir": "/var/lib/etcd/data",
        "--name": "drill",
        "--initial-cluster": "drill=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls": "http://127.0.0.1:2380",
        "--yes": None,  # a restarted pod moves the data dir aside and restores afresh
    }
    command = cli.get_command(click.Context(cli), "restore")
    assert command is not None
    assert set(invocation.options) <= {option for param in command.params for option in getattr(param, "opts", [])}
    server = pod["containers"][0]
    assert "--data-dir=/var/lib/etcd/data" in server["command"] and "--name=drill" in server["command"]
    mounts = {mount["name"]: mount["mountPath"] for mount in restore["volumeMounts"]}
    assert mounts == {"data": "/var/lib/etcd", "policy": "/etc/lifeboat/policy.yaml", "credentials": "/etc/lifeboat/secrets"}
    assert server["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/etcd"}]  # the same PVC
    assert {volume["name"] for volume in pod["volumes"]} == {"policy", "credentials"}
    assert pod["automountServiceAccountToken"] is False


def test_etcd_runs_as_the_uid_that_restored_its_data_dir() -> None:
    """snapshot restore writes 0700/0600: etcd must be that uid (fsGroup only opens the PVC's root)."""
    pod = generated()["etcd-statefulset-with-restore"]["spec"]["template"]["spec"]
    (restore,) = pod["initContainers"]
    server = pod["containers"][0]
    uid = dockerfile_uid()
    assert pod["securityContext"] == {"fsGroup": uid}
    for container in (restore, server):
        context = container["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (uid, uid, True)
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
    assert "securityContext" not in generated()["clickhouse-statefulset"]["spec"]["template"]["spec"]["containers"][0]


def test_clickhouse_and_minio_take_their_users_from_the_run_secret_and_etcd_takes_none() -> None:
    found = generated()
    assert found["clickhouse-secret"]["stringData"] == {
        "CLICKHOUSE_USER": "lifeboat-0a1b2c3d",
        "CLICKHOUSE_PASSWORD": "p" * 48,
        "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT": "1",  # the network user may create the restore's database
    }
    assert found["s3-secret"]["stringData"] == {"MINIO_ROOT_USER": "lifeboat-0a1b2c3d", "MINIO_ROOT_PASSWORD": "p" * 48}
    for kind in ("clickhouse", "s3"):
        container = found[f"{kind}-statefulset"]["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": f"lifeboat-scratch-{kind}"}}]
    assert "etcd-secret" not in found
    assert "envFrom" not in found["etcd-statefulset"]["spec"]["template"]["spec"]["containers"][0]
