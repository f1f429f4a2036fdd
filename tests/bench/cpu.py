"""CPU accounting the benchmarks share: what a process used, what storing a file costs at least, and
Lifeboat byte-compiled before it is timed.

Imported by the bench scripts, which run as ``python tests/bench/bench_*.py`` (this directory is then
on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import zstandard

MiB = 1024 * 1024


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def least_of(times: int, measure: Callable[[], float]) -> float:
    """The least of ``times`` measurements: a part measured alone for a lower bound, which a noisy
    machine's other work can only make look larger."""
    return min(measure() for _ in range(times))


def cpu_of(work: Callable[[], object]) -> float:
    """CPU seconds this process spends on ``work()``."""
    started = time.process_time()
    work()
    return time.process_time() - started


def storing_cpu(path: Path) -> float:
    """CPU seconds this process spends on the least a repository does with ``path``'s bytes: zstd at
    the repository's level and two sha256 passes (chunk ids, the stream's digest) per 1 MiB chunk."""

    def store() -> None:
        compressor = zstandard.ZstdCompressor(level=3)
        with path.open("rb") as stream:
            while block := stream.read(MiB):
                compressor.compress(block)
                hashlib.sha256(block).digest()
                hashlib.sha256(block).digest()

    return cpu_of(store)


def compile_lifeboat() -> None:
    """Byte-compile Lifeboat's packages, as installing them does: a checkout run with
    PYTHONDONTWRITEBYTECODE would otherwise compile them again in every child."""
    root = Path(__file__).resolve().parents[2]
    packages = [str(root / name) for name in ("backup", "lifeboat", "policies", "drills")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True, stdout=subprocess.DEVNULL)
