"""The scratch environment's preflight (``lifeboat doctor``): where drills restore must be reachable,
writable, and not one of the servers the policy backs up."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from backup.doctor import DOCTOR_TIMEOUT, Concern, Finding, Problem, probe
from policies.model import ClickHouseEndpoint, ClickHouseSettings, Policy, reveal

TARGET = "scratch"


def doctor(policy: Policy) -> list[Finding]:
    """Every scratch check for the policy's drills; none when it has no drills. Never raises."""
    if not policy.drills:
        return []
    scratch = policy.scratch
    if scratch.kind != "local":
        return [
            probe(TARGET, "kubernetes", lambda: _unchecked(scratch.kind)),
        ]
    local = scratch.local
    kinds = {
        policy.sources[name].kind for drill in policy.drills.values() for name in drill.sources if name in policy.sources
    }
    findings = [probe(TARGET, "workdir", lambda: _writable(local.workdir))]
    if "etcd" in kinds:
        findings.append(probe(TARGET, "etcd binary", lambda: _binary(local.etcd_bin)))
    if "clickhouse" in kinds:
        findings.append(probe(TARGET, "clickhouse", lambda: _clickhouse(local.clickhouse, policy)))
    return findings


def _unchecked(kind: str) -> str:
    raise Concern(f"scratch kind {kind}: not checked by doctor", "run a drill with `lifeboat drill run NAME` to prove it")


def _writable(workdir: Path) -> str:
    existing = workdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise Problem(f"{workdir} is not writable ({existing} is not)", "set scratch.local.workdir to a writable directory")
    return f"{workdir} writable, {shutil.disk_usage(existing).free / 1024**3:.1f} GiB free"


def _binary(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise Problem(f"'{binary}' is not on PATH", "install etcd, or set scratch.local.etcd_bin")
    return found


def _clickhouse(endpoint: ClickHouseEndpoint | None, policy: Policy) -> str:
    from backup.sources.clickhouse.client import DriverExecutor, Endpoint

    if endpoint is None:
        raise Problem(
            "drills restore ClickHouse sources but scratch.local.clickhouse is not set", "set scratch.local.clickhouse"
        )
    sources = [s for s in policy.sources.values() if isinstance(s, ClickHouseSettings)]
    for source in sources:
        if (source.host, source.port) == (endpoint.host, endpoint.port):
            raise Concern(
                f"scratch ClickHouse {endpoint.host}:{endpoint.port} is a server the policy backs up: drills write "
                f"databases prefixed {endpoint.database_prefix} there",
                "point scratch.local.clickhouse at a server of its own",
            )
    sql = DriverExecutor(
        Endpoint(
            host=endpoint.host,
            port=endpoint.port,
            http_port=endpoint.http_port,
            user=endpoint.user,
            password=reveal(endpoint.password) or "",
            secure=endpoint.secure,
            database="system",
            timeout=DOCTOR_TIMEOUT,
        )
    )
    try:
        version = sql.execute("SELECT version()")[0][0]
        name = f"{endpoint.database_prefix}doctor"
        sql.execute(f"CREATE DATABASE IF NOT EXISTS {name}")
        sql.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        sql.close()
    return f"{endpoint.host}:{endpoint.port} ClickHouse {version}: a database can be created and dropped"
