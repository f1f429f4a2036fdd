"""The container image, built and run: deploy/docker/build.sh (what `make image` runs) builds
deploy/docker/Dockerfile with podman on a Debian bookworm base made with debootstrap from the mirror
apt uses here (no image registry is reachable); the image then prints its version, backs up the test
etcd from inside the container, and runs the Kubernetes etcd init container's exact command as uid
10001 onto a PVC-like directory, whose data dir a host etcd then serves.

Podman runs rootful with runc and no default ulimits (ENVIRONMENT.md: crun fails here, setrlimit is
refused). The base image is kept in podman's store under a tag naming its recipe, so only the first run
on a machine pays for debootstrap (~90 s); the wheelhouse and the image are built every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from helpers import missing_requirement
from policy_builder import PolicyBuilder

from backup.servers import EtcdProcess, start_etcd
from drills.scratch.kubernetes.manifests import LIFEBOAT_UID, etcd_restore_init_containers
from policies.model import KubernetesScratch

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNC = "/usr/bin/runc"
SUITE = "bookworm"  # Python 3.11, etcd 3.4: what the public python:3.11-slim-bookworm base has
BASE_PACKAGES = "python3,python3-pip,ca-certificates"
BASE_RECIPE = 1  # bump when base_image() changes what it makes
FALLBACK_MIRROR = "http://deb.debian.org/debian"
SOURCE = "k8s-etcd"
DEBOOTSTRAP_TIMEOUT = 600.0
BUILD_TIMEOUT = 600.0
RUN_TIMEOUT = 120.0
ETCDCTL_TIMEOUT = 30.0
MB = 1_000_000
IMAGE_GROWTH_LIMIT = 360 * MB  # measured 325 MB: etcd tools 43 MB, the wheels ~280 MB (kubernetes 126 MB)


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine for ``SUITE`` (deb822 .sources or sources.list)."""
    apt = Path("/etc/apt")
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in path.read_text(encoding="utf-8").split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.lstrip().startswith("#")
            )
            fields = {key.strip(): value.strip() for key, value in fields.items()}
            if SUITE in fields.get("Suites", "").split() and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0]
    lists = [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            words = [word for word in line.split() if not word.startswith("[")]
            if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE and "main" in words[3:]:
                return words[1]
    return FALLBACK_MIRROR


class Podman:
    """Rootful podman with runc and a containers.conf without default ulimits."""

    def __init__(self, conf: Path) -> None:
        conf.write_text(
            '[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n',
            encoding="utf-8",
        )
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.command = f"podman --runtime {RUNC}"
        self.base = ""  # the base image, once made

    def __call__(self, *args: str, timeout: float = RUN_TIMEOUT, stdin: bytes | None = None) -> str:
        completed = subprocess.run(
            [*self.command.split(), *args], env=self.env, input=stdin, capture_output=True, timeout=timeout, check=False
        )
        stdout, stderr = completed.stdout.decode(errors="replace"), completed.stderr.decode(errors="replace")
        assert completed.returncode == 0, f"podman {' '.join(args)} exited {completed.returncode}:\n{stdout}\n{stderr}"
        return stdout

    def image_exists(self, name: str) -> bool:
        probe = [*self.command.split(), "image", "exists", name]
        return subprocess.run(probe, env=self.env, capture_output=True, check=False).returncode == 0


def base_image(podman: Podman, work: Path) -> str:
    """A Debian ``SUITE`` base with Python 3 and pip, made with debootstrap and imported into podman
    once per machine (the tag names the mirror, the suite, the packages and the recipe)."""
    mirror = debian_mirror()
    key = hashlib.sha256(f"{BASE_RECIPE} {mirror} {SUITE} {BASE_PACKAGES}".encode()).hexdigest()[:12]
    name = f"localhost/lifeboat-test-base:{SUITE}-{key}"
    if podman.image_exists(name):
        return name
    root = work / "rootfs"
    completed = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(root), mirror],
        capture_output=True,
        timeout=DEBOOTSTRAP_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, f"debootstrap from {mirror} failed:\n{completed.stdout.decode()[-3000:]}"
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()  # pip installs into the image's system Python, as in the public python image
    # What Debian's official images hold: package scripts never start services during a build.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n", encoding="utf-8")
    policy.chmod(0o755)
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    archive = work / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    podman("import", str(archive), name, timeout=BUILD_TIMEOUT)
    shutil.rmtree(root)
    archive.unlink()
    return name


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    missing = [tool for tool in ("podman", "debootstrap") if shutil.which(tool) is None]
    if not Path(RUNC).exists():
        missing.append(RUNC)
    if missing:
        missing_requirement(f"not installed: {', '.join(missing)}; install with: apt-get install podman runc debootstrap")
    if os.geteuid() != 0:
        missing_requirement("the image test runs rootful podman and debootstrap: run it as root")
    return Podman(tmp_path_factory.mktemp("podman") / "containers.conf")


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image as `make image` builds it (deploy/docker/build.sh), on the debootstrap base."""
    base = podman.base = base_image(podman, tmp_path_factory.mktemp("base"))
    name = f"localhost/lifeboat-test:{uuid.uuid4().hex[:12]}"
    environment = {
        **podman.env,
        "ENGINE": podman.command,
        "IMAGE": name,
        "BASE_IMAGE": base,
        "PYTHON": sys.executable,
    }
    build = ["bash", "deploy/docker/build.sh"]
    completed = subprocess.run(build, cwd=ROOT, env=environment, capture_output=True, timeout=BUILD_TIMEOUT, check=False)
    output = (completed.stdout + completed.stderr).decode(errors="replace")
    assert completed.returncode == 0, f"deploy/docker/build.sh failed:\n{output[-5000:]}"
    try:
        yield name
    finally:
        subprocess.run([*podman.command.split(), "rmi", "--force", name], env=podman.env, capture_output=True, check=False)


def etcdctl(endpoint: str, *args: str) -> str:
    completed = subprocess.run(
        ["etcdctl", "--endpoints", endpoint, *args],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        timeout=ETCDCTL_TIMEOUT,
        check=True,
    )
    return completed.stdout.decode()


def read_prefix(endpoint: str, prefix: str) -> dict[str, str]:
    answer = etcdctl(endpoint, "get", "--prefix", prefix, "-w", "fields")
    lines = answer.splitlines()
    keys = [json.loads(line.split(" : ", 1)[1]) for line in lines if line.startswith('"Key"')]
    values = [json.loads(line.split(" : ", 1)[1]) for line in lines if line.startswith('"Value"')]
    return dict(zip(keys, values, strict=True))


def owned_by_lifeboat(path: Path) -> Path:
    os.chown(path, LIFEBOAT_UID, LIFEBOAT_UID)
    return path


def test_the_image_prints_its_version_and_runs_as_uid_10001(podman: Podman, image: str) -> None:
    with (ROOT / "pyproject.toml").open("rb") as stream:
        version = tomllib.load(stream)["project"]["version"]
    assert podman("run", "--rm", image, "--version").strip() == f"lifeboat, version {version}"
    assert podman("run", "--rm", "--entrypoint", "id", image, "-u").strip() == str(LIFEBOAT_UID)
    assert "3.4." in podman("run", "--rm", "--entrypoint", "etcdctl", image, "version")
    # Small: the base, Debian's etcd tools and the installed wheels; no wheelhouse or apt lists left in a layer.
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image))
    base = int(podman("image", "inspect", "--format", "{{.Size}}", podman.base))
    assert size - base < IMAGE_GROWTH_LIMIT, f"the image adds {(size - base) / MB:.0f} MB to its base"


def test_a_backup_from_inside_the_image_restores_through_the_init_container_command(
    podman: Podman, image: str, etcd_server: EtcdProcess, tmp_path: Path, server_logs
) -> None:
    prefix = f"/image/{uuid.uuid4().hex}/"
    written = {f"{prefix}key-{i:02d}": f"value {i}" for i in range(25)}
    for key, value in written.items():
        etcdctl(etcd_server.endpoint, "put", key, value)

    # The repository, the policy and the run history in one directory the container's uid owns.
    work = tmp_path / "work"
    work.mkdir()
    owned_by_lifeboat(work)
    inside = PurePosixPath("/work")
    policy = PolicyBuilder(inside / "repo", state=inside / "state.db")
    policy.source(SOURCE, "etcd", endpoints=[etcd_server.endpoint])
    owned_by_lifeboat(policy.write(work / "lifeboat.yaml"))
    config = str(inside / "lifeboat.yaml")
    run = ("run", "--rm", "--network", "host", "--volume", f"{work}:{inside}", image, "--config", config)
    podman(*run, "repo", "init")
    backed_up = json.loads(podman(*run, "backup", "run", "--source", SOURCE, "--json"))
    [snapshot] = backed_up["snapshots"]
    assert snapshot["status"] == "good"
    assert {path.stat().st_uid for path in (work / "repo").rglob("*")} == {LIFEBOAT_UID}

    # The init container of an etcd copy on Kubernetes scratch, as drills/scratch/kubernetes writes it:
    # its command, args, securityContext and mounts; the PVC as the kubelet prepares it for fsGroup 10001.
    [init] = etcd_restore_init_containers(SOURCE, snapshot["id"], KubernetesScratch(lifeboat_image=image))
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    os.chown(pvc, 0, LIFEBOAT_UID)
    pvc.chmod(0o2775)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    volumes = {"data": pvc, "policy": work / "lifeboat.yaml", "credentials": secrets}
    mounts = [
        f"{volumes[mount['name']]}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else "")
        for mount in init["volumeMounts"]
    ]
    context = init["securityContext"]
    assert context["runAsNonRoot"] and context["runAsUser"] == context["runAsGroup"] == LIFEBOAT_UID
    assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False
    restore = (
        *("run", "--rm", "--user", f"{context['runAsUser']}:{context['runAsGroup']}", "--group-add", str(LIFEBOAT_UID)),
        *("--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
        *(option for mount in mounts for option in ("--volume", mount)),
        *("--volume", f"{work}:{inside}"),  # the file:// repository the policy names (an s3:// one on a cluster)
        *("--entrypoint", json.dumps(init["command"]), image, *init["args"]),
    )
    podman(*restore)
    data_dir = pvc / "data"
    assert data_dir.stat().st_uid == LIFEBOAT_UID
    assert (data_dir / "member" / "snap" / "db").stat().st_uid == LIFEBOAT_UID
    # A restarted pod runs its init containers again: --yes restores afresh over the first restore.
    podman(*restore)

    with start_etcd(data_dir, name="drill") as restored:
        server_logs.register("etcd (restored from the image)", restored.log_tail)
        assert read_prefix(restored.endpoint, prefix) == written
