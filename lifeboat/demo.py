"""``lifeboat demo``: the whole story on this machine, on real servers, in a few minutes.

It starts etcd, ClickHouse, an S3 server (moto, standing in for MinIO) and an SMTP sink on free
loopback ports, seeds them with an ML platform's data, writes a policy file, and then runs the
very CLI commands an operator would: two backups of every source (the second one incremental),
and a drill with every fault scenario and the team's own checks (README "Drill checks"), whose
report is mailed to the sink. Then a restore point of all three sources, and a drill of it whose
cross-source checks prove the pieces fit: every model URI in the feature store is an object in the
bucket copy, and the bucket a ConfigMap names is in the S3 member. With ``--broken``, a broken ETL
empties a feature table before the second backup (the restore is faithful and verifies, and a check
catches the empty table), and a cleanup job deletes a model file the feature store still names
before the restore point (the references check names the dangling URI). Everything it started is
stopped at the end, whatever happens.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import click

from backup.execute import free_port
from backup.servers import ClickHouseProcess, EtcdProcess, start_clickhouse, start_etcd
from drills.model import Status
from policies.durations import human_duration
from policies.errors import LifeboatError
from policies.sizes import human_bytes

RESOURCES = ("pods", "deployments", "services", "configmaps", "secrets", "serviceaccounts")
NAMESPACES = ("ml-training", "ml-serving", "feature-store", "monitoring", "kube-system")


class DemoError(LifeboatError):
    """A demo step failed; the message says which and why."""


@dataclass
class Servers:
    etcd: EtcdProcess
    clickhouse: ClickHouseProcess
    s3_endpoint: str
    smtp_port: int
    mail: list[EmailMessage] = field(default_factory=list)


@contextlib.contextmanager
def local_servers(workdir: Path, say: Callable[[str], None]) -> Iterator[Servers]:
    """etcd, ClickHouse, moto's S3 server and an SMTP sink, stopped on the way out."""
    from aiosmtpd.controller import Controller  # demo-only dependencies: the `test` extra
    from moto.server import ThreadedMotoServer

    mail: list[EmailMessage] = []
    for chatty in ("werkzeug", "mail.log"):  # a line per request from the in-process S3 and SMTP servers
        logging.getLogger(chatty).setLevel(logging.WARNING)

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mail.append(BytesParser(policy=default_policy).parsebytes(envelope.original_content))
            return "250 OK"

    with contextlib.ExitStack() as stack:
        etcd = stack.enter_context(start_etcd(workdir / "servers" / "etcd", name="ml-cluster"))
        say(f"  etcd        {etcd.endpoint}")
        clickhouse = stack.enter_context(start_clickhouse(workdir / "servers" / "clickhouse"))
        say(f"  ClickHouse  {clickhouse.host}:{clickhouse.tcp_port} (http {clickhouse.http_port})")
        s3_port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
        moto.start()
        stack.callback(moto.stop)
        say(f"  S3 (moto)   http://127.0.0.1:{s3_port}")
        smtp_port = free_port()
        controller = Controller(Sink(), hostname="127.0.0.1", port=smtp_port)
        controller.start()
        stack.callback(controller.stop)
        say(f"  SMTP sink   127.0.0.1:{smtp_port}")
        yield Servers(etcd, clickhouse, f"http://127.0.0.1:{s3_port}", smtp_port, mail)


