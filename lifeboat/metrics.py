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
lifeboat_backup_runs_total                     source,        finished backup runs (counter): status ok, failed,
                                               status         suspicious, interrupted
lifeboat_drill_runs_total                      drill, verdict finished drill runs (counter): PASS, FAIL, ERROR,
                                                              interrupted
lifeboat_prune_runs_total                      status         finished prune runs (counter): ok, failed, interrupted
lifeboat_check_runs_total                      status         finished check runs (counter): ok, failed, interrupted
lifeboat_job_duration_seconds                  kind           histogram of finished runs' durations: backup, prune,
                                                              check, drill, janitor
lifeboat_build_info                            version        1; the running Lifeboat's version
lifeboat_backup_schedule_interval_seconds      source         longest gap between two runs of the source's schedule
lifeboat_last_backup_suspicious                source         1 when the newest finished backup is suspicious
lifeboat_drill_rpo_seconds                     drill, source  the newest run's measured RPO (snapshot age); NaN: none
lifeboat_drill_rto_objective_seconds           drill, source  the drill's RTO objective (policy)
lifeboat_drill_rpo_objective_seconds           drill, source  the drill's RPO objective (policy)
=============================================  =============  =====================================================

Counters and the histogram are counted from the runs in the state DB (never reset by a restart).
Alert rules over these: deploy/prometheus/lifeboat-rules.yaml (and the PrometheusRule in
deploy/kubernetes/); a dashboard: deploy/grafana/lifeboat.json.
"""

from __future__ import annotations

import functools
import itertools
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, make_server

import structlog
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from drills.model import Status
from lifeboat import __version__
from lifeboat.forecast import forecasts
from lifeboat.service.cron import next_fire_times
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
        yield from self._runs(policy)
        yield from self._policy_figures(policy)
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
        rpo = GaugeMetricFamily(
            "lifeboat_drill_rpo_seconds", "RPO (snapshot age) measured by the newest drill run (NaN: none).", labels=labels
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
                age = item.get("rpo_seconds")
                rpo.add_metric([drill, source], float(age) if age is not None else NAN)
        yield from (verdict, rto, rpo, last)

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

    def _runs(self, policy: Policy) -> Iterator[Metric]:
        """Counters of finished runs per outcome, and the histogram of their durations per job kind."""
        counted = {(kind, name, status): n for kind, name, status, n in self._history.run_counts()}
        backups = CounterMetricFamily("lifeboat_backup_runs", "Finished backup runs.", labels=["source", "status"])
        for source in policy.sources:
            for status in BACKUP_OUTCOMES:
                backups.add_metric([source, status], counted.get((RunKind.BACKUP, source, status), 0))
        drills = CounterMetricFamily("lifeboat_drill_runs", "Finished drill runs.", labels=["drill", "verdict"])
        for drill in policy.drills:
            for verdict in DRILL_OUTCOMES:
                drills.add_metric([drill, verdict], counted.get((RunKind.DRILL, drill, verdict), 0))
        yield from (backups, drills)
        for kind in (RunKind.PRUNE, RunKind.CHECK):
            counter = CounterMetricFamily(f"lifeboat_{kind.value}_runs", f"Finished {kind.value} runs.", labels=["status"])
            for status in REPOSITORY_OUTCOMES:
                counter.add_metric([status], counted.get((kind, REPOSITORY_NAME, status), 0))
            yield counter
        durations = self._history.run_durations()
        histogram = HistogramMetricFamily(
            "lifeboat_job_duration_seconds", "Duration of finished runs, per job kind.", labels=["kind"]
        )
        for kind in RunKind:
            seconds = durations.get(kind.value, [])
            buckets = [(_bound(bound), sum(value <= bound for value in seconds)) for bound in DURATION_BUCKETS]
            histogram.add_metric([kind.value], [*buckets, ("+Inf", len(seconds))], sum_value=sum(seconds))
        yield histogram
        build = GaugeMetricFamily("lifeboat_build_info", "The running Lifeboat.", labels=["version"])
        build.add_metric([__version__], 1.0)
        yield build

    def _policy_figures(self, policy: Policy) -> Iterator[Metric]:
        """What the policy promises, for alert rules: schedule intervals, drill objectives; and the
        newest backup's suspicious flag per source."""
        interval = _gauge("backup_schedule_interval_seconds", "Longest gap between two scheduled backups.")
        for name, source in policy.sources.items():
            if source.schedule:
                interval.add_metric([name], schedule_interval(source.schedule))
        completed = self._history.last_runs(RunKind.BACKUP, FINISHED_BACKUP)
        suspicious = _gauge("last_backup_suspicious", "1 when the newest finished backup is suspicious.")
        for name in policy.sources:
            if (run := completed.get(name)) is not None:
                suspicious.add_metric([name], 1.0 if run.status is RunStatus.SUSPICIOUS else 0.0)
        labels = ["drill", "source"]
        rto = GaugeMetricFamily("lifeboat_drill_rto_objective_seconds", "The drill's RTO objective.", labels=labels)
        rpo = GaugeMetricFamily("lifeboat_drill_rpo_objective_seconds", "The drill's RPO objective.", labels=labels)
        for drill_name, drill in policy.drills.items():
            for member in drill.sources:
                rto.add_metric([drill_name, member], drill.objectives.rto.total_seconds())
                rpo.add_metric([drill_name, member], drill.objectives.rpo.total_seconds())
        yield from (interval, suspicious, rto, rpo)


