"""Drill reports kept in the repository (``drills/<drill>/<run id>.json``), so the proof of every
restore lives with the backups it proved, sealed like everything else in the repository."""

from __future__ import annotations

import json

from backup.repository.repository import Repository
from backup.repository.store import get_bytes, put_bytes
from drills.model import DrillRun


def report_key(drill: str, run_id: str) -> str:
    return f"drills/{drill}/{run_id}.json"


def store_report(repository: Repository, run: DrillRun) -> str:
    key = report_key(run.drill, run.run_id)
    document = json.dumps(run.to_dict(), ensure_ascii=False).encode()
    put_bytes(repository.store, key, repository.codec.encode(document, name=key))
    return key


def load_history(repository: Repository, drill: str | None = None, *, limit: int = 50) -> list[DrillRun]:
    """The newest ``limit`` stored runs (of ``drill``, or of every drill), oldest first."""
    prefix = f"drills/{drill}/" if drill else "drills/"
    keys = sorted((info.key for info in repository.store.list(prefix) if info.key.endswith(".json")), key=_run_id)
    runs = []
    for key in keys[-limit:]:
        sealed = get_bytes(repository.store, key)
        runs.append(DrillRun.from_dict(json.loads(repository.codec.decode(sealed, name=key))))
    return runs


def _run_id(key: str) -> str:
    return key.rsplit("/", 1)[-1]
