"""An etcd drill on ``scratch.kind: kubernetes`` (``access: port-forward``), end to end: ``run_drill`` of
a real etcd source backed up to an ``s3://`` repository on the S3 test server, the real ``kubernetes``
client speaking to the fake API server of tests/k8s_fake.py.

The test plays the kubelet (``Kubelet``): for the etcd StatefulSet the drill creates, it runs the pod's
init container as the pod would (the argv of the pod template, the policy of the ConfigMap and the
files of the Secret the drill made; only their mount paths are mapped to directories here) through
the real CLI in a subprocess, then a real etcd on the data dir it restored (free loopback ports), and
points the fake's port-forward for the pod at that etcd. Deleting the pod stops its etcd; a new PVC
is a new, empty directory. A drill's command check Job is run to the end the test gives it
(``job_runs``). What a cluster adds (images, uids and fsGroup, NetworkPolicy enforcement,
DNS, controllers' garbage collection) is not exercised.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import init_repository
from k8s_fake import FakeKubernetes, JobEnd, Key, api_client, job_runs, serve, statefulset_pods
from policy_builder import PolicyBuilder

from backup.repository import open_repository
from backup.repository.codec import new_key_file
from backup.servers import EtcdProcess, start_etcd
from drills.model import Status
from drills.runner import new_run_id, run_drill
from drills.scratch.kubernetes.environment import KubernetesScratchEnvironment
from lifeboat.cli import cli
from policies.loader import load_policy

pytestmark = pytest.mark.integration
LIFEBOAT = Path(sys.executable).with_name("lifeboat")  # the venv's console script: what the image runs
INIT_TIMEOUT = 120.0
ALL_FAULTS = ("corrupt-chunk", "missing-chunk", "flaky-storage", "kill-target", "disaster", "verifier-canary")
STORE_FAULTS = ["corrupt-chunk", "missing-chunk", "flaky-storage", "kill-target"]


# ---- the kubelet -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitRun:
    """One run of the restore init container: its argv as run, the PVC's directory, exit code, output, time."""

    argv: list[str]
    volume: Path
    exit_code: int
    output: str
    seconds: float


