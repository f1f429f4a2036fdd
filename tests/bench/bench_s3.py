"""Benchmark of the S3 source against the floor of plain boto3 on the same moto server.

    .venv/bin/python tests/bench/bench_s3.py [--scale 0.2] [--workers 8] [--scenario small]

Starts moto's S3 server in this process (ThreadedMotoServer, a free port), fills a bucket with
5,000 x 100 KiB + 20 x 20 MiB objects (times --scale), then measures, each in a child process so
that moto keeps this process's core and each child's peak RSS is its own (os.wait4):

* full snapshot (`lifeboat backup run`, file:// repository) vs the floor: a plain parallel boto3
  copy (get + put) of the same objects into another bucket with the same worker count;
* incremental snapshot with nothing changed vs the floor making the same requests: a full listing
  of the bucket and every object's tags (the GetObjectTagging an incremental makes by default: a
  tag changes neither ETag nor time); and with ``tags: false``, vs a bare full listing;
* restore (`lifeboat restore --to-bucket`) vs the same copy floor.

Targets: snapshot >= 0.7x the copy's throughput, incremental <= 2x the listing's time. Times are
the children's own measurements (Lifeboat's reported seconds; the floors time their work), so
interpreter start-up is left out of both sides; wall times including start-up are shown too.

``--scenario small`` (issue 22) fills the bucket with 10,000 objects of 1-10 KiB instead (times
--scale) and measures a first snapshot against a plain parallel boto3 download of every object
(list, then get + read the body, same worker count): wall and CPU (user + system of the child,
start-up included) and CPU per object, each side and as ratios. Targets: <= 1.1x the download's wall
time, <= 1 ms of CPU per object.
moto serves every request on one core and its memory grows with every object it holds: it is the
bottleneck of every figure here, for Lifeboat and the floor alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpu import compile_lifeboat

KIB = 1024
MIB = 1024 * KIB
SOURCE = "bench-source"
SMALL_SIZE = 100 * KIB
LARGE_SIZE = 20 * MIB


def _client(endpoint: str, workers: int = 10) -> Any:
    import boto3  # here, not at the top: the --measure runner must stay small (see run_child)
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(max_pool_connections=workers + 4, retries={"total_max_attempts": 1}),
    )


def _keys(client: Any, bucket: str) -> list[str]:
    return [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", [])
    ]


# ---- the floors, run as children of this script ---------------------------------------------------


def floor_copy(endpoint: str, source: str, target: str, workers: int) -> dict[str, Any]:
    """Plain boto3: list, then get + put every object into ``target`` with ``workers`` threads."""
    client = _client(endpoint, workers)
    started = time.monotonic()
    client.create_bucket(Bucket=target)
    keys = _keys(client, source)

    def copy(key: str) -> int:
        body = client.get_object(Bucket=source, Key=key)["Body"].read()
        client.put_object(Bucket=target, Key=key, Body=body)
        return len(body)

    with ThreadPoolExecutor(workers) as pool:
        moved = sum(pool.map(copy, keys))
    return {"seconds": time.monotonic() - started, "objects": len(keys), "bytes": moved}


def floor_download(endpoint: str, source: str, workers: int, *, tags: bool = False) -> dict[str, Any]:
    """Plain boto3: list, then get every object and read its body with ``workers`` threads; with
    ``tags``, get each object's tags too (the GetObjectTagging a snapshot makes by default)."""
    client = _client(endpoint, workers)
    started = time.monotonic()
    keys = _keys(client, source)

    def download(key: str) -> int:
        if tags:
            client.get_object_tagging(Bucket=source, Key=key)
        return len(client.get_object(Bucket=source, Key=key)["Body"].read())

    with ThreadPoolExecutor(workers) as pool:
        moved = sum(pool.map(download, keys))
    return {"seconds": time.monotonic() - started, "objects": len(keys), "bytes": moved}


def floor_list(endpoint: str, source: str, workers: int, *, tags: bool = False) -> dict[str, Any]:
    """Plain boto3: list every key of the bucket; with ``tags``, get each object's tags too, with
    ``workers`` threads (the GetObjectTagging an incremental snapshot makes by default)."""
    client = _client(endpoint, workers)
    started = time.monotonic()
    keys = _keys(client, source)
    if tags:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda key: client.get_object_tagging(Bucket=source, Key=key), keys))
    return {"seconds": time.monotonic() - started, "objects": len(keys)}