def seed(servers: Servers, *, rows: int, objects: int) -> dict[str, str]:
    """An ML platform's data: Kubernetes objects in etcd, a feature store, a models bucket."""
    rng = random.Random(2026)
    keys = [f"/registry/{r}/{ns}/{r[:-1]}-{i}" for r in RESOURCES for ns in NAMESPACES for i in range(rng.randrange(20, 80))]
    keys += [f"/registry/namespaces/{ns}" for ns in NAMESPACES]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: _etcd_put(servers.etcd.endpoint, key, rng.randbytes(200)), keys))
    _clickhouse(servers, "CREATE DATABASE IF NOT EXISTS features")
    _clickhouse(
        servers,
        "CREATE TABLE features.user_features (day Date, user_id UInt64, clicks UInt32, ctr Float64, segment String, "
        "embedding Array(Float32)) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (user_id, day)",
    )
    _clickhouse(
        servers,
        "INSERT INTO features.user_features SELECT toDate('2026-07-01') + number % 150, number % 50000, number % 97, "
        f"(number % 1000) / 1000, concat('seg-', toString(number % 11)), [toFloat32(number % 7), 0.5] "
        f"FROM system.numbers LIMIT {rows}",
    )
    _clickhouse(
        servers,
        "CREATE TABLE features.model_scores (model String, version UInt32, auc Float64, updated DateTime) "
        "ENGINE = ReplacingMergeTree(updated) ORDER BY (model, version)",
    )
    _clickhouse(servers, "INSERT INTO features.model_scores VALUES ('ranker', 1, 0.81, now()), ('ranker', 2, 0.84, now())")
    s3 = _s3(servers)
    for bucket in ("models", "datasets"):
        s3.create_bucket(Bucket=bucket)
    for i in range(objects):
        size = rng.choice((2_000, 40_000, 300_000)) if i % 50 else 3 * 1024 * 1024
        bucket, prefix = ("models", "ranker/v2/") if i % 3 else ("datasets", "clicks/2026-11/")
        s3.put_object(
            Bucket=bucket, Key=f"{prefix}part-{i:05d}.bin", Body=rng.randbytes(size), ContentType="application/octet-stream"
        )
    # References across the sources: the feature store names model files, a ConfigMap names the bucket.
    uris = ", ".join(f"('ranker', 's3://models/{key}')" for key in REGISTERED_MODELS)
    _clickhouse(servers, "CREATE TABLE features.model_registry (model String, uri String) ENGINE = MergeTree ORDER BY uri")
    _clickhouse(servers, f"INSERT INTO features.model_registry VALUES {uris}")
    _etcd_put(servers.etcd.endpoint, MODEL_STORE_CONFIGMAP, json.dumps({"data": {"bucket": "models"}}).encode())
    return {"etcd keys": str(len(keys) + 1), "feature rows": f"{rows + 2:,}", "objects": str(objects)}


# Model files the feature store's registry names (objects the seed writes to the models bucket).
REGISTERED_MODELS = tuple(f"ranker/v2/part-{i:05d}.bin" for i in (1, 2, 4, 5))
MODEL_STORE_CONFIGMAP = "/registry/configmaps/ml-serving/model-store"


def delete_a_model_file(servers: Servers) -> str:
    """``--broken``: a cleanup job deletes a model file the feature store still names; returns its URI."""
    key = REGISTERED_MODELS[2]
    _s3(servers).delete_object(Bucket="models", Key=key)
    return f"s3://models/{key}"


def change_some_data(servers: Servers) -> None:
    """What happens between two backups: a day of features, a new model, a few new pods."""
    _clickhouse(
        servers,
        "INSERT INTO features.user_features SELECT toDate('2026-11-28'), number, 1, 0.1, 'seg-new', [1.0] "
        "FROM system.numbers LIMIT 5000",
    )
    _s3(servers).put_object(Bucket="models", Key="ranker/v3/model.bin", Body=os.urandom(500_000))
    for i in range(10):
        _etcd_put(servers.etcd.endpoint, f"/registry/pods/ml-training/train-job-{i}", os.urandom(100))


def break_the_etl(servers: Servers) -> None:
    """``--broken``: yesterday's ETL emptied the model scores; a faithful backup keeps them empty."""
    _clickhouse(servers, "DROP TABLE features.model_scores")
    _clickhouse(
        servers,
        "CREATE TABLE features.model_scores (model String, version UInt32, auc Float64, updated DateTime) "
        "ENGINE = ReplacingMergeTree(updated) ORDER BY (model, version)",
    )


SMOKE_TEST = """\
# The team's smoke test, run by the drill against the restored copies (README "Drill checks").
import os, sys, urllib.request

port, database = os.environ["LIFEBOAT_FEATURES_CLICKHOUSE_HTTP_PORT"], os.environ["LIFEBOAT_FEATURES_CLICKHOUSE_DATABASE"]
query = f"SELECT count() FROM {database}.user_features".encode()
with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", data=query), timeout=60) as answer:
    rows = int(answer.read())
print(f"the restored feature store serves {rows} feature rows")
sys.exit(0 if rows > 0 else 1)
"""


def _etcd_put(endpoint: str, key: str, value: bytes) -> None:
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode()}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/v3/kv/put", data=body, method="POST"), timeout=10):
        pass


