"""The ``local`` janitor: what drill runs that are no longer alive left behind (processes, work
dirs, scratch databases and buckets), found by the runs' marker files under ``<workdir>/runs`` and,
for databases and buckets, by their prefix even when a marker was lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
from pathlib import Path

import structlog
from clickhouse_driver import Client

from drills.scratch.common import delete_bucket
from drills.scratch.local.slots import s3_client
from policies.model import LocalScratch, reveal

log = structlog.get_logger(__name__)
RUNS = "runs"  # <workdir>/runs/<run id>.json: the markers


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
    client = s3_client(scratch)
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
