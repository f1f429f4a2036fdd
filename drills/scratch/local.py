"""The ``local`` scratch environment: scratch etcd processes on free loopback ports under a workdir,
a scratch database on the configured scratch ClickHouse server, a scratch bucket on the configured
scratch S3 endpoint. Every name carries the run id; a marker file per run records what the run
started, so a leftover from a killed run is found and removed by the next run and by the janitor.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from clickhouse_driver import Client

from backup.repository.manifest import SnapshotHeader
from backup.repository.s3store import make_client
from backup.servers import EtcdProcess, start_etcd
from backup.sources.base import RestoreOptions
from backup.sources.etcd.targets import EtcdEndpointTarget
from drills.scratch.base import Slot
from drills.scratch.common import (
    ScratchError,
    delete_bucket,
    delete_first_etcd_key,
    drop_largest_table,
    duplicate_one_row,
    overwrite_one_object,
    wipe_bucket,
)
from drills.scratch.proxy import CuttableRelay
from policies.errors import LifeboatError
from policies.model import ClickHouseEndpoint, LocalScratch, ScratchS3, reveal

log = structlog.get_logger(__name__)
RUNS = "runs"  # <workdir>/runs/<run id>.json: the markers


def _name_part(run_id: str) -> str:
    return run_id.lower()


# ---- etcd -------------------------------------------------------------------------------------


class EtcdSlot:
    kind = "etcd"

    def __init__(self, env: LocalScratchEnvironment, directory: Path) -> None:
        self.env = env
        self.directory = directory
        self.data_dir = directory / "member"
        self.process: EtcdProcess | None = None
        self._kill_on_start = False
        self.label = f"scratch etcd data dir {self.data_dir}"

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        peer = "http://127.0.0.1:2380"  # rewritten by start_etcd's own flags; only needs to be consistent
        return RestoreOptions(
            to_data_dir=str(self.data_dir),
            name="drill",
            initial_cluster=f"drill={peer}",
            initial_advertise_peer_urls=peer,
            yes=yes,
        )

    def after_restore(self) -> None:
        self.process = start_etcd(self.data_dir, etcd_bin=self.env.settings.etcd_bin, name="drill")
        self.env.record_pid(self.process.process.pid)
        self.label = f"scratch etcd {self.process.endpoint} on {self.data_dir}"
        if self._kill_on_start:
            self._kill_on_start = False
            pid = self.process.process.pid
            self.process.process.kill()
            self.process = start_etcd(self.data_dir, etcd_bin=self.env.settings.etcd_bin, name="drill")
            self.env.record_pid(self.process.process.pid)
            self.label = f"scratch etcd {self.process.endpoint} (restarted after SIGKILL of pid {pid})"

    def verify_target(self) -> Any:
        if self.process is None or not self.process.process.alive():
            return EtcdEndpointTarget("http://127.0.0.1:1")  # nothing listens: verification says so
        return EtcdEndpointTarget(self.process.endpoint)

    def interrupt(self) -> str:
        if self.process is not None and self.process.process.alive():
            self.process.process.kill()
            return f"SIGKILLed the scratch etcd (pid {self.process.process.pid})"
        self._kill_on_start = True  # the restore writes a data dir first; the server comes up after it
        return "SIGKILL of the scratch etcd as it comes up from the restored data dir"

    def stage_disaster(self) -> str:
        if self.process is not None:
            self.process.stop()
            self.process = None
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return "stopped the scratch etcd and wiped its data dir"

    def tamper(self) -> str:
        return delete_first_etcd_key(self.verify_target().endpoint)

    def release(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


# ---- ClickHouse -------------------------------------------------------------------------------


class ClickHouseSlot:
    kind = "clickhouse"

    def __init__(self, env: LocalScratchEnvironment, settings: ClickHouseEndpoint, database: str, *, killable: bool) -> None:
        self.settings = settings
        self.database = database
        self.password = reveal(settings.password) or ""
        self.relays = (
            [CuttableRelay(settings.host, settings.port), CuttableRelay(settings.host, settings.http_port)]
            if killable
            else []
        )
        self.label = f"scratch database {database} on {settings.host}:{settings.port}"
        self._client().execute(f"DROP DATABASE IF EXISTS `{database}`")  # a fresh, empty target
        env.record_name("clickhouse", database)

    def _client(self) -> Client:
        return Client(
            self.settings.host,
            port=self.settings.port,
            user=self.settings.user,
            password=self.password,
            connect_timeout=10,
            send_receive_timeout=120,
        )

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        via_relay = bool(self.relays) and not direct
        return RestoreOptions(
            to_host="127.0.0.1" if via_relay else self.settings.host,
            to_port=self.relays[0].port if via_relay else self.settings.port,
            to_http_port=self.relays[1].port if via_relay else self.settings.http_port,
            to_database=self.database,
            to_user=self.settings.user,
            to_password=self.password,
            yes=yes,
        )

    def after_restore(self) -> None:
        return None

    def verify_target(self) -> Any:
        return None

    def interrupt(self) -> str:
        cut = sum(relay.cut() for relay in self.relays)
        return f"cut {cut} open connection(s) to the scratch ClickHouse server mid-restore"

    def stage_disaster(self) -> str:
        return drop_largest_table(self._client(), self.database)

    def tamper(self) -> str:
        return duplicate_one_row(self._client(), self.database)

    def release(self) -> None:
        for relay in self.relays:
            relay.close()
        with contextlib.suppress(Exception):
            self._client().execute(f"DROP DATABASE IF EXISTS `{self.database}`")


# ---- S3 ---------------------------------------------------------------------------------------


class S3Slot:
    kind = "s3"

    def __init__(self, env: LocalScratchEnvironment, settings: ScratchS3, bucket: str, *, killable: bool) -> None:
        self.settings = settings
        self.bucket = bucket
        self.client = _s3_client(settings)
        self.endpoint = settings.endpoint_url or "https://s3.amazonaws.com"
        self.relay: CuttableRelay | None = None
        if killable:
            host, port = _host_port(self.endpoint)
            self.relay = CuttableRelay(host, port)
        self.label = f"scratch bucket {bucket} at {self.endpoint}"
        env.record_name("s3", bucket)
        self.client.create_bucket(Bucket=bucket)

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        endpoint = f"http://127.0.0.1:{self.relay.port}" if self.relay and not direct else self.endpoint
        return RestoreOptions(
            to_endpoint=endpoint,
            to_bucket=self.bucket,
            to_access_key_id=reveal(self.settings.access_key_id),
            to_secret_access_key=reveal(self.settings.secret_access_key),
            yes=yes,
        )

    def after_restore(self) -> None:
        return None

    def verify_target(self) -> Any:
        return None

    def interrupt(self) -> str:
        cut = self.relay.cut() if self.relay else 0
        return f"cut {cut} open connection(s) to the scratch S3 endpoint mid-restore"

    def stage_disaster(self) -> str:
        return wipe_bucket(self.client, self.bucket)

    def tamper(self) -> str:
        return overwrite_one_object(self.client, self.bucket)

    def release(self) -> None:
        if self.relay:
            self.relay.close()
        delete_bucket(self.client, self.bucket)


def _s3_client(settings: ScratchS3) -> Any:
    return make_client(
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        access_key_id=reveal(settings.access_key_id),
        secret_access_key=reveal(settings.secret_access_key),
        addressing_style=settings.addressing_style,
    )


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or (443 if parsed.scheme == "https" else 80)


# ---- the environment --------------------------------------------------------------------------


@dataclass
class _Marker:
    run_id: str
    pid: int
    host: str
    started: str
    names: dict[str, list[str]] = field(default_factory=dict)  # kind -> databases / buckets
    pids: list[int] = field(default_factory=list)


class LocalScratchEnvironment:
    """Scratch targets on this machine and the configured scratch servers, for one drill run."""

    def __init__(self, settings: LocalScratch, run_id: str) -> None:
        self.settings = settings
        self.run_id = run_id
        self.workdir = settings.workdir / run_id
        self._slots: list[Slot] = []
        self._count = 0
        self._marker = _Marker(run_id, os.getpid(), socket.gethostname(), datetime.now(UTC).isoformat())
        cleanup_leftovers(settings)  # what a killed run left behind goes first
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._save_marker()

    def _save_marker(self) -> None:
        path = self.settings.workdir / RUNS / f"{self.run_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self._marker.__dict__))

    def record_pid(self, pid: int) -> None:
        self._marker.pids.append(pid)
        self._save_marker()

    def record_name(self, kind: str, name: str) -> None:
        self._marker.names.setdefault(kind, []).append(name)
        self._save_marker()

    def slot(self, source: str, kind: str, header: SnapshotHeader, *, killable: bool = False) -> Slot:
        self._count += 1
        suffix = f"{_name_part(self.run_id)}-{self._count}"
        makers: dict[str, Callable[[], Slot]] = {
            "etcd": lambda: EtcdSlot(self, self.workdir / f"{source}-{self._count}"),
            "clickhouse": lambda: ClickHouseSlot(
                self,
                _required(self.settings.clickhouse, "clickhouse"),
                f"{_required(self.settings.clickhouse, 'clickhouse').database_prefix}{suffix.replace('-', '_')}",
                killable=killable,
            ),
            "s3": lambda: S3Slot(
                self,
                _required(self.settings.s3, "s3"),
                f"{_required(self.settings.s3, 's3').bucket_prefix}{suffix}",
                killable=killable,
            ),
        }
        try:
            made = makers[kind]()
        except LifeboatError:
            raise
        except Exception as exc:
            raise ScratchError(f"cannot provision a scratch {kind} target: {type(exc).__name__}: {exc}") from exc
        self._slots.append(made)
        return made

    def teardown(self) -> list[str]:
        removed = []
        for made in reversed(self._slots):
            made.release()
            removed.append(made.label)
        self._slots.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        (self.settings.workdir / RUNS / f"{self.run_id}.json").unlink(missing_ok=True)
        return removed


def _required(value: Any, kind: str) -> Any:
    if value is None:
        raise ScratchError(f"scratch.local.{kind} is not configured: set it to a scratch server (never a production one)")
    return value


# ---- leftovers --------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_runs(settings: LocalScratch) -> set[str]:
    live = set()
    for path in (settings.workdir / RUNS).glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            marker = json.loads(path.read_text())
            if marker["host"] == socket.gethostname() and _alive(marker["pid"]):
                live.add(marker["run_id"])
    return live


def cleanup_leftovers(settings: LocalScratch, *, dry_run: bool = False) -> list[str]:
    """Remove what drill runs that are no longer alive left behind: processes, work dirs, scratch
    databases and buckets (found by their prefix, even when a marker was lost). Returns what went."""
    live = _live_runs(settings)
    removed: list[str] = []
    runs = settings.workdir / RUNS
    for path in sorted(runs.glob("*.json")) if runs.is_dir() else []:
        with contextlib.suppress(ValueError, OSError, KeyError):
            marker = json.loads(path.read_text())
            if marker["run_id"] in live:
                continue
            for pid in marker.get("pids", []):
                if _alive(pid) and _is_scratch_process(pid, settings.workdir) and not dry_run:
                    os.kill(pid, signal.SIGKILL)
                    removed.append(f"process {pid}")
            if not dry_run:
                shutil.rmtree(settings.workdir / marker["run_id"], ignore_errors=True)
                path.unlink(missing_ok=True)
            removed.append(f"workdir {settings.workdir / marker['run_id']}")
    removed += _leftover_databases(settings, live, dry_run)
    removed += _leftover_buckets(settings, live, dry_run)
    if removed:
        log.info("scratch.leftovers_removed", dry_run=dry_run, removed=removed)
    return removed


def _is_scratch_process(pid: int, workdir: Path) -> bool:
    """Only ever kill a process whose command line names our workdir (pids are reused)."""
    try:
        return str(workdir) in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def _run_of(name: str, prefix: str) -> str:
    """``lifeboat_drill_20261129t104500z_ab12_3`` -> ``20261129t104500z-ab12``."""
    parts = name[len(prefix) :].replace("_", "-").split("-")
    return "-".join(parts[:2])


def _leftover_databases(settings: LocalScratch, live: set[str], dry_run: bool) -> list[str]:
    scratch = settings.clickhouse
    if scratch is None:
        return []
    client = Client(
        scratch.host, port=scratch.port, user=scratch.user, password=reveal(scratch.password) or "", connect_timeout=10
    )
    try:
        names = [row[0] for row in client.execute("SELECT name FROM system.databases")]
    except Exception as exc:  # noqa: BLE001 - an unreachable scratch server is reported, not fatal to the janitor
        log.warning("scratch.clickhouse_unreachable", error=str(exc))
        return []
    removed = []
    for name in names:
        if name.startswith(scratch.database_prefix) and _run_of(name, scratch.database_prefix) not in live:
            if not dry_run:
                client.execute(f"DROP DATABASE IF EXISTS `{name}`")
            removed.append(f"database {name}")
    return removed


def _leftover_buckets(settings: LocalScratch, live: set[str], dry_run: bool) -> list[str]:
    scratch = settings.s3
    if scratch is None:
        return []
    client = _s3_client(scratch)
    try:
        names = [bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])]
    except Exception as exc:  # noqa: BLE001 - as above
        log.warning("scratch.s3_unreachable", error=str(exc))
        return []
    removed = []
    for name in names:
        if name.startswith(scratch.bucket_prefix) and _run_of(name, scratch.bucket_prefix) not in live:
            if not dry_run:
                delete_bucket(client, name)
            removed.append(f"bucket {name}")
    return removed
