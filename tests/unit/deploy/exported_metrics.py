"""What Lifeboat really exports, for the tests of the alert rules and the dashboard in deploy/: the
exposition of ``lifeboat.metrics`` over a small state DB holding a run of every kind, read back by
prometheus_client's own parser."""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from drills.model import Status
from lifeboat.metrics import metrics_registry, render_metrics
from lifeboat.state.history import RunHistory
from lifeboat.state.records import REPOSITORY_NAME, RunKind, RunStatus
from policies.loader import parse_policy

POLICY = """
sources:
  k8s-etcd: {kind: etcd, endpoints: ["http://127.0.0.1:2379"], schedule: "0 * * * *"}
  models: {kind: s3, buckets: [models], schedule: "30 2 * * *"}
scratch:
  local:
    s3: {endpoint_url: "http://scratch-minio:9000"}
drills:
  nightly: {sources: [k8s-etcd, models], objectives: {rto: 30m, rpo: 26h}}
"""


@functools.cache
def exposition() -> str:
    """The text exposition of a state DB with a good, a failed and a suspicious backup, a drill run,
    a check, a prune and a janitor run, and a repository listing: every family has samples."""
    policy = parse_policy(POLICY, label="exported_metrics.py", env={})
    with tempfile.TemporaryDirectory() as directory, RunHistory.open(Path(directory) / "state.db") as history:
        for kind, name, status, figures in [
            (RunKind.BACKUP, "k8s-etcd", RunStatus.OK, {"seconds": 3.0, "bytes_read": 1000, "bytes_stored": 100}),
            (RunKind.BACKUP, "k8s-etcd", RunStatus.FAILED, {}),
            (RunKind.BACKUP, "models", RunStatus.SUSPICIOUS, {"seconds": 9.0, "bytes_read": 10, "bytes_stored": 1}),
            (
                RunKind.DRILL,
                "nightly",
                Status.FAIL,
                {
                    "sources": [
                        {"source": "k8s-etcd", "verdict": "PASS", "rto_seconds": 12.0, "rpo_seconds": 600.0},
                        {"source": "models", "verdict": "FAIL", "rto_seconds": 2400.0, "rpo_seconds": 7200.0},
                    ]
                },
            ),
            (RunKind.CHECK, REPOSITORY_NAME, RunStatus.OK, {}),
            (RunKind.PRUNE, REPOSITORY_NAME, RunStatus.OK, {}),
            (RunKind.JANITOR, "janitor", RunStatus.OK, {}),
        ]:
            history.finish_run(history.start_run(kind, name, origin="service"), status, figures=figures)
        history.set_inventory({"k8s-etcd": (3, 0), "models": (2, 1)}, repository="test")
        return render_metrics(metrics_registry(history, lambda: policy)).decode()


@functools.cache
def exported_names() -> frozenset[str]:
    """Every series name of the exposition, as PromQL sees them: ``lifeboat_backup_runs_total``,
    ``lifeboat_job_duration_seconds_bucket`` / ``_sum`` / ``_count``, ..."""
    return frozenset(sample.name for family in text_string_to_metric_families(exposition()) for sample in family.samples)


# PromQL words that are not series names: keywords, aggregation modifiers, and what follows them.
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def series_names(expression: str) -> set[str]:
    """The series names a PromQL ``expression`` reads (a lexical reading, enough for the rules and
    panels of deploy/): label matchers, strings, ranges, grouping label lists, function names,
    keywords and numbers are left out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expression)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    words = re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text)
    return {match.group(1) for match in words if not match.group(2) and match.group(1) not in _KEYWORDS}
