"""Repository write/restore throughput and memory against zstd, measured in one run.

    .venv/bin/python tests/bench/bench_repository.py [--size-mib 1024] [--workdir DIR]

Input: half compressible text, half random bytes. Floors: `zstd -3 -T1` of the same file, and
`zstd -d` of its output. Lifeboat runs in a child process per phase so that its peak RSS is its own.
Targets (issue 3): first write >= 0.7x the zstd floor's throughput, second write stores < 1% new,
restore >= 0.7x `zstd -d`, peak RSS < 256 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024

CHILD = r"""
import io, json, resource, sys, time
from pathlib import Path
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from backup.repository.manifest import Entry

phase, repo_dir, path = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
started = time.perf_counter()
if phase == "write":
    repository = Repository.open(LocalStore(repo_dir))
    with repository.begin_snapshot("bench", "file") as writer, open(path, "rb") as stream:
        stored = writer.write_stream(stream)
        writer.add(Entry("input", stored.size, stored.sha256, stored.chunks))
        writer.commit()
    figures = {"bytes_read": writer.stats.bytes_read, "bytes_stored": writer.stats.bytes_stored}
else:
    repository = Repository.open(LocalStore(repo_dir))
    header = repository.find_snapshot("bench")
    [entry] = list(repository.entries(header))
    with open(path, "wb") as out:
        repository.restore_entry(entry, out, snapshot=header.id)
    figures = {}
repository.close()
figures["seconds"] = time.perf_counter() - started
figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(figures))
"""


def make_input(path: Path, size: int) -> None:
    rng = random.Random(42)
    with path.open("wb") as out:
        written = 0
        line = 0
        while written < size // 2:  # compressible: CSV-like feature rows
            block = b"".join(
                b"%d,user-%d,%0.4f,2026-11-%02d,model-v%d\n"
                % (line + i, rng.randrange(10**6), rng.random(), i % 28 + 1, i % 7)
                for i in range(20_000)
            )
            line += 20_000
            out.write(block[: size // 2 - written])
            written += min(len(block), size // 2 - written)
        while written < size:  # incompressible: model weights, already-compressed data
            block = os.urandom(min(8 * MiB, size - written))
            out.write(block)
            written += len(block)


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - started


def lifeboat(phase: str, repo: Path, path: Path) -> dict[str, float]:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, phase, str(repo), str(path)], check=True, capture_output=True, cwd=root
    )
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="lifeboat-bench-", dir=args.workdir))
    try:
        source = work / "input.bin"
        make_input(source, size)
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

        floor_write = timed(["zstd", "-3", "-T1", "-q", "-f", str(source), "-o", str(work / "floor.zst")])
        floor_read = timed(["zstd", "-d", "-q", "-f", str(work / "floor.zst"), "-o", str(work / "floor.out")])
        (work / "floor.out").unlink()

        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from backup.repository.repository import Repository
        from backup.repository.store import LocalStore

        Repository.init(LocalStore(work / "repo")).close()
        first = lifeboat("write", work / "repo", source)
        second = lifeboat("write", work / "repo", source)
        restore = lifeboat("restore", work / "repo", work / "restored.bin")
        if subprocess.run(["cmp", "-s", str(source), str(work / "restored.bin")], check=False).returncode != 0:
            raise SystemExit("restored bytes differ from the input")

        mb = size / 1e6
        rows = [
            ("first write", mb / first["seconds"], mb / floor_write, "zstd -3 -T1", ">= 0.7x", first["peak_rss_mib"]),
            (
                "second write",
                mb / second["seconds"],
                mb / first["seconds"],
                "first write",
                "(faster)",
                second["peak_rss_mib"],
            ),
            ("restore", mb / restore["seconds"], mb / floor_read, "zstd -d", ">= 0.7x", restore["peak_rss_mib"]),
        ]
        packed = (work / "floor.zst").stat().st_size / MiB
        print(f"input: {args.size_mib} MiB (half text, half random); zstd -3 -T1 output {packed:.0f} MiB")
        print(f"{'phase':<14}{'MB/s':>9}{'floor MB/s':>12}  {'ratio':>6}  {'floor':<13}{'target':<10}{'peak RSS':>10}")
        for name, rate, floor, floor_name, target, rss in rows:
            print(
                f"{name:<14}{rate:>9.0f}{floor:>12.0f}  {rate / floor:>5.2f}x  {floor_name:<13}{target:<10}{rss:>7.0f} MiB"
            )
        stored_share = second["bytes_stored"] / size
        print(
            f"first write stored {first['bytes_stored'] / MiB:.0f} MiB; "
            f"second write stored {second['bytes_stored']} bytes new ({100 * stored_share:.4f}% of the input; target < 1%)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