# ---- the parent ----------------------------------------------------------------------------------


@dataclass
class Measured:
    seconds: float  # as the child measured its own work
    wall: float  # including interpreter start-up
    peak_rss: int  # bytes
    document: dict[str, Any]
    cpu: float = 0.0  # user + system seconds of the child and its children, start-up included


def run_child(argv: list[str], workdir: Path) -> Measured:
    """Run ``argv`` through a small runner (``--measure``) and parse its JSON stdout.

    A child's ru_maxrss counts the memory of the process it was forked from, and this one holds
    moto and every object in it; forked from a fresh, small runner, the child's peak is its own."""
    out_path, err_path, usage_path = workdir / "child.out", workdir / "child.err", workdir / "child.usage"
    runner = [sys.executable, str(Path(__file__).resolve()), "--measure", str(usage_path), "--", *argv]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        code = subprocess.run(runner, stdout=out, stderr=err, stdin=subprocess.DEVNULL, check=False).returncode
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:6])}... exited {code}:\n{err_path.read_text()[-3000:]}")
    usage = json.loads(usage_path.read_text())
    document = json.loads(out_path.read_text())
    seconds = document.get("seconds", usage["wall"])
    if "snapshots" in document:
        document = document["snapshots"][0]
        seconds = document["seconds"]
    return Measured(float(seconds), usage["wall"], usage["peak_rss"], document, usage["cpu"])


def measure_child(usage_path: str, argv: list[str]) -> int:
    """The runner: start ``argv`` (inheriting stdout/stderr), wait4 for it, write its wall time and peak RSS."""
    started = time.monotonic()
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = code = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    measured = {"wall": time.monotonic() - started, "peak_rss": usage.ru_maxrss * 1024, "cpu": cpu}
    Path(usage_path).write_text(json.dumps(measured))
    return code


def populate(endpoint: str, scale: float, workers: int) -> tuple[int, int]:
    client = _client(endpoint, workers)
    client.create_bucket(Bucket=SOURCE)
    small, large = max(1, round(5_000 * scale)), max(1, round(20 * scale))
    blob = os.urandom(LARGE_SIZE + SMALL_SIZE * 64)

    def put(index: int) -> int:
        size = LARGE_SIZE if index < large else SMALL_SIZE
        offset = (index * 7919) % (len(blob) - size)  # distinct bytes per object, so nothing dedups
        key = f"large/{index:03d}.bin" if index < large else f"small/{index % 50:02d}/{index:05d}.bin"
        body = index.to_bytes(8, "big") + blob[offset : offset + size - 8]
        client.put_object(Bucket=SOURCE, Key=key, Body=body, ContentType="application/octet-stream")
        return size

    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(put, range(small + large)))
    return small + large, total


SMALL_OBJECTS = 10_000
SMALL_MIN, SMALL_MAX = 1 * KIB, 10 * KIB


def populate_small(endpoint: str, scale: float, workers: int) -> tuple[int, int]:
    """``SMALL_OBJECTS`` x --scale objects of 1-10 KiB, distinct bytes each (nothing dedups)."""
    client = _client(endpoint, workers)
    client.create_bucket(Bucket=SOURCE)
    count = max(1, round(SMALL_OBJECTS * scale))
    blob = os.urandom(SMALL_MAX * 64)

    def put(index: int) -> int:
        size = SMALL_MIN + (index * 7919) % (SMALL_MAX - SMALL_MIN + 1)
        offset = (index * 104729) % (len(blob) - size)
        body = index.to_bytes(8, "big") + blob[offset : offset + size - 8]
        key = f"small/{index % 100:02d}/{index:05d}.bin"
        client.put_object(Bucket=SOURCE, Key=key, Body=body, ContentType="application/octet-stream")
        return size

    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(put, range(count)))
    return count, total


