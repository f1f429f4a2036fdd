"""Prometheus metrics and the HTTP side of ``lifeboat serve``: ``/metrics`` and ``/healthz``.

The metrics are read from the state DB at every scrape, by a collector in a registry of Lifeboat's
own (never prometheus_client's global default registry): a restart resets nothing, and runs started
from the CLI on the same machine count as well as the service's. Series exist for the sources and
drills of the current policy.

=============================================  =============  =====================================================
metric                                         labels         value
=============================================  =============  =====================================================
lifeboat_last_success_timestamp_seconds        source         end of the newest backup with a good snapshot; 0 when
                                                              there is none yet (a suspicious snapshot is no success)
lifeboat_last_failure_timestamp_seconds        source         end of the newest failed backup; 0 when none
lifeboat_backup_duration_seconds               source         duration of the newest completed backup
lifeboat_backup_bytes                          source, kind   that backup's bytes: kind="read" (from the source),
                                                              kind="stored" (new bytes written to the repository)
lifeboat_snapshots                             source         snapshots in the repository at the last listing
lifeboat_suspicious_snapshots                  source         of those, the ones flagged suspicious
lifeboat_drill_verdict                         drill, source  newest finished run of the drill: 1 PASS, 0 FAIL,
                                                              -1 ERROR (could not verify; also a source the run
                                                              never reached)
lifeboat_drill_rto_seconds                     drill, source  that run's measured restore time; NaN when the restore
                                                              did not complete
lifeboat_drill_last_run_timestamp_seconds      drill          end of the drill's newest finished run
lifeboat_rto_forecast_seconds                  drill, source  next month's forecast restore time (lifeboat.forecast);
                                                              absent before two drill runs measured a restore
lifeboat_check_ok                              (none)         newest finished check: 1 no problem, 0 problems found
                                                              or the check failed
lifeboat_last_check_timestamp_seconds          (none)         end of that check
lifeboat_last_prune_success_timestamp_seconds  (none)         end of the newest successful prune
=============================================  =============  =====================================================

Suggested alerts: ``time() - lifeboat_last_success_timestamp_seconds > 2 * <backup interval>``,
``lifeboat_drill_verdict < 1``, ``lifeboat_suspicious_snapshots > 0``, ``lifeboat_check_ok == 0``.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from drills.model import Status
from lifeboat.forecast import forecasts
from lifeboat.state.history import RunHistory
from lifeboat.state.records import DRILL_VERDICTS, FINISHED_BACKUP, REPOSITORY_NAME, RunKind, RunRecord, RunStatus, utc_now
from policies.errors import LifeboatError
from policies.model import Policy

log = structlog.get_logger(__name__)

VERDICT_VALUES = {Status.PASS: 1.0, Status.FAIL: 0.0, Status.ERROR: -1.0}
NAN = float("nan")
Health = Callable[[], tuple[bool, dict[str, Any]]]


class ListenError(LifeboatError):
    """The HTTP endpoint cannot listen on the configured address."""


class StateCollector(Collector):
    """Lifeboat's gauges, computed from the state DB when Prometheus scrapes."""

    def __init__(self, history: RunHistory, policy: Callable[[], Policy]) -> None:
        self._history = history
        self._policy = policy

    def collect(self) -> Iterator[Metric]:
        policy = self._policy()
        yield from self._backups(list(policy.sources))
        yield from self._drills({name: drill.sources for name, drill in policy.drills.items()})
        yield from self._repository()
        yield self._forecast(policy)

    def _forecast(self, policy: Policy) -> Metric:
        gauge = GaugeMetricFamily(
            "lifeboat_rto_forecast_seconds",
            "Forecast restore time 30 days ahead (lifeboat.forecast).",
            labels=["drill", "source"],
        )
        for name, forecast in forecasts(policy, self._history, now=utc_now()).items():
            for source, seconds in forecast.sources.items():
                gauge.add_metric([name, source], seconds)
        return gauge

    def _backups(self, sources: list[str]) -> Iterator[Metric]:
        history = self._history
        success = history.last_runs(RunKind.BACKUP, [RunStatus.OK])
        failure = history.last_runs(RunKind.BACKUP, [RunStatus.FAILED])
        completed = history.last_runs(RunKind.BACKUP, FINISHED_BACKUP)
        inventory = history.inventory()
        last_success = _gauge("last_success_timestamp_seconds", "End of the newest backup with a good snapshot (0: none).")
        last_failure = _gauge("last_failure_timestamp_seconds", "End of the newest failed backup (0: none).")
        duration = _gauge("backup_duration_seconds", "Duration of the newest completed backup.")
        moved = _gauge("backup_bytes", "Bytes of the newest completed backup: read from the source, stored new.", ["kind"])
        snapshots = _gauge("snapshots", "Snapshots in the repository at the last listing.")
        suspicious = _gauge("suspicious_snapshots", "Snapshots flagged suspicious at the last listing.")
        for source in sources:
            last_success.add_metric([source], _end(success.get(source)))
            last_failure.add_metric([source], _end(failure.get(source)))
            if (run := completed.get(source)) is not None:
                duration.add_metric([source], float(run.figures.get("seconds", run.seconds or 0.0)))
                moved.add_metric([source, "read"], float(run.figures.get("bytes_read", 0)))
                moved.add_metric([source, "stored"], float(run.figures.get("bytes_stored", 0)))
            if (counted := inventory.get(source)) is not None:
                snapshots.add_metric([source], counted.snapshots)
                suspicious.add_metric([source], counted.suspicious)
        yield from (last_success, last_failure, duration, moved, snapshots, suspicious)

    def _drills(self, drills: dict[str, list[str]]) -> Iterator[Metric]:
        finished = self._history.last_runs(RunKind.DRILL, DRILL_VERDICTS)
        labels = ["drill", "source"]
        verdict = GaugeMetricFamily(
            "lifeboat_drill_verdict", "Newest finished drill run, per source: 1 PASS, 0 FAIL, -1 ERROR.", labels=labels
        )
        rto = GaugeMetricFamily(
            "lifeboat_drill_rto_seconds", "Restore time measured by the newest drill run (NaN: none).", labels=labels
        )
        last = GaugeMetricFamily(
            "lifeboat_drill_last_run_timestamp_seconds", "End of the newest finished drill run.", labels=["drill"]
        )
        for drill, sources in drills.items():
            run = finished.get(drill)
            if run is None:
                continue
            last.add_metric([drill], _end(run))
            reached = {item["source"]: item for item in run.figures.get("sources", [])}
            for source in sources:
                item = reached.get(source, {})
                verdict.add_metric([drill, source], VERDICT_VALUES[_verdict(item.get("verdict"))])
                seconds = item.get("rto_seconds")
                rto.add_metric([drill, source], float(seconds) if seconds is not None else NAN)
        yield from (verdict, rto, last)

    def _repository(self) -> Iterator[Metric]:
        check = self._history.last_run(RunKind.CHECK, REPOSITORY_NAME, [RunStatus.OK, RunStatus.FAILED])
        prune = self._history.last_run(RunKind.PRUNE, REPOSITORY_NAME, [RunStatus.OK])
        if check is not None:
            ok = GaugeMetricFamily("lifeboat_check_ok", "Newest finished repository check: 1 no problem, 0 problems.")
            ok.add_metric([], 1.0 if check.status is RunStatus.OK else 0.0)
            when = GaugeMetricFamily("lifeboat_last_check_timestamp_seconds", "End of the newest finished check.")
            when.add_metric([], _end(check))
            yield from (ok, when)
        if prune is not None:
            pruned = GaugeMetricFamily(
                "lifeboat_last_prune_success_timestamp_seconds", "End of the newest successful prune."
            )
            pruned.add_metric([], _end(prune))
            yield pruned


