"""Bounded memory (issue 22 item 1): a repository walk holds a window of chunks, never the repository.

A backup's chunks in flight are bounded for all its streams together: 16 streams written at once
(an S3 source's parallel objects) once queued a window each, 128 MiB of blocks for 4 threads. And
entries restored at once (an S3 restore's parallel uploads) share one read-ahead.

A repository of 384 MiB of random data (two entries of 192 MiB, many times the window of chunks in
flight) is checked with `lifeboat check --read-data`, copied with `lifeboat copy` and restored to a
file through the repository's restore path, each in a child process whose peak RSS is measured by a
fresh helper process (``RUSAGE_CHILDREN`` of that helper is its one child's). Every one stays under
256 MiB, well below the repository's size.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import init_repository
from policy_builder import PolicyBuilder

from backup.repository.manifest import Entry
from backup.repository.repository import Repository
from backup.repository.store import LocalStore

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
ENTRY_MIB = 192
BOUND_MIB = 256

# Runs argv as its only child and prints that child's peak RSS in KiB (Linux: ru_maxrss is KiB).
MEASURE = r"""
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True)
sys.stderr.write(done.stdout.decode()[-2000:] + done.stderr.decode()[-4000:])
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

RESTORE = r"""
import hashlib, sys
from pathlib import Path
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
with Repository.open(LocalStore(Path(sys.argv[1]))) as repository:
    header = repository.find_snapshot("bulk")
    for entry in repository.entries(header):
        with open(sys.argv[2], "wb") as out:
            repository.restore_entry(entry, out, snapshot=header.id)
"""

WRITE_STREAMS = 16
STREAM_MIB = 24
WRITE_BOUND_MIB = 160
RESTORE_BOUND_MIB = 320  # 16 readers x 2 chunks read ahead x 4 MiB chunks, and the one each is writing

# Writes WRITE_STREAMS seeded random streams of STREAM_MIB at once into one snapshot (as the S3 source does).
CONCURRENT_WRITE = r"""
import random, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from backup.repository.manifest import Entry
from backup.repository.repository import Repository
from backup.repository.store import LocalStore

streams, size = int(sys.argv[2]), int(sys.argv[3]) * 1024 * 1024

class Stream:
    def __init__(self, seed):
        self.rng, self.left = random.Random(seed), size
    def read(self, count):
        count = min(count, self.left)
        self.left -= count
        return self.rng.randbytes(count)

with Repository.open(LocalStore(Path(sys.argv[1]))) as repository, repository.begin_snapshot("bulk", "etcd") as writer:
    def one(seed):
        stored = writer.write_stream(Stream(seed))
        writer.add(Entry(f"stream-{seed}", stored.size, stored.sha256, stored.chunks))
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(one, range(streams)))
    writer.commit()
"""

# Restores every entry of snapshot "bulk" at once, one thread each, into sinks slower than the reads
# (an S3 target's uploads): each reader's read-ahead fills.
CONCURRENT_RESTORE = r"""
import sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from backup.repository.repository import Repository
from backup.repository.store import LocalStore

class SlowSink:
    def write(self, block):
        time.sleep(0.5)
        return len(block)

with Repository.open(LocalStore(Path(sys.argv[1]))) as repository:
    header = repository.find_snapshot("bulk")
    entries = list(repository.entries(header))
    with ThreadPoolExecutor(len(entries)) as pool:
        list(pool.map(lambda entry: repository.restore_entry(entry, SlowSink(), snapshot=header.id), entries))
"""


class RandomStream(io.RawIOBase):
    """``size`` seeded random bytes, made as they are read (the test process never holds them)."""

    def __init__(self, seed: int, size: int) -> None:
        self.rng = random.Random(seed)
        self.left = size
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        count = self.left if size < 0 else min(size, self.left)
        data = self.rng.randbytes(count)
        self.left -= count
        self.digest.update(data)
        return data


def peak_rss_mib(argv: list[str]) -> float:
    """The peak RSS of ``argv`` run to its end; it must succeed."""
    done = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, timeout=600, check=True)
    code, kib = done.stdout.split()
    assert code == "0", done.stderr
    return int(kib) / 1024


def policy(directory: Path, name: str) -> Path:
    """A policy whose repository is ``directory``; its source is never read (nothing here backs it up)."""
    builder = PolicyBuilder(directory, state=directory.parent / f"{name}.db")
    builder.source("bulk", "etcd", endpoints=["http://127.0.0.1:9"], retention={"keep_last": 1})
    return init_repository(builder.write(directory.parent / f"{name}.yaml"))


