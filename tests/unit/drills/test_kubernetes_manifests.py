"""Every manifest the kubernetes scratch environment generates is a valid object by the official
client's models (deserialize + re-serialize, nothing dropped: ``manifest_problems`` of the deploy
tests), and the fences say what DESIGN section 5 promises."""

from __future__ import annotations

from typing import Any

import pytest
from unit.deploy.test_manifests import manifest_problems

from drills.scratch.kubernetes import (
    Credentials,
    _servers,
    credentials_secret_name,
    etcd_restore_init_containers,
    limit_range_manifest,
    namespace_manifest,
    network_policy_manifest,
    quota_manifest,
    secret_manifest,
    service_manifest,
    statefulset_manifest,
)
from policies.model import KubernetesScratch

NS = "lifeboat-drill-20270115t020000z-0a1b"
SETTINGS = KubernetesScratch.model_validate({"storage_class": "fast", "quota": {"requests.cpu": "2", "pods": "5"}})


def generated() -> dict[str, dict[str, Any]]:
    servers = _servers(SETTINGS)
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


def test_etcd_restore_reads_the_policy_and_secrets_and_restores_once() -> None:
    pod = generated()["etcd-statefulset-with-restore"]["spec"]["template"]["spec"]
    fetch, restore = pod["initContainers"]
    assert fetch["image"] == SETTINGS.lifeboat_image
    assert fetch["command"][:4] == ["lifeboat", "--config", "/etc/lifeboat/policy.yaml", "restore"]
    assert {volume["name"] for volume in pod["volumes"]} == {"restore", "policy", "credentials"}
    assert restore["command"][-1].startswith("test -d /var/lib/etcd/data/member || etcdutl snapshot restore")
    assert pod["automountServiceAccountToken"] is False


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