def in_pod(text: str, mounts: dict[str, Path]) -> str:
    """``text`` with every mount path of a container replaced by the directory standing for it here."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        text = text.replace(mount_path, str(mounts[mount_path]))
    return text


def container_mounts(container: dict[str, Any], volumes: dict[str, Path]) -> dict[str, Path]:
    return {mount["mountPath"]: volumes[mount["name"]] / mount.get("subPath", "") for mount in container["volumeMounts"]}


class Kubelet:
    """Starts the pods of the fake's StatefulSets (``created``: an ``on_create`` hook after
    ``statefulset_pods``) in a thread, as a kubelet does, and stops their etcd when they are deleted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.restores: list[InitRun] = []
        self.started: list[EtcdProcess] = []
        self._serving: dict[tuple[str, str], EtcdProcess] = {}
        self._threads: list[threading.Thread] = []

    def created(self, fake: FakeKubernetes, key: Key, statefulset: dict[str, Any]) -> None:
        if key[1] != "statefulsets":
            return
        namespace, pod = key[2], f"{key[3]}-0"
        made = fake.get("v1", "pods", pod, namespace)
        assert made is not None, "statefulset_pods must run first"
        volumes = {
            volume["name"]: self.root / f"{pod}-{made['metadata']['uid'][:8]}" / volume["name"]
            for volume in made["spec"].get("volumes", [])
        }
        for template in statefulset["spec"]["volumeClaimTemplates"]:
            claim = fake.get("v1", "persistentvolumeclaims", f"{template['metadata']['name']}-{pod}", namespace)
            assert claim is not None
            volumes[template["metadata"]["name"]] = self.root / f"pvc-{claim['metadata']['uid'][:8]}"
        (init,) = made["spec"]["initContainers"]
        files = self._volume_files(fake, namespace, made["spec"], container_mounts(init, volumes))
        thread = threading.Thread(target=self._start, args=(fake, namespace, made, volumes, files), daemon=True)
        self._threads.append(thread)
        thread.start()

    def deleted(self, fake: FakeKubernetes, key: Key, _: dict[str, Any]) -> None:
        if key[1] == "pods":
            self._stop(fake, key[2], key[3])

    def close(self) -> None:
        for thread in self._threads:
            thread.join(timeout=INIT_TIMEOUT)
        for etcd in self.started:
            etcd.stop()

    @staticmethod
    def _volume_files(
        fake: FakeKubernetes, namespace: str, spec: dict[str, Any], mounts: dict[str, Path]
    ) -> dict[str, dict[str, bytes]]:
        """The files of the pod's ConfigMap and Secret volumes, by volume name, as the pod starts. The
        ConfigMap's policy names the Secret's files by their paths in the pod: mapped as ``mounts`` are."""
        files: dict[str, dict[str, bytes]] = {}
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                config_map = fake.get("v1", "configmaps", volume["configMap"]["name"], namespace)
                assert config_map is not None
                data = {key: in_pod(value, mounts).encode() for key, value in config_map["data"].items()}
                items = volume["configMap"]["items"]
            else:
                secret = fake.get("v1", "secrets", volume["secret"]["secretName"], namespace)
                assert secret is not None
                data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
                items = volume["secret"]["items"]
            files[volume["name"]] = {item["path"]: data[item["key"]] for item in items}
        return files

    def _start(
        self,
        fake: FakeKubernetes,
        namespace: str,
        pod: dict[str, Any],
        volumes: dict[str, Path],
        files: dict[str, dict[str, bytes]],
    ) -> None:
        """``_boot``; what breaks in it fails the pod at once (the drill says why) instead of a silent hang."""
        try:
            self._boot(fake, namespace, pod, volumes, files)
        except Exception as exc:  # noqa: BLE001 - shown as the init container's log in the drill's error
            (init,) = pod["spec"]["initContainers"]
            with fake._lock:
                fake.logs[(namespace, pod["metadata"]["name"], init["name"])] = f"kubelet: {type(exc).__name__}: {exc}"
                pod["status"] = _pod_status(init, exit_code=128)

    def _boot(
        self,
        fake: FakeKubernetes,
        namespace: str,
        pod: dict[str, Any],
        volumes: dict[str, Path],
        files: dict[str, dict[str, bytes]],
    ) -> None:
        """The init container (the real CLI), then etcd on the data dir it restored; the pod Ready."""
        (init,) = pod["spec"]["initContainers"]
        volumes["data"].mkdir(parents=True, exist_ok=True)
        for volume, contents in files.items():
            volumes[volume].mkdir(parents=True)
            for path, content in contents.items():
                (volumes[volume] / path).write_bytes(content)
        run = self._run_init(init, container_mounts(init, volumes), volumes["data"])
        self.restores.append(run)
        name = pod["metadata"]["name"]
        if run.exit_code != 0:
            with fake._lock:
                fake.logs[(namespace, name, init["name"])] = run.output
                pod["status"] = _pod_status(init, exit_code=run.exit_code)
            return
        (server,) = pod["spec"]["containers"]
        flags = dict(flag.split("=", 1) for flag in server["command"][1:])
        data_dir = Path(in_pod(flags["--data-dir"], container_mounts(server, volumes)))
        etcd = start_etcd(data_dir, name=flags["--name"], log_path=self.root / f"etcd-{len(self.started)}.log")
        self.started.append(etcd)
        with fake._lock:
            if fake.get("v1", "pods", name, namespace) is not pod:  # deleted meanwhile: nothing may serve it
                etcd.stop()
                return
            self._serving[(namespace, name)] = etcd
            port = int(etcd.endpoint.rsplit(":", 1)[1])
            fake.port_targets[(namespace, name, server["ports"][0]["containerPort"])] = ("127.0.0.1", port)
            pod["status"] = _pod_status(init, exit_code=0)

    def _run_init(self, init: dict[str, Any], mounts: dict[str, Path], volume: Path) -> InitRun:
        argv = [in_pod(arg, mounts) for arg in [*init["command"], *init.get("args", [])]]
        assert argv[0] == "lifeboat"
        argv[0] = str(LIFEBOAT)
        environment = {"PATH": f"{LIFEBOAT.parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(self.root)}
        started = time.monotonic()
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
            cwd=self.root,
            timeout=INIT_TIMEOUT,
            check=False,
        )
        return InitRun(argv, volume, done.returncode, done.stdout, time.monotonic() - started)

    def _stop(self, fake: FakeKubernetes, namespace: str, pod: str) -> None:
        etcd = self._serving.pop((namespace, pod), None)
        for target in [target for target in fake.port_targets if target[:2] == (namespace, pod)]:
            del fake.port_targets[target]
        if etcd is not None:
            etcd.stop()


def _pod_status(init: dict[str, Any], *, exit_code: int) -> dict[str, Any]:
    """Running and Ready once the init container completed; else Pending with its failure."""
    ready = exit_code == 0
    terminated = {"exitCode": exit_code, "reason": "Completed" if ready else "Error"}
    init_status = {
        "name": init["name"],
        "image": init["image"],
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "state": {"terminated": terminated},
    }
    return {
        "phase": "Running" if ready else "Pending",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "initContainerStatuses": [init_status],
    }


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


@pytest.fixture
def kubelet(fake: FakeKubernetes, tmp_path: Path) -> Iterator[Kubelet]:
    playing = Kubelet(tmp_path / "cluster")
    playing.root.mkdir()
    fake.on_create += [statefulset_pods(ready=False), playing.created]
    fake.on_delete.append(playing.deleted)
    try:
        yield playing
    finally:
        playing.close()


