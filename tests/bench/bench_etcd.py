"""Benchmark: the etcd source end to end against the bare tool doing the same work (the floor).

    .venv/bin/python tests/bench/bench_etcd.py [--size-mib 200] [--runs 5]

Fills a fresh etcd (own process, free loopback ports) with ~SIZE MiB: 1 MiB values (half text,
half random) and ~1 KiB Kubernetes-shaped objects. Then, medians of RUNS:

* ``lifeboat backup run`` (a CLI subprocess, local repository, fresh repository each run) vs
  ``etcdctl snapshot save`` alone; and a repeat backup into the same repository (dedup);
* the same backup vs the shell pipeline doing a verified, compressed, hashed copy by hand
  (``etcdctl snapshot save f && etcdctl snapshot status f && zstd -3 f && sha256sum f``, one ``sh``
  child of this process, like the CLI), interleaved with it round by round: wall and CPU (client
  tree + etcd server) as ratios taken within each round;
* ``lifeboat restore --to-data-dir`` vs ``etcdctl snapshot restore`` of the same snapshot file;
* peak RSS of the Lifeboat process itself (RUSAGE_SELF, reported from inside it) and of its
  process tree (wait4: includes etcdctl);
* CPU seconds of both sides (the client's process tree, the etcd server from /proc), against all the
  CPU the machine has within the target ratio (cores x floor time x 1.3); and the least a verified,
  compressed backup must add to the floor's work (zstd, sha256 of chunk ids and of the stream,
  the crc32 of the stream and of the checked file, ``snapshot status``, the census), measured alone
  on the floor's file.
* from those parts, the least wall time a first backup can take on this machine's cores (start-up,
  the save with what can overlap it, then ``snapshot status``), as a ratio to the pipeline.

Not collected by pytest (bench_*.py); prints a table and the ratios.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the policy builder


from cpu import compile_lifeboat, cpu_of, least_of, process_cpu, storing_cpu  # noqa: E402
from helpers import init_repository  # noqa: E402
from policy_builder import PolicyBuilder  # noqa: E402

from backup.servers import start_etcd  # noqa: E402
from backup.sources.etcd.bolt import read_snapshot  # noqa: E402
from backup.sources.etcd.census import KeyCensus  # noqa: E402
from backup.sources.etcd.fingerprint import ValueDigests  # noqa: E402
from backup.sources.etcd.snapshot_file import file_crc32  # noqa: E402

MiB = 1024 * 1024
SOURCE = "k8s-etcd"
SMALL_OBJECT = 1024
BACKUP_TARGET = 1.3  # issue 4: ratio to the floor
PIPELINE_TARGET = 1.1  # issue 22: ratio to the shell pipeline
PIPELINE = 'etcdctl snapshot save "$1" && etcdctl snapshot status "$1" && zstd -q -3 "$1" && sha256sum "$1"'
MEMBER = [
    "--name",
    "m1",
    "--initial-cluster",
    "m1=http://127.0.0.1:2380",
    "--initial-advertise-peer-urls",
    "http://127.0.0.1:2380",
]
# Runs the CLI in a child and writes its own peak RSS (KiB) to $BENCH_RSS_FILE at exit.
WRAPPER = (
    "import atexit, os, resource, sys\n"
    "atexit.register(lambda: open(os.environ['BENCH_RSS_FILE'], 'w').write("
    "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
    "from lifeboat.cli import main\n"
    "sys.argv[0] = 'lifeboat'\n"
    "main()\n"
)


def post(endpoint: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fill(endpoint: str, size_mib: int) -> int:
    """~size_mib MiB: 3/4 in 1 MiB values, 1/4 in 1 KiB objects across namespaces; returns the key count."""
    rng = random.Random(7)
    text = b"".join(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-%d}\n" % i for i in range(20000))
    big = size_mib * 3 // 4
    small = (size_mib - big) * MiB // SMALL_OBJECT

    def put_big(number: int) -> None:
        value = text[: MiB // 2] + rng.randbytes(MiB // 2)
        post(endpoint, "/v3/kv/put", {"key": b64(b"/registry/configmaps/big/cm-%04d" % number), "value": b64(value)})

    def put_batch(start: int) -> None:
        puts = [
            {
                "request_put": {
                    "key": b64(b"/registry/pods/ns-%02d/pod-%07d" % (number % 40, number)),
                    "value": b64(text[(number * 37) % 100000 :][:SMALL_OBJECT]),
                }
            }
            for number in range(start, min(start + 100, small))
        ]
        post(endpoint, "/v3/kv/txn", {"success": puts})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put_big, range(big)))
        list(pool.map(put_batch, range(0, small, 100)))
    return big + small


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def etcdctl(*args: str, endpoint: str = "") -> None:
    env = {**os.environ, "ETCDCTL_API": "3"} | ({"ETCDCTL_ENDPOINTS": endpoint} if endpoint else {})
    subprocess.run(["etcdctl", *args], env=env, check=True, capture_output=True)


class Lifeboat:
    """The CLI in a child process; remembers the peak RSS of the last run (own, and with children)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.rss_self_kib = 0
        self.rss_tree_kib = 0
        self.phases: list[dict[str, float]] = []  # per backup run: where the time went, from its log events
        self.first_backups = 0  # how many of them went into an empty repository
        self.cpu: list[float] = []  # CPU seconds of each run's process tree
        # per first backup: (lifeboat wall, pipeline wall, lifeboat CPU, pipeline CPU), CPU with the server's
        self.pipeline_rounds: list[tuple[float, float, float, float]] = []
        self.least: LeastWork | None = None  # the work a verified backup adds, measured alone
        self.floor_save = (0.0, 0.0)  # etcdctl snapshot save alone: wall, CPU (client + server)

    def __call__(self, config: Path, *args: str) -> str:
        rss_file = self.workdir / "rss"
        started = time.time()
        child = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, "--config", str(config), *args],
            env={**os.environ, "BENCH_RSS_FILE": str(rss_file)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
        # wait4, not wait(): its rusage is this child's process tree (lifeboat and the etcdctl it ran).
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise SystemExit(f"lifeboat {' '.join(args)} failed ({child.returncode}):\n{stderr.decode()[-3000:]}")
        self.rss_self_kib = max(self.rss_self_kib, int(rss_file.read_text()))
        self.rss_tree_kib = max(self.rss_tree_kib, usage.ru_maxrss)
        self.cpu.append(usage.ru_utime + usage.ru_stime)
        if args[:2] == ("backup", "run"):
            self.phases.append(backup_phases(stderr.decode(), started, time.time()))
        return stdout.decode()


def backup_phases(log: str, started: float, finished: float) -> dict[str, float]:
    """Seconds spent starting up, saving, verifying + counting + uploading, committing and exiting,
    from the JSON log events of one ``backup run``."""
    events = {}
    for line in log.splitlines():
        with contextlib.suppress(ValueError, KeyError):
            doc = json.loads(line)
            events[doc["event"]] = (datetime.fromisoformat(doc["timestamp"]).timestamp(), doc)
    saved_at, saved = events["etcd.snapshot.saved"]
    stored_at, _ = events["etcd.snapshot.stored"]
    return {
        "startup": saved_at - saved["seconds"] - started,
        "save": saved["seconds"],
        "verify + census + upload": stored_at - saved_at,
        "commit + exit": finished - stored_at,
    }


def policy(directory: Path, endpoint: str) -> Path:
    policy = PolicyBuilder(directory / "repo", state=directory / "state.db")
    return policy.source(SOURCE, "etcd", endpoints=[endpoint]).write(directory / "lifeboat.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    compile_lifeboat()
    with tempfile.TemporaryDirectory(prefix="lifeboat-bench-etcd-") as temp:
        work = Path(temp)
        with start_etcd(work / "etcd" / "data") as etcd:
            started = time.perf_counter()
            keys = fill(etcd.endpoint, args.size_mib)
            print(f"filled etcd with {keys} keys in {time.perf_counter() - started:.1f}s", flush=True)
            rows, lifeboat = measure(work, etcd.endpoint, args.runs, etcd.process.pid)
        report(rows, lifeboat)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pipeline(snapshot: Path, endpoint: str) -> None:
    """The shell pipeline a careful operator would run for a verified, compressed, hashed copy."""
    env = {**os.environ, "ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": endpoint}
    subprocess.run(["sh", "-c", PIPELINE, "sh", str(snapshot)], env=env, check=True, capture_output=True)


@dataclass(frozen=True)
class LeastWork:
    """What a verified, compressed backup must add to the floor's ``snapshot save``, each part
    measured alone on its file (CPU seconds; ``status_wall`` in seconds)."""

    storing: float  # zstd at the repository's level and two sha256 passes per 1 MiB chunk
    census: float  # the key census with every live value's digest
    crc32: float  # one crc32 pass: of the stream as it is stored, and of the checked file
    status_cpu: float  # ``etcdctl snapshot status``
    status_wall: float

    @property
    def cpu(self) -> float:
        return self.storing + self.census + 2 * self.crc32 + self.status_cpu


def least_work(snapshot: Path) -> LeastWork:
    """Each part the least of three tries: a bound, which the machine's other work only inflates."""

    def census() -> None:
        census, values = KeyCensus(), ValueDigests()
        with snapshot.open("rb") as handle:
            for key, digest in read_snapshot(handle, snapshot).keys.items():
                census.add(key)
                values.add(key, digest)

    def status() -> tuple[float, float]:
        started_wall, children = time.perf_counter(), children_cpu()
        etcdctl("snapshot", "status", str(snapshot))
        return children_cpu() - children, time.perf_counter() - started_wall

    status_cpu, status_wall = min(status() for _ in range(3))
    return LeastWork(
        least_of(3, lambda: storing_cpu(snapshot)),
        least_of(3, lambda: cpu_of(census)),
        least_of(3, lambda: cpu_of(lambda: file_crc32(snapshot))),
        status_cpu,
        status_wall,
    )


def measure(work: Path, endpoint: str, runs: int, server_pid: int) -> tuple[list[tuple[str, float, float]], Lifeboat]:
    lifeboat = Lifeboat(work)
    saves = []
    for n in range(runs):
        server, client = process_cpu(server_pid), children_cpu()
        seconds = timed(lambda n=n: etcdctl("snapshot", "save", str(work / f"floor-{n}.db"), endpoint=endpoint))
        saves.append((seconds, children_cpu() - client, process_cpu(server_pid) - server))
    floor_save = statistics.median(seconds for seconds, _, _ in saves)
    db_size = (work / "floor-0.db").stat().st_size
    print(f"snapshot file: {db_size / MiB:.0f} MiB", flush=True)
    configs = [init_repository(policy(work / f"lifeboat-{n}", endpoint)) for n in range(runs)]
    backups, server_cpu, rounds = [], [], []
    for n, config in enumerate(configs):  # the pipeline and lifeboat in turn: each ratio within its round
        server, client = process_cpu(server_pid), children_cpu()
        piped = timed(lambda n=n: pipeline(work / f"pipeline-{n}.db", endpoint))
        piped_cpu = children_cpu() - client + process_cpu(server_pid) - server
        before = process_cpu(server_pid)
        backups.append(timed(lambda c=config: lifeboat(c, "backup", "run", "--source", SOURCE, "--json")))
        server_cpu.append(process_cpu(server_pid) - before)
        rounds.append((backups[-1], piped, lifeboat.cpu[-1] + server_cpu[-1], piped_cpu))
    lifeboat.first_backups = len(backups)
    lifeboat.pipeline_rounds = rounds
    lifeboat.least = least_work(work / "floor-0.db")
    lifeboat.floor_save = (floor_save, statistics.median(client + server for _, client, server in saves))
    cpu_report(
        floor_save,
        statistics.median(client for _, client, _ in saves),
        statistics.median(server for _, _, server in saves),
        statistics.median(lifeboat.cpu),
        statistics.median(server_cpu),
        lifeboat.least.cpu,
    )
    repeat = statistics.median(
        timed(lambda: lifeboat(configs[0], "backup", "run", "--source", SOURCE, "--json")) for _ in range(runs)
    )
    last = json.loads(lifeboat(configs[0], "backup", "run", "--source", SOURCE, "--json"))["snapshots"][0]
    print(f"repeat backup, nothing changed: read {last['bytes_read']} bytes, stored {last['bytes_stored']} new", flush=True)
    changed = [
        {"request_put": {"key": b64(b"/registry/pods/ns-%02d/pod-%07d" % (n % 40, n)), "value": b64(b"v2" * 200)}}
        for n in range(0, 50_000, 50)
    ]
    for first in range(0, len(changed), 100):
        post(endpoint, "/v3/kv/txn", {"success": changed[first : first + 100]})
    after = json.loads(lifeboat(configs[0], "backup", "run", "--source", SOURCE, "--json"))["snapshots"][0]
    print(
        f"backup after {len(changed)} keys were overwritten: stored {after['bytes_stored'] / MiB:.1f} MiB new "
        f"({after['chunks_new']} new chunks, {after['chunks_reused']} reused)",
        flush=True,
    )

    snapshot_file = work / "restored.db"
    lifeboat(configs[0], "restore", SOURCE, "--to-file", str(snapshot_file))
    floor_restore = statistics.median(
        timed(
            lambda n=n: etcdctl(
                "snapshot", "restore", str(snapshot_file), "--data-dir", str(work / f"floor-dd-{n}"), *MEMBER
            )
        )
        for n in range(runs)
    )
    restores = [
        timed(lambda n=n: lifeboat(configs[0], "restore", SOURCE, "--to-data-dir", str(work / f"lb-dd-{n}"), *MEMBER))
        for n in range(runs)
    ]
    help_time = statistics.median(timed(lambda: lifeboat(configs[0], "--help")) for _ in range(runs))
    for path in work.glob("*-dd-*"):
        shutil.rmtree(path)
    piped = statistics.median(wall for _, wall, _, _ in lifeboat.pipeline_rounds)
    rows = [
        ("backup: lifeboat backup run vs etcdctl snapshot save", statistics.median(backups), floor_save),
        ("backup vs save && status && zstd -3 && sha256sum", statistics.median(backups), piped),
        ("repeat backup (dedup) vs etcdctl snapshot save", repeat, floor_save),
        ("restore --to-data-dir vs etcdctl snapshot restore", statistics.median(restores), floor_restore),
        ("(lifeboat --help: interpreter + imports)", help_time, 0.0),
    ]
    return rows, lifeboat


def cpu_report(floor: float, floor_client: float, floor_server: float, client: float, server: float, extra: float) -> None:
    cores = os.cpu_count() or 1
    budget = cores * floor * BACKUP_TARGET
    least = floor_client + floor_server + extra
    print(f"CPU seconds, client + server ({cores} cores), first backup:", flush=True)
    print(f"  floor {floor_client:.2f} + {floor_server:.2f}   lifeboat {client:.2f} + {server:.2f} = {client + server:.2f}")
    print(
        f"  the least a verified, compressed backup costs: floor {floor_client + floor_server:.2f} + checks, census, "
        f"zstd and sha256 {extra:.2f} = {least:.2f}, {'more than' if least > budget else 'within'} the {budget:.2f} this "
        f"machine has in {BACKUP_TARGET}x the floor (before any start-up or I/O)",
        flush=True,
    )


def report(rows: list[tuple[str, float, float]], lifeboat: Lifeboat) -> None:
    print()
    print(f"{'work':<56} {'lifeboat':>9} {'floor':>8} {'ratio':>6}")
    for what, ours, floor in rows:
        ratio = f"{ours / floor:5.2f}x" if floor else "     -"
        print(f"{what:<56} {ours:8.2f}s {floor:7.2f}s {ratio:>6}")
    rounds = lifeboat.pipeline_rounds
    wall = [ours / piped for ours, piped, _, _ in rounds]
    cpu = [ours / piped for _, _, ours, piped in rounds]
    print()
    print(f"backup vs the shell pipeline `{PIPELINE}` (target <= {PIPELINE_TARGET}x), ratios within each round:")
    print(f"  wall {statistics.median(wall):.2f}x ({', '.join(f'{ratio:.2f}' for ratio in wall)})")
    print(f"  CPU  {statistics.median(cpu):.2f}x ({', '.join(f'{ratio:.2f}' for ratio in cpu)})")
    print(
        "  CPU seconds (client tree + etcd server), median: lifeboat "
        f"{statistics.median(ours for _, _, ours, _ in rounds):.2f}, pipeline "
        f"{statistics.median(piped for _, _, _, piped in rounds):.2f}",
        flush=True,
    )
    first_backups = lifeboat.phases[: lifeboat.first_backups]
    print()
    print(
        "where a first backup's time goes (median): "
        + ", ".join(f"{name} {statistics.median(run[name] for run in first_backups):.2f}s" for name in first_backups[0])
    )
    least_wall(lifeboat, statistics.median(piped for _, piped, _, _ in rounds))
    print(f"peak RSS, the lifeboat process itself:             {lifeboat.rss_self_kib / 1024:6.0f} MiB")
    print(f"peak RSS, largest process of its tree (etcdctl...): {lifeboat.rss_tree_kib / 1024:6.0f} MiB")


def least_wall(lifeboat: Lifeboat, pipeline: float) -> None:
    """The least wall time a first backup can take on this machine's cores, from the work measured
    alone: its start-up, then the save with what can overlap it (storing and the census: the cores
    are shared with etcd and etcdctl), then what needs the whole file (``snapshot status``, the
    file's crc32 pass beside it)."""
    assert lifeboat.least is not None
    least, cores = lifeboat.least, os.cpu_count() or 1
    save_wall, save_cpu = lifeboat.floor_save
    startup = statistics.median(run["startup"] for run in lifeboat.phases[: lifeboat.first_backups])
    during = max(save_wall, (save_cpu + least.storing + least.census) / cores)
    after = max(least.status_wall, least.crc32)
    bound = startup + during + after
    print()
    print(
        f"the least a first backup can take here: start-up {startup:.2f}s + the save with storing and the census "
        f"beside it, max({save_wall:.2f}s alone, ({save_cpu:.2f} + {least.storing:.2f} + {least.census:.2f}) CPU s / "
        f"{cores} cores) = {during:.2f}s + snapshot status {after:.2f}s = {bound:.2f}s: {bound / pipeline:.2f}x the "
        f"pipeline's {pipeline:.2f}s (target {PIPELINE_TARGET}x)",
        flush=True,
    )


if __name__ == "__main__":
    main()