def write_policy(workdir: Path, endpoint: str, workers: int, *, name: str = "lifeboat.yaml", **options: Any) -> Path:
    """A policy for the bench bucket and a repository in ``workdir``, created unless the policy
    ``name`` is a second one for the same repository."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the policy builder
    from helpers import init_repository
    from policy_builder import PolicyBuilder  # here, not at the top: the --measure runner stays small

    keys = {"access_key_id": "testing", "secret_access_key": "testing"}
    policy = PolicyBuilder(workdir / "repo")
    policy.source("bench", "s3", endpoint_url=endpoint, **keys, buckets=[SOURCE], parallel=workers, **options)
    written = policy.write(workdir / name)
    return init_repository(written) if not (workdir / "repo").exists() else written  # only `repo init` creates one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="share of the 5,000 + 20 objects (default 1)")
    parser.add_argument("--workers", type=int, default=8, help="parallel transfers, Lifeboat and floor alike")
    parser.add_argument("--scenario", choices=["large", "small"], default="large", help="small: 10,000 x 1-10 KiB")
    floors = ["copy", "list", "list-tags", "download", "download-tags"]
    parser.add_argument("--floor", choices=floors, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--measure", metavar="USAGE_FILE", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    compile_lifeboat()
    if args.measure:
        raise SystemExit(measure_child(args.measure, args.command))
    if args.floor == "copy":
        print(json.dumps(floor_copy(args.endpoint, SOURCE, args.target, args.workers)))
        return
    if args.floor in ("list", "list-tags"):
        print(json.dumps(floor_list(args.endpoint, SOURCE, args.workers, tags=args.floor == "list-tags")))
        return
    if args.floor in ("download", "download-tags"):
        print(json.dumps(floor_download(args.endpoint, SOURCE, args.workers, tags=args.floor == "download-tags")))
        return
    bench(args.scale, args.workers, small=args.scenario == "small")


def bench(scale: float, workers: int, *, small: bool = False) -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request costs moto's core, both sides alike
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        started = time.monotonic()
        count, size = (populate_small if small else populate)(endpoint, scale, workers)
        print(
            f"bucket: {count} objects, {size / MIB:.1f} MiB (filled in {time.monotonic() - started:.0f}s); workers {workers}"
        )
        if small:
            report_small(measure_small(endpoint, workdir, workers), count)
        else:
            report(measure(endpoint, workdir, workers), count, size)
        print(f"moto (this process) peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def measure(endpoint: str, workdir: Path, workers: int) -> dict[str, Measured]:
    me = [sys.executable, str(Path(__file__).resolve()), "--endpoint", endpoint, "--workers", str(workers)]
    lifeboat = [
        sys.executable,
        "-m",
        "lifeboat",
        "--log-format",
        "json",
        "--config",
        str(write_policy(workdir, endpoint, workers)),
    ]
    results = {"copy": run_child([*me, "--floor", "copy", "--target", "bench-floor-copy"], workdir)}
    _drop(endpoint, "bench-floor-copy")  # moto keeps every byte in memory
    results["snapshot"] = run_child([*lifeboat, "backup", "run", "--source", "bench", "--json"], workdir)
    results["list"] = run_child([*me, "--floor", "list"], workdir)
    results["list with tags"] = run_child([*me, "--floor", "list-tags"], workdir)
    results["incremental"] = run_child([*lifeboat, "backup", "run", "--source", "bench", "--json"], workdir)
    untagged = write_policy(workdir, endpoint, workers, name="untagged.yaml", tags=False)  # the same repository
    results["incremental, tags: false"] = run_child(
        [*lifeboat[:-1], str(untagged), "backup", "run", "--source", "bench", "--json"], workdir
    )
    results["restore"] = run_child([*lifeboat, "restore", "bench", "--to-bucket", "bench-restored", "--json"], workdir)
    return results


def measure_small(endpoint: str, workdir: Path, workers: int) -> dict[str, Measured]:
    """The download floors, then Lifeboat's first snapshot of the same bucket, each in a child: with
    the objects' tags (a GetObjectTagging per object, the default; its floor gets the tags too) and
    with ``tags: false`` (the same requests as the plain download)."""
    me = [sys.executable, str(Path(__file__).resolve()), "--endpoint", endpoint, "--workers", str(workers)]
    results = {
        "download": run_child([*me, "--floor", "download"], workdir),
        "download with tags": run_child([*me, "--floor", "download-tags"], workdir),
    }
    for name, options in (("snapshot", {}), ("snapshot, tags: false", {"tags": False})):
        where = workdir / ("tags" if options else "default")
        where.mkdir()
        config = str(write_policy(where, endpoint, workers, **options))
        lifeboat = [sys.executable, "-m", "lifeboat", "--log-format", "json", "--config", config]
        results[name] = run_child([*lifeboat, "backup", "run", "--source", "bench", "--json"], workdir)
    return results


def report_small(results: dict[str, Measured], count: int) -> None:
    """Wall and CPU of the first snapshots and of the download floors, per object, and their ratios
    (a snapshot with tags against the download that gets them too, one without against the plain one)."""
    print(f"\n{'small objects':32} {'work':>9} {'wall':>8} {'CPU':>8} {'CPU/object':>11} {'peak RSS':>9}")
    for name, measured in results.items():
        label = f"boto3 {name} (floor)" if name.startswith("download") else f"lifeboat {name}"
        print(
            f"{label:32} {measured.seconds:8.2f}s {measured.wall:7.2f}s {measured.cpu:7.2f}s "
            f"{measured.cpu / count * 1000:8.3f} ms {measured.peak_rss / MIB:5.0f} MiB"
        )
    for name, ours in results.items():
        if name.startswith("download"):
            continue
        floor_name = "download" if "tags: false" in name else "download with tags"
        floor = results[floor_name]
        print(
            f"{name}: work {ours.seconds / floor.seconds:.2f}x the {floor_name}, wall {ours.wall / floor.wall:.2f}x "
            f"(target <= 1.10x), CPU {ours.cpu / floor.cpu:.2f}x; CPU per object {ours.cpu / count * 1000:.3f} ms "
            f"(target <= 1 ms), {(ours.cpu - floor.cpu) / count * 1000:.3f} ms above the floor's; downloaded "
            f"{ours.document['objects_downloaded']}, stored {ours.document['bytes_stored'] / MIB:.1f} MiB"
        )


def _drop(endpoint: str, bucket: str) -> None:
    client = _client(endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


def report(results: dict[str, Measured], count: int, size: int) -> None:
    copy = results["copy"]
    rows = [
        ("full snapshot", results["snapshot"], copy, "throughput", ">= 0.70x"),
        ("incremental, nothing changed", results["incremental"], results["list with tags"], "time", "<= 2.00x"),
        ("same, tags: false", results["incremental, tags: false"], results["list"], "time", "<= 2.00x"),
        ("restore to a bucket", results["restore"], copy, "throughput", ">= 0.70x"),
    ]
    print(
        f"\n{'work':30} {'lifeboat':>10} {'floor':>10} {'ratio':>8} {'target':>9} {'wall lb/floor':>15} {'lifeboat RSS':>13}"
    )
    for name, ours, floor, kind, target in rows:
        ratio = floor.seconds / ours.seconds if kind == "throughput" else ours.seconds / floor.seconds
        print(
            f"{name:30} {ours.seconds:9.2f}s {floor.seconds:9.2f}s {ratio:7.2f}x {target:>9} "
            f"{ours.wall:6.1f}s/{floor.wall:5.1f}s {ours.peak_rss / MIB:10.0f} MiB"
        )
    snapshot, snap = results["snapshot"], results["snapshot"].document
    print(
        f"\nfull snapshot: {count / snapshot.seconds:.0f} objects/s, {size / MIB / snapshot.seconds:.1f} MiB/s "
        f"(copy floor: {count / copy.seconds:.0f} objects/s, {size / MIB / copy.seconds:.1f} MiB/s, "
        f"peak RSS {copy.peak_rss / MIB:.0f} MiB); downloaded {snap['objects_downloaded']}, "
        f"stored {snap['bytes_stored'] / MIB:.0f} MiB"
    )
    inc = results["incremental"].document
    print(
        f"incremental: reused {inc['objects_reused']}, downloaded {inc['objects_downloaded']}; its floor lists the "
        f"bucket and gets every object's tags ({results['list with tags'].seconds:.2f}s; the listing alone "
        f"{results['list'].seconds:.2f}s), as the incremental does by default"
    )


if __name__ == "__main__":
    main()