@pytest.fixture
def config(tmp_path: Path, etcd_server: EtcdProcess, s3_server: Any, s3_bucket: str) -> Path:
    """A policy with the etcd source, an encrypted s3:// repository whose secret key is a file, and
    the drill on kubernetes scratch; one snapshot of the etcd already taken with ``lifeboat backup run``."""
    seed_etcd(etcd_server.endpoint, f"drill-{uuid.uuid4().hex[:8]}")
    (tmp_path / "repo-secret").write_text(s3_server.secret_access_key + "\n")
    new_key_file(tmp_path / "repo.key")
    s3 = {
        "endpoint_url": s3_server.endpoint_url,
        "access_key_id": s3_server.access_key_id,
        "secret_access_key": {"file": tmp_path / "repo-secret"},
    }
    policy = PolicyBuilder(f"s3://{s3_bucket}/prod", state=tmp_path / "state.db", s3=s3)
    policy.set("repository.encryption", {"key_file": tmp_path / "repo.key"})
    policy.source("k8s-etcd", "etcd", endpoints=[etcd_server.endpoint])
    policy.scratch("kubernetes", kubernetes={"access": "port-forward", "ready_timeout": "2m", "teardown_timeout": "30s"})
    policy.drill("nightly", sources=["k8s-etcd"], objectives={"rto": "30m", "rpo": "1h"}, faults=list(ALL_FAULTS))
    path = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    backup = CliRunner().invoke(cli, ["--config", str(path), "backup", "run", "--json"], catch_exceptions=False)
    assert backup.exit_code == 0, backup.output
    return path


def seed_etcd(endpoint: str, namespace: str) -> None:
    for number in range(20):
        key = f"/registry/pods/{namespace}/pod-{number}".encode()
        body = {"key": base64.b64encode(key).decode(), "value": base64.b64encode(os.urandom(64)).decode()}
        request = urllib.request.Request(f"{endpoint}/v3/kv/put", data=json.dumps(body).encode(), method="POST")
        urllib.request.urlopen(request, timeout=10).close()


# ---- the drill -----------------------------------------------------------------------------------


def test_etcd_drill_on_kubernetes_restores_in_the_init_container_and_proves_what_it_can(
    fake: FakeKubernetes, kubelet: Kubelet, config: Path
) -> None:
    policy = load_policy(config)
    run_id = new_run_id(datetime.now(UTC))
    namespace = f"lifeboat-drill-{run_id}"
    scratch = KubernetesScratchEnvironment(
        policy.scratch.kubernetes,
        run_id,
        drill="nightly",
        policy=policy,
        api_client=api_client(fake),
        sleep=lambda _: time.sleep(0.1),  # the fake answers at once: poll faster than a cluster needs
    )
    repository = open_repository(policy.repository)
    try:
        run = run_drill(policy, "nightly", repository=repository, scratch=scratch)
    finally:
        repository.close()

    (source,) = run.sources
    steps = {step.name: step for step in source.steps}
    assert [(step.name, step.verdict) for step in source.steps] == [
        ("select-snapshot", Status.PASS),
        ("rpo", Status.PASS),
        ("provision", Status.PASS),
        ("restore", Status.PASS),
        ("rto", Status.PASS),
        ("verify", Status.PASS),
        ("drift", Status.PASS),  # the live etcd source, read keys-only, against the snapshot's census
        *((f"fault:{fault}", Status.ERROR) for fault in STORE_FAULTS),
        ("fault:disaster", Status.PASS),
        ("fault:verifier-canary", Status.PASS),
        ("teardown", Status.PASS),
    ], [(step.name, step.verdict.value, step.message) for step in source.steps]
    assert [(step.name, step.verdict) for step in run.steps] == [("lock-repository", Status.PASS), ("teardown", Status.PASS)]
    # FAIL beats ERROR beats PASS: no step failed, four could not verify, so the drill is ERROR, never PASS.
    assert (source.verdict, run.verdict) == (Status.ERROR, Status.ERROR)

    # The timed restore is the init container's: the drill's snapshot, restored by the real CLI in the pod.
    label = f"scratch etcd etcd-1 in namespace {namespace}"
    first, recovery = kubelet.restores
    assert first.argv[first.argv.index("--snapshot") + 1] == source.snapshot
    assert (first.exit_code, recovery.exit_code) == (0, 0), first.output + recovery.output
    assert re.fullmatch(rf"{re.escape(label)} restored snapshot {source.snapshot} itself in .+", steps["restore"].message)
    assert source.rto_seconds is not None and source.rto_seconds >= first.seconds
    assert re.fullmatch(
        r"revision \d+ and \d+ keys in \d+ prefix(es)? match, with every value; "
        r"\d+ leases?, \d+ users? and \d+ roles? match, auth disabled",
        steps["verify"].message,
    )

    for fault in STORE_FAULTS:
        assert steps[f"fault:{fault}"].message.startswith("ScratchError: could not verify: this scenario needs a fresh")
    assert steps["fault:disaster"].message.startswith(
        f"deleted StatefulSet etcd-1, pod etcd-1-0 and its data dir (PVC data-etcd-1-0) in namespace {namespace}; "
        "recovered and verified in "
    )
    assert recovery.volume != first.volume  # the recovery restored into the new, empty PVC
    assert re.fullmatch(
        r"verification caught every tamper kind: delete-key: deleted key \S+ from the scratch etcd; caught: "
        r"the restored etcd differs from the snapshot in \d+ places",
        steps["fault:verifier-canary"].message,
    )
    forwarded = {request.path for request in fake.requests if request.path.endswith("/portforward")}
    assert forwarded == {f"/api/v1/namespaces/{namespace}/pods/etcd-1-0/portforward"}

    # Teardown deleted the namespace and everything in it; the pod's etcd went with it.
    assert steps["teardown"].message == f"released {label}"
    assert run.steps[-1].details == {"removed": [label, f"namespace {namespace}"]}
    assert ("DELETE", f"/api/v1/namespaces/{namespace}") in {(r.method, r.path) for r in fake.requests}
    assert [key for key in fake.objects if namespace in (key[2], key[3])] == []
    assert len(kubelet.started) == 2
    assert [etcd.process.alive() for etcd in kubelet.started] == [False, False]