def lifeboat(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lifeboat", "--config", str(config), *args]


@pytest.fixture(scope="module")
def big_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A policy, its repository of two random entries of ENTRY_MIB each, and the entries' SHA-256."""
    root = tmp_path_factory.mktemp("bounded")
    config = policy(root / "repo", "lifeboat")
    digests = []
    with Repository.open(LocalStore(root / "repo")) as repository, repository.begin_snapshot("bulk", "etcd") as writer:
        for seed in (1, 2):
            stream = RandomStream(seed, ENTRY_MIB * MiB)
            stored = writer.write_stream(stream)  # type: ignore[arg-type]
            writer.add(Entry(f"entry-{seed}", stored.size, stored.sha256, stored.chunks))
            digests.append(stored.sha256)
        writer.commit()
    return config, root / "repo", digests


def test_check_read_data_of_a_repository_larger_than_memory_bound_stays_within_it(
    big_repository: tuple[Path, Path, list[str]],
) -> None:
    config, _, _ = big_repository
    peak = peak_rss_mib(lifeboat(config, "check", "--read-data"))
    assert peak < BOUND_MIB, f"check --read-data of {2 * ENTRY_MIB} MiB peaked at {peak:.0f} MiB"


def test_restoring_an_entry_larger_than_the_memory_bound_stays_within_it(
    big_repository: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    _, repo, digests = big_repository
    out = tmp_path / "restored.bin"
    peak = peak_rss_mib([sys.executable, "-c", RESTORE, str(repo), str(out)])
    assert peak < BOUND_MIB, f"restoring a {ENTRY_MIB} MiB entry peaked at {peak:.0f} MiB"
    digest = hashlib.sha256()
    with out.open("rb") as restored:
        while block := restored.read(8 * MiB):
            digest.update(block)
    assert digest.hexdigest() == digests[-1]


def test_copying_a_repository_larger_than_the_memory_bound_stays_within_it(
    big_repository: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    config, _, _ = big_repository
    target = policy(tmp_path / "copy", "copy")
    peak = peak_rss_mib(lifeboat(config, "copy", "--to", str(target)))
    assert peak < BOUND_MIB, f"copying {2 * ENTRY_MIB} MiB peaked at {peak:.0f} MiB"
    listed = subprocess.run(lifeboat(target, "snapshots", "list", "--json"), capture_output=True, check=True)
    assert [item["source"] for item in json.loads(listed.stdout)["snapshots"]] == ["bulk"]


def test_a_backup_writing_many_streams_at_once_holds_one_window_of_chunks_for_all(tmp_path: Path) -> None:
    policy(tmp_path / "repo", "lifeboat")
    argv = [sys.executable, "-c", CONCURRENT_WRITE, str(tmp_path / "repo"), str(WRITE_STREAMS), str(STREAM_MIB)]
    peak = peak_rss_mib(argv)
    assert peak < WRITE_BOUND_MIB, f"writing {WRITE_STREAMS} streams at once peaked at {peak:.0f} MiB"


def test_restoring_many_entries_at_once_shares_one_read_ahead(tmp_path: Path) -> None:
    """16 objects restored at once (an S3 restore's parallel uploads) each read ahead a share of the
    window, not a window each: with 4 MiB chunks and uploads slower than the reads, that peaked at 430
    MiB (now about 220)."""
    policy(tmp_path / "repo", "lifeboat")
    (tmp_path / "repo" / "config.json").unlink()
    Repository.init(LocalStore(tmp_path / "repo"), chunk_size=4 * MiB).close()
    with Repository.open(LocalStore(tmp_path / "repo")) as repository, repository.begin_snapshot("bulk", "etcd") as writer:
        for seed in range(WRITE_STREAMS):
            stored = writer.write_stream(RandomStream(seed, STREAM_MIB * MiB))  # type: ignore[arg-type]
            writer.add(Entry(f"entry-{seed}", stored.size, stored.sha256, stored.chunks))
        writer.commit()
    peak = peak_rss_mib([sys.executable, "-c", CONCURRENT_RESTORE, str(tmp_path / "repo")])
    what = f"restoring {WRITE_STREAMS} entries of {STREAM_MIB} MiB at once"
    assert peak < RESTORE_BOUND_MIB, f"{what} peaked at {peak:.0f} MiB"