def _clickhouse(servers: Servers, sql: str) -> None:
    request = urllib.request.Request(servers.clickhouse.http_url, data=sql.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()


def _s3(servers: Servers) -> Any:
    from backup.repository.s3store import make_client

    return make_client(endpoint_url=servers.s3_endpoint, region="us-east-1", access_key_id="demo", secret_access_key="demo")


def write_policy(workdir: Path, servers: Servers) -> Path:
    path = workdir / "lifeboat.yaml"
    smoke = workdir / "smoke.py"
    smoke.write_text(SMOKE_TEST)
    ch = servers.clickhouse
    path.write_text(
        textwrap.dedent(
            f"""\
            # Written by `lifeboat demo`: the same file shape as policies/examples/production.yaml.
            repository: {{url: "file://{workdir}/repository"}}
            state: {workdir}/state.db
            sources:
              k8s-etcd:
                kind: etcd
                endpoints: ["{servers.etcd.endpoint}"]
                retention: {{keep_last: 4, keep_daily: 7}}
                checks:
                  - {{name: training-pods, prefix: /registry/pods/ml-training/, expect: {{min: 10}}}}
                  - {{name: serving-namespace, kubernetes: {{resource: namespaces, name: ml-serving}}}}
              features:
                kind: clickhouse
                host: 127.0.0.1
                port: {ch.tcp_port}
                http_port: {ch.http_port}
                databases: [features]
                retention: {{keep_daily: 14}}
                checks:
                  - name: model-scores-present
                    sql: "SELECT count() FROM features.model_scores"
                    expect: {{min: 1}}
                  - name: users-as-at-backup
                    sql: "SELECT uniqExact(user_id) FROM features.user_features"
                    expect: same_as_source
              models:
                kind: s3
                endpoint_url: {servers.s3_endpoint}
                access_key_id: demo
                secret_access_key: demo
                buckets: [models, datasets]
                retention: {{keep_hourly: 48}}
                checks:
                  - {{name: ranker-v3, object: models/ranker/v3/model.bin, expect: same_as_source}}
                  - {{name: click-logs, prefix: datasets/clicks/, expect: {{min: 10}}}}
            scratch:
              kind: local
              local:
                workdir: {workdir}/scratch
                clickhouse: {{host: 127.0.0.1, port: {ch.tcp_port}, http_port: {ch.http_port}}}
                s3: {{endpoint_url: "{servers.s3_endpoint}", access_key_id: demo, secret_access_key: demo}}
            drills:
              nightly:
                sources: [k8s-etcd, features, models]
                objectives: {{rto: 30m, rpo: 26h}}
                faults: [corrupt-chunk, missing-chunk, flaky-storage, kill-target, disaster, verifier-canary]
                notify: [team]
                checks:
                  - {{name: smoke, command: ["{sys.executable}", "{smoke}"], timeout: 2m}}
              platform:
                restore_point: platform
                objectives: {{rto: 30m, rpo: 26h}}
                checks:
                  - name: model-uris-resolve
                    references:
                      from: {{source: features, sql: "SELECT DISTINCT uri FROM features.model_registry"}}
                      to: {{source: models}}
                  - name: model-store-bucket
                    references:
                      from: {{source: k8s-etcd, prefix: /registry/configmaps/ml-serving/, field: data.bucket}}
                      to: {{source: models}}
            restore_points:
              platform:
                sources: [k8s-etcd, features, models]
                retention: {{keep_last: 7}}
            notify:
              team:
                kind: email
                smtp: {{host: 127.0.0.1, port: {servers.smtp_port}, starttls: false}}
                from: lifeboat@demo.local
                to: [ml-platform@demo.local]
                on: [drill, backup-failure]
            """
        )
    )
    return path


def lifeboat(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Run the real CLI, as an operator would, and parse its --json document."""
    done = subprocess.run(
        [sys.executable, "-m", "lifeboat", "--config", str(config), "--log-format", "json", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        raise DemoError(f"`lifeboat {' '.join(args)}` failed (exit {done.returncode}):\n{done.stderr[-3000:]}") from None


def run_demo(workdir: Path, *, small: bool, say: Callable[[str], None], broken: bool = False) -> int:
    """The whole story; returns the drill's exit code (0 PASS, 1 FAIL, 3 ERROR). ``broken``: the ETL
    empties a feature table before the second backup, and the drill's check catches it (exit 1)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    say(f"Lifeboat demo in {workdir}\n\n1. Starting local servers")
    with local_servers(workdir, say) as servers:
        say("\n2. Seeding an ML platform's data")
        seeded = seed(servers, rows=100_000 if small else 1_000_000, objects=60 if small else 300)
        say("  " + ", ".join(f"{value} {name}" for name, value in seeded.items()))
        config = write_policy(workdir, servers)
        say(f"  policy: {config}")

        code, created = lifeboat(config, "repo", "init")
        if code != 0:
            raise DemoError(f"repo init failed: {created.get('error')}")
        say(f"  repository: {created['created']}")

        say("\n3. Backing up every source, twice (the second run is incremental)")
        _, first = lifeboat(config, "backup", "run")
        change_some_data(servers)
        if broken:
            say("  (--broken: a broken ETL emptied features.model_scores before the second backup)")
            break_the_etl(servers)
        code, second = lifeboat(config, "backup", "run")
        if code != 0:
            raise DemoError(f"backup failed: {second.get('errors')}")
        _backup_table(first, second, say)

        say("\n4. Drill `nightly`: restore every source into scratch, verify, run the team's checks, inject every fault")
        code, report = lifeboat(config, "drill", "run", "nightly", "--report-dir", str(workdir / "reports"))
        _drill_table(report, say)
        say(f"\n  verdict: {report['verdict']}   total RTO {human_duration(report['rto_seconds'] or 0)}")
        say(f"  HTML report: {report['report_files'].get('html')}")
        subjects = [message["Subject"] for message in servers.mail]
        say(f"  email to the team: {subjects[-1] if subjects else 'none arrived'}")
        platform = _restore_point_story(config, servers, say, broken=broken)
        say("\n6. Stopping the servers")
    say("done. Try: lifeboat --config " + str(config) + " restore-point list")
    return max(code, platform)


def _restore_point_story(config: Path, servers: Servers, say: Callable[[str], None], *, broken: bool) -> int:
    """Step 5: a restore point of the three sources, and a drill of it with cross-source checks;
    returns the drill's exit code."""
    say("\n5. Restore point `platform`: the three sources together, then a drill proving the pieces fit")
    if broken:
        say(f"  (--broken: a cleanup job deleted {delete_a_model_file(servers)}, which features.model_registry names)")
    code, taken = lifeboat(config, "backup", "run", "--restore-point", "platform")
    point = taken.get("restore_point") or {}
    if code != 0 or point.get("status") != "complete":
        why = [f"{member['source']}: {member.get('error')}" for member in point.get("members", []) if member.get("error")]
        raise DemoError(f"the restore point failed (exit {code}): {'; '.join(why) or json.dumps(taken)[:3000]}")
    say(f"  restore point {point['id']}: complete, spread {human_duration(point['spread_seconds'] or 0)}")
    code, report = lifeboat(config, "drill", "run", "platform", "--no-email", "--report-dir", str(config.parent / "reports"))
    _drill_table(report, say)
    say(f"\n  verdict: {report['verdict']}   platform RTO {human_duration(report['rto_seconds'] or 0)}")
    return code


def _backup_table(first: dict[str, Any], second: dict[str, Any], say: Callable[[str], None]) -> None:
    say(f"  {'source':<10} {'1st read':>10} {'1st stored':>11} {'2nd read':>10} {'2nd stored':>11}  status")
    before = {item["source"]: item for item in first["snapshots"]}
    for item in second["snapshots"]:
        old = before.get(item["source"], {})
        say(
            f"  {item['source']:<10} {human_bytes(old.get('bytes_read', 0)):>10} "
            f"{human_bytes(old.get('bytes_stored', 0)):>11} {human_bytes(item['bytes_read']):>10} "
            f"{human_bytes(item['bytes_stored']):>11}  {item['status']}"
        )


def _drill_table(report: dict[str, Any], say: Callable[[str], None]) -> None:
    say(f"  {'source':<10} {'verdict':<8} {'RTO':>8} {'RPO':>8}  steps")
    for source in report["sources"]:
        rto = human_duration(source["rto_seconds"]) if source["rto_seconds"] is not None else "-"
        rpo = human_duration(source["rpo_seconds"]) if source["rpo_seconds"] is not None else "-"
        passed = sum(Status(step["verdict"]) is Status.PASS for step in source["steps"])
        say(f"  {source['source']:<10} {source['verdict']:<8} {rto:>8} {rpo:>8}  {passed}/{len(source['steps'])} passed")
        for step in source["steps"]:
            if Status(step["verdict"]) is not Status.PASS or step["name"].startswith("check:"):
                say(f"    {step['verdict']} {step['name']}: {step['message']}")
    for step in report["steps"]:
        if step["name"].startswith("check:") or Status(step["verdict"]) is not Status.PASS:
            say(f"  drill {step['verdict']} {step['name']}: {step['message']}")


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/demo"), show_default=True)
@click.option("--small", is_flag=True, help="Less data (CI): 1e5 feature rows and 60 objects.")
@click.option("--broken", is_flag=True, help="A broken ETL empties a feature table: watch a drill check catch it.")
def demo(workdir: Path, small: bool, broken: bool) -> None:
    """The whole story on this machine: local servers, data, two backups, a drill with every fault."""
    code = run_demo(workdir.resolve(), small=small, say=click.echo, broken=broken)
    click.get_current_context().exit(code)
