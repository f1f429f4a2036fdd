"""A single-node Ceph on loopback with a RADOS Gateway: a real S3 server for the integration tests.

One mon, one mgr, one OSD on ``memstore`` (in RAM, nothing on disk but logs and the mon's store)
and radosgw with the beast frontend, all on free 127.0.0.1 ports, with ``auth ... required = none``
and everything (config, run dir, admin sockets, logs, mon data) under one temp dir that teardown
removes. Facts that made it work: /work/shared/ENVIRONMENT.md ("Ceph RGW, single node on loopback").
Starting takes ~30 s, so the conftest starts it once per session.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backup.execute import ManagedProcess, free_ports, start, tail_of_file

BINARIES = ("ceph-mon", "ceph-mgr", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool")
INSTALL_HINT = "apt-get install ceph-mon ceph-osd ceph-mgr radosgw ceph-common"
STOP_TIMEOUT = 5.0  # one radosgw ignored SIGTERM for over 20 s: SIGKILL after this
READY_TIMEOUT = 120.0
COMMAND_TIMEOUT = 60.0
# The keys the tests give moto (which accepts any): a test written against moto talks to RGW unchanged.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"

CEPH_CONF = """[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
run dir = {base}/run
admin socket = {base}/run/$name.asok
log file = {base}/log/$name.log
mon data = {base}/mon/$id
mgr data = {base}/mgr/$id
osd data = {base}/osd/$id
rgw data = {base}/rgw
keyring = {base}/keyring
"""


class RgwStartError(RuntimeError):
    """The cluster did not come up; the message holds the failing step and the log tails."""


@dataclass
class CephRgw:
    """A running single-node Ceph with radosgw; ``stop()`` kills it and removes its temp dir."""

    base: Path
    endpoint_url: str = ""
    access_key_id: str = ACCESS_KEY
    secret_access_key: str = SECRET_KEY
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.base / "ceph.conf"

    def command(self, *argv: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a ceph tool against this cluster; its stdout, or RgwStartError with its output."""
        try:
            done = subprocess.run(
                [argv[0], "-c", str(self.conf), *argv[1:]],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise RgwStartError(f"{' '.join(argv)} did not finish within {timeout:g}s\n{self.log_tail()}") from exc
        if done.returncode != 0:
            raise RgwStartError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}\n{self.log_tail()}")
        return done.stdout

    def daemon(self, *argv: str) -> ManagedProcess:
        name = Path(argv[0]).name
        process = start([argv[0], "-c", str(self.conf), "-f", *argv[1:]], log_path=self.base / "log" / f"{name}.out")
        self.processes.append(process)
        return process

    def log_tail(self, lines: int = 40, *, only: tuple[str, ...] = ()) -> str:
        """The last ``lines`` of each daemon's log (of those whose file name starts with one of ``only``)."""
        parts = []
        for path in sorted((self.base / "log").glob("*")):
            if only and not path.name.startswith(only):
                continue
            if text := tail_of_file(path, lines):
                parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the daemons, newest first (SIGTERM, SIGKILL after STOP_TIMEOUT), then remove the temp dir."""
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop(STOP_TIMEOUT)
        self.processes.clear()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def start_rgw(*, memstore_bytes: int = 4 << 30) -> Iterator[CephRgw]:
    """Bring up mon, mgr, OSD and radosgw, create the S3 user; stop everything on exit, even on failure."""
    cluster = CephRgw(base=Path(tempfile.mkdtemp(prefix="lifeboat-ceph-")))
    try:
        _bootstrap(cluster, memstore_bytes)
        yield cluster
    finally:
        cluster.stop()


def _bootstrap(cluster: CephRgw, memstore_bytes: int) -> None:
    base = cluster.base
    for sub in ("run", "log", "mon/a", "mgr/x", "rgw"):
        (base / sub).mkdir(parents=True)
    fsid = str(uuid.uuid4())
    mon_v2, mon_v1 = free_ports(2)
    cluster.conf.write_text(
        CEPH_CONF.format(fsid=fsid, mon_v2=mon_v2, mon_v1=mon_v1, memstore_bytes=memstore_bytes, base=base)
    )
    keyring = str(base / "keyring")
    cluster.command("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
    cluster.command(
        "ceph-authtool", keyring, "--gen-key", "-n", "client.admin",
        "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
    )  # fmt: skip
    monmap = str(base / "monmap")
    addresses = f"[v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]"
    cluster.command("monmaptool", "--create", "--fsid", fsid, "--addv", "a", addresses, monmap)
    cluster.command("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring)
    mon = cluster.daemon("ceph-mon", "-i", "a")
    _wait(cluster, mon, "ceph-mon", lambda: _quietly(cluster, "ceph", "--connect-timeout", "5", "mon", "stat"))
    cluster.daemon("ceph-mgr", "-i", "x")
    osd_uuid = str(uuid.uuid4())
    osd_id = cluster.command("ceph", "osd", "new", osd_uuid).strip()
    (base / "osd" / osd_id).mkdir(parents=True)
    cluster.command("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
    osd = cluster.daemon("ceph-osd", "-i", osd_id)
    _wait(cluster, osd, "ceph-osd", lambda: _osd_up(cluster))
    port = free_ports(1)[0]
    rgw = cluster.daemon(
        "radosgw", "-n", "client.admin", "--rgw-frontends", f"beast endpoint=127.0.0.1:{port}",
        "--ms-mon-client-mode", "crc",
    )  # fmt: skip
    cluster.endpoint_url = f"http://127.0.0.1:{port}"
    _wait(cluster, rgw, "radosgw", lambda: _answers(cluster.endpoint_url))
    cluster.command(
        "radosgw-admin", "-n", "client.admin", "user", "create", "--uid", "lifeboat", "--display-name", "Lifeboat tests",
        "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY,
    )  # fmt: skip


def _wait(cluster: CephRgw, process: ManagedProcess, what: str, ready: object) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():  # type: ignore[operator]
        if not process.alive():
            raise RgwStartError(f"{what} exited with code {process.returncode} before it was ready\n{cluster.log_tail()}")
        if time.monotonic() > deadline:
            raise RgwStartError(f"{what} was not ready within {READY_TIMEOUT:g}s\n{cluster.log_tail()}")
        time.sleep(0.25)


def _quietly(cluster: CephRgw, *argv: str) -> bool:
    try:
        cluster.command(*argv, timeout=10)
    except RgwStartError:
        return False
    return True


def _osd_up(cluster: CephRgw) -> bool:
    try:
        stat = json.loads(cluster.command("ceph", "osd", "stat", "--format", "json", timeout=10))
    except (RgwStartError, ValueError):
        return False
    return int(stat.get("num_up_osds", 0)) >= 1


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any S3 answer (403 for an anonymous listing) means it serves
    except OSError:
        return False
