"""Many small files into the repository: packs (format 3) against one object per chunk (format 2), and
against restic and borg backing up the same directory, measured in one run.

    .venv/bin/python tests/bench/bench_small_files.py [--files 10000] [--rounds 3]

Input: FILES files of 1-10 KiB (half text, half random) in one directory. Each tool backs the
directory up into a fresh encrypted, zstd-compressed local repository, in its own process (wall
time with start-up, CPU user + system and peak RSS by os.wait4); Lifeboat reads each file and writes
it as an entry (the repository write an S3 or ClickHouse source does per object, without the
network). Then each restores every file (Lifeboat: every entry, verified). Printed: the figures,
objects in the repository and fsync-bearing puts, and Lifeboat's ratios to the others within each
round (medians over ROUNDS). restic and borg come from Debian (`restic`, `borgbackup`); a missing one
is left out with a line saying so.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_repository import Run, measured, peer_env
from cpu import compile_lifeboat

CHILD = r"""
import dataclasses, io, os, sys
from pathlib import Path
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from backup.repository.manifest import Entry

phase, repo_dir, key_file, files = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
key = bytes.fromhex(key_file.read_text())
if phase.startswith("init"):
    repository = Repository.init(LocalStore(repo_dir), key=key)
    if phase == "init-format2":  # what a format 2 repository does: every chunk an object of its own
        config = dataclasses.replace(repository.config, format=2, packs=None)
        (repo_dir / "config.json").write_bytes(config.to_json())
    repository.close()
    sys.exit(0)
repository = Repository.open(LocalStore(repo_dir), key=key)
if phase == "backup":
    with repository.begin_snapshot("files", "bench") as writer:
        for path in sorted(files.iterdir()):
            with path.open("rb") as stream:
                stored = writer.write_stream(stream)
            writer.add(Entry(path.name, stored.size, stored.sha256, stored.chunks))
        writer.commit()
else:
    [header] = repository.list_snapshots()
    out = Path(sys.argv[5])
    out.mkdir()
    for entry in repository.entries(header):
        with (out / entry.name).open("wb") as target:
            repository.restore_entry(entry, target, snapshot=header.id)
repository.close()
"""


def make_files(directory: Path, count: int) -> int:
    directory.mkdir()
    rng = random.Random(22)
    total = 0
    for index in range(count):
        size = rng.randint(1024, 10 * 1024)
        body = rng.randbytes(size) if index % 2 else (b"model config line %d\n" % index * (size // 20 + 1))[:size]
        (directory / f"file-{index:05d}").write_bytes(body)
        total += size
    return total


class Tool:
    def __init__(self, name: str, work: Path) -> None:
        self.name, self.work = name, work
        self.repo = work / f"repo-{name}"
        self.key = work / "lifeboat.key"
        self.env = peer_env(work)

    def _lifeboat(self, phase: str, *extra: str) -> list[str]:
        return [sys.executable, "-c", CHILD, phase, str(self.repo), str(self.key), *extra]

    def init(self, files: Path) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        if self.name.startswith("lifeboat"):
            self.key.write_text(os.urandom(32).hex())
            measured(self._lifeboat("init-format2" if self.name.endswith("format2") else "init", str(files)), env=self.env)
        elif self.name == "restic":
            measured(["restic", "init", "-q", "--repository-version", "2", "-r", str(self.repo)], env=self.env)
        else:
            measured(["borg", "init", "--encryption=repokey-blake2", str(self.repo)], env=self.env)

    def backup(self, files: Path) -> Run:
        if self.name.startswith("lifeboat"):
            return measured(self._lifeboat("backup", str(files)), env=self.env)
        if self.name == "restic":
            argv = ["restic", "-r", str(self.repo), "-q", "backup", "--compression", "auto", "."]
            return measured(argv, env=self.env, cwd=files)
        return measured(["borg", "create", "--compression", "zstd,3", f"{self.repo}::one", "."], env=self.env, cwd=files)

    def restore(self, files: Path, out: Path) -> Run:
        shutil.rmtree(out, ignore_errors=True)
        if self.name.startswith("lifeboat"):
            return measured(self._lifeboat("restore", str(files), str(out)), env=self.env)
        if self.name == "restic":
            return measured(["restic", "-r", str(self.repo), "-q", "restore", "latest", "--target", str(out)], env=self.env)
        out.mkdir()
        return measured(["borg", "extract", f"{self.repo}::one"], env=self.env, cwd=out)

    def objects(self) -> int:
        return sum(1 for path in self.repo.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    compile_lifeboat()
    names = ["lifeboat", "lifeboat-format2"] + [name for name in ("restic", "borg") if shutil.which(name)]
    for peer in ("restic", "borg"):
        if not shutil.which(peer):
            print(f"{peer} is not installed (Debian: apt-get install {'borgbackup' if peer == 'borg' else peer}): left out")
    with tempfile.TemporaryDirectory(prefix="lifeboat-bench-small-") as temp:
        work = Path(temp)
        files = work / "files"
        total = make_files(files, args.files)
        print(f"{args.files} files, {total / 1024 / 1024:.1f} MiB, {args.rounds} round(s), tools interleaved per round")
        results: dict[str, dict[str, list[Run]]] = {name: {"backup": [], "restore": []} for name in names}
        objects: dict[str, int] = {}
        for _ in range(args.rounds):
            for name in names:
                tool = Tool(name, work)
                tool.init(files)
                results[name]["backup"].append(tool.backup(files))
                objects[name] = tool.objects()
                results[name]["restore"].append(tool.restore(files, work / f"out-{name}"))
        print(f"\n{'tool':<18}{'phase':<9}{'wall s':>8}{'CPU s':>8}{'CPU/file ms':>13}{'RSS MiB':>9}{'objects':>9}")
        for name in names:
            for phase in ("backup", "restore"):
                runs = results[name][phase]
                wall, cpu = statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs)
                rss = max(r.rss_mib for r in runs)
                print(
                    f"{name:<18}{phase:<9}{wall:>8.2f}{cpu:>8.2f}{cpu / args.files * 1000:>13.2f}{rss:>9.0f}"
                    f"{objects[name] if phase == 'backup' else '':>9}"
                )
        print("\nLifeboat (packs) against each, median of the per-round ratios (wall / CPU):")
        for other in names[1:]:
            for phase in ("backup", "restore"):
                mine, theirs = results["lifeboat"][phase], results[other][phase]
                wall = statistics.median(a.wall / b.wall for a, b in zip(mine, theirs, strict=True))
                cpu = statistics.median(a.cpu / b.cpu for a, b in zip(mine, theirs, strict=True))
                print(f"  vs {other:<18}{phase:<9}{wall:>6.2f}x wall {cpu:>6.2f}x CPU")


if __name__ == "__main__":
    main()