BACKUP_OUTCOMES = ("ok", "failed", "suspicious", "interrupted")
DRILL_OUTCOMES = ("PASS", "FAIL", "ERROR", "interrupted")
REPOSITORY_OUTCOMES = ("ok", "failed", "interrupted")
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)


def _bound(value: float) -> str:
    return f"{float(value)}"


@functools.lru_cache(maxsize=256)
def schedule_interval(expression: str) -> float:
    """The longest gap (seconds) between consecutive firings of cron ``expression`` over the next ones
    (a week of an hourly schedule, months of a weekly one)."""
    times = next_fire_times(expression, now=datetime(2026, 1, 1, tzinfo=UTC), count=200)
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    return max(gaps, default=0.0)


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

    ``/metrics`` is prometheus_client's own WSGI app (text or OpenMetrics, gzip when asked);
    ``/healthz`` answers 200 when ``health()`` says healthy and 503 otherwise, with its JSON body.
    GET and HEAD, HTTP/1.1 (one request per connection), on prometheus_client's WSGI server.
    """

    def __init__(self, listen: str, registry: CollectorRegistry, health: Health) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self._app = lifeboat_app(registry, health)
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve; raises ListenError when the address is taken or invalid."""
        server_class = _IPv6Server if ":" in self.host else ThreadingWSGIServer
        try:
            self._server = make_server(self.host, self.port, self._app, server_class, handler_class=_Handler)
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


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def lifeboat_app(registry: CollectorRegistry, health: Health) -> WsgiApp:
    """The WSGI app: ``/metrics`` (prometheus_client's ``make_wsgi_app``), ``/healthz``, 404 elsewhere;
    HEAD answers as GET would, without the body."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        head = environ["REQUEST_METHOD"] == "HEAD"
        if head:
            environ = {**environ, "REQUEST_METHOD": "GET"}
        path = environ.get("PATH_INFO", "")
        answered: list[Any] = []
        if path == "/metrics":
            body = b"".join(metrics(environ, lambda status, headers, *_: answered.extend([status, headers])))
            status, headers = answered
        elif path == "/healthz" and environ["REQUEST_METHOD"] == "GET":
            healthy, document = health()
            body = json.dumps(document, default=str).encode()
            status, headers = ("200 OK" if healthy else "503 Service Unavailable"), [("Content-Type", "application/json")]
        else:
            body = b'{"error": "not found: try /healthz or /metrics"}'
            status, headers = "404 Not Found", [("Content-Type", "application/json")]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [] if head else [body]

    return app


class _ServerHandler(ServerHandler):
    http_version = "1.1"

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        self.headers["Connection"] = "close"  # type: ignore[attr-defined]  # one request per connection, said so as HTTP/1.1 requires


class _Handler(WSGIRequestHandler):
    """wsgiref's request handler answering in HTTP/1.1, logging requests at debug level."""

    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = _ServerHandler(
            self.rfile,
            self.wfile,  # type: ignore[arg-type]
            self.get_stderr(),
            self.get_environ(),
            multithread=True,
        )
        handler.request_handler = self  # type: ignore[attr-defined]  # as wsgiref does, for its logging
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http.request", client=self.client_address[0], request=format % args)