def test_on_kubernetes_scratch_source_checks_run_and_a_command_check_runs_as_a_job_reaching_the_copy_by_dns(
    fake: FakeKubernetes, kubelet: Kubelet, config: Path, tmp_path: Path
) -> None:
    import yaml

    document = yaml.safe_load(config.read_text())
    document["sources"]["k8s-etcd"]["checks"] = [{"name": "pods", "prefix": "/registry/pods/", "expect": {"min": 20}}]
    document["drills"]["nightly"]["faults"] = []
    smoke = {"name": "smoke", "command": ["/smoke.py", "--pods"], "image": "registry.corp/smoke:1", "timeout": "2m"}
    document["drills"]["nightly"]["checks"] = [smoke]
    config.write_text(yaml.safe_dump(document))
    fake.on_create.append(job_runs({"/smoke.py": JobEnd(exit_code=0, log="20 pods found\n")}))
    policy = load_policy(config)
    run_id = new_run_id(datetime.now(UTC))
    namespace = f"lifeboat-drill-{run_id}"
    scratch = KubernetesScratchEnvironment(
        policy.scratch.kubernetes,
        run_id,
        drill="nightly",
        policy=policy,
        api_client=api_client(fake),
        sleep=lambda _: time.sleep(0.1),
    )
    with open_repository(policy.repository) as repository:
        run = run_drill(policy, "nightly", repository=repository, scratch=scratch, only_checks=True)

    (source,) = run.sources
    pods = next(step for step in source.steps if step.name == "check:pods")
    assert pods.verdict is Status.PASS, pods.message  # read through the port-forward to the scratch etcd
    check = next(step for step in run.steps if step.name == "check:smoke")
    assert (check.verdict, check.message) == (Status.PASS, "/smoke.py --pods exited 0 (expected 0)")
    assert check.details["output"] == ["20 pods found"]
    assert run.verdict is Status.PASS
    # The Job's pod reaches the copy by its service's DNS name, not this process's port-forward.
    (job,) = [request.body for request in fake.sent("POST") if request.path.endswith("/jobs")]
    assert job["metadata"]["namespace"] == namespace
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.corp/smoke:1"
    assert {entry["name"]: entry["value"] for entry in container["env"]} == {
        "LIFEBOAT_DRILL": "nightly",
        "LIFEBOAT_RUN_ID": run_id,
        "LIFEBOAT_SOURCES": "k8s-etcd",
        "LIFEBOAT_K8S_ETCD_KIND": "etcd",
        "LIFEBOAT_K8S_ETCD_SNAPSHOT": source.snapshot,
        "LIFEBOAT_K8S_ETCD_ETCD_ENDPOINTS": f"http://etcd-1.{namespace}.svc:2379",
    }
    assert job["spec"]["activeDeadlineSeconds"] == 120
    # The copy was kept for the check, then released; teardown deleted the Job, then the namespace.
    assert [step.name for step in source.steps][-1] == "teardown"
    assert run.steps[-1].details["removed"][0] == f"job {job['metadata']['name']} in namespace {namespace}"
    assert [key for key in fake.objects if namespace in (key[2], key[3])] == []
