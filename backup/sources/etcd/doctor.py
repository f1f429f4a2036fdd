"""etcd's preflight (``lifeboat doctor``): per endpoint its health and version (over TLS when
configured), and the maintenance status call, which etcd allows to the same users as a snapshot
(root, once auth is on); and the etcdctl binary the snapshot runs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import partial

from backup.doctor import DOCTOR_TIMEOUT, Finding, Problem, Status, probe
from backup.sources.etcd.gateway import EtcdGateway, GatewayRefused, ssl_context_for
from policies.model import EtcdSettings, reveal
from policies.model import Repository as RepositorySettings


def doctor(name: str, settings: EtcdSettings, *, repository: RepositorySettings) -> list[Finding]:
    """Every check of etcd source ``name``; never raises."""
    target = f"source {name}"
    findings = [probe(target, "etcdctl", lambda: _etcdctl(name, settings.etcdctl))]
    context = probe(target, "TLS files", lambda: _tls(name, settings))
    if settings.tls is not None:
        findings.append(context)
        if context.status is Status.FAIL:
            return findings
    ssl_context = ssl_context_for(settings.tls, f"sources.{name}")
    for endpoint in settings.endpoints:
        url = str(endpoint).rstrip("/")

        def gateway(url: str = url) -> EtcdGateway:
            return EtcdGateway(
                url, ssl_context=ssl_context, user=settings.user, password=reveal(settings.password), timeout=DOCTOR_TIMEOUT
            )

        health = probe(
            target, f"{url} health, version", partial(_health_of, gateway), fix=f"check sources.{name}.endpoints and tls"
        )
        findings.append(health)
        if health.status is not Status.FAIL:
            findings.append(probe(target, f"{url} snapshot permission", partial(_status_of, gateway, settings.user)))
    return findings


def _health_of(gateway: Callable[[], EtcdGateway]) -> str:
    return _health(gateway())


def _status_of(gateway: Callable[[], EtcdGateway], user: str | None) -> str:
    return _status(gateway(), user)


def _etcdctl(name: str, binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise Problem(f"'{binary}' is not on PATH", f"install etcdctl, or set sources.{name}.etcdctl to its path")
    return found


def _tls(name: str, settings: EtcdSettings) -> str:
    ssl_context_for(settings.tls, f"sources.{name}")  # raises naming the setting and the file
    return "CA, certificate and key load"


def _health(gateway: EtcdGateway) -> str:
    with gateway:
        version = gateway.version()
        healthy = str(gateway.health().get("health", "")) == "true"
    if not healthy:
        raise Problem(
            f"etcd {version} answers but reports itself unhealthy (no leader?)", "check the cluster's members and quorum"
        )
    return f"healthy, etcd {version}"


def _status(gateway: EtcdGateway, user: str | None) -> str:
    try:
        with gateway:
            status = gateway.status()
    except GatewayRefused as exc:
        raise Problem(
            f"the maintenance status call was refused ({exc.reason}): a snapshot would be too",
            f"give user '{user}' the root role (etcd allows snapshots to root only once auth is on)",
        ) from None
    return f"maintenance calls allowed; db size {int(status.get('dbSize', 0)) // 1024} KiB"