def _gauge(name: str, documentation: str, extra_labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"lifeboat_{name}", documentation, labels=["source", *extra_labels])


def _verdict(text: Any) -> Status:
    """A source's verdict as the drill run's figures store it; ERROR for a source the run never reached."""
    try:
        return Status(text)
    except ValueError:
        return Status.ERROR


def _end(run: RunRecord | None) -> float:
    return 0.0 if run is None or run.finished is None else run.finished.timestamp()


def metrics_registry(history: RunHistory, policy: Callable[[], Policy]) -> CollectorRegistry:
    """A registry of Lifeboat's own holding the state collector (``policy()`` gives the current policy)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(history, policy))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)


# ---- HTTP ------------------------------------------------------------------------------------------


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``listen`` (``host:port``), served from a daemon thread.

    ``/healthz`` answers 200 when ``health()`` says healthy and 503 otherwise, with its JSON body.
    """

    def __init__(self, listen: str, registry: CollectorRegistry, health: Health) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self._registry = registry
        self._health = health
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve; raises ListenError when the address is taken or invalid."""
        handler = _handler(self._registry, self._health)
        server_class = _IPv6Server if ":" in self.host else ThreadingHTTPServer
        try:
            self._server = server_class((self.host, self.port), handler)
        except OSError as exc:
            raise ListenError(f"cannot listen on {self.host}:{self.port} (service.listen): {exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="lifeboat-http", daemon=True)
        self._thread.start()
        log.info("http.listening", url=self.url, endpoints=["/healthz", "/metrics"])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(registry: CollectorRegistry, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "lifeboat"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encode, content_type = choose_encoder(self.headers.get("Accept", ""))  # text or OpenMetrics
                self._answer(200, encode(registry), content_type)
            elif path == "/healthz":
                healthy, body = health()
                self._answer(200 if healthy else 503, json.dumps(body, default=str).encode(), "application/json")
            else:
                self._answer(404, b'{"error": "not found: try /healthz or /metrics"}', "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http.request", client=self.client_address[0], request=format % args)

    return Handler
