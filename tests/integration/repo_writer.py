"""A repository writer to be killed: run by test_repository_reliability.py as a subprocess.

    python repo_writer.py STORE_JSON START_SEED
    python repo_writer.py STORE_JSON prune

says `ready` once the repository is open, then writes snapshots of `payload(seed)` forever (seed =
START_SEED, START_SEED + 1, ..., each printed on a line of its own once committed), each with its
seed in the entry's meta, so that whoever finds a committed snapshot can regenerate its input;
or prunes source `crash` to its newest two snapshots, with no grace period, forever.
"""

from __future__ import annotations

import io
import json
import random
import sys
from datetime import timedelta
from pathlib import Path

from backup.repository.maintenance import prune
from backup.repository.manifest import Entry
from backup.repository.repository import Repository
from backup.repository.s3store import S3Store, make_client
from backup.repository.store import LocalStore, Store
from policies.model import Retention

MiB = 1024 * 1024


def payload(seed: int) -> bytes:
    """2-4 MiB, half of it shared between seeds (so dedup and orphan chunks both happen)."""
    rng = random.Random(seed)
    shared = random.Random(7).randbytes(MiB)
    return shared + rng.randbytes(MiB + rng.randrange(2 * MiB))


def open_store(spec: dict) -> Store:
    if spec["kind"] == "local":
        return LocalStore(Path(spec["root"]))
    client = make_client(
        endpoint_url=spec["endpoint_url"],
        region="us-east-1",
        access_key_id=spec["access_key_id"],
        secret_access_key=spec["secret_access_key"],
    )
    return S3Store(client, spec["bucket"], spec["prefix"])


def main() -> None:
    spec = json.loads(sys.argv[1])
    repository = Repository.open(open_store(spec))
    print("ready", flush=True)  # imports take a second or more on a busy machine: kills come after them
    if sys.argv[2] == "prune":
        while True:
            report = prune(repository, {"crash": Retention(keep_last=2)}, grace=timedelta(0), dry_run=False)
            print("pruned", len(report.forgotten), flush=True)
    seed = int(sys.argv[2])
    while True:
        data = payload(seed)
        with repository.begin_snapshot("crash", "test") as writer:
            stored = writer.write_stream(io.BytesIO(data))
            writer.add(Entry("payload", stored.size, stored.sha256, stored.chunks, {"seed": seed}))
            writer.commit()
        print(seed, flush=True)
        seed += 1


if __name__ == "__main__":
    main()
