"""Drill evidence (issue 17): signed, chained records that `lifeboat evidence verify` checks with the
public key alone, the compliance report (JSON, CSV, and HTML in headless Chromium), and Object Lock
on the records of an S3 repository."""

from __future__ import annotations

import csv
import io
import json
import shutil
import stat
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import init_repository, missing_requirement
from policy_builder import PolicyBuilder
from report_samples import erroring_run, failing_run, passing_run

from backup.repository import open_repository
from backup.repository.store import ObjectLockedError, get_bytes, put_bytes
from drills.evidence import build_record, list_records, load_signing_key, sign, write_record
from drills.history import store_report
from drills.model import DrillRun
from lifeboat.cli import cli
from policies.loader import load_policy

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
NOW = datetime.now(UTC).replace(microsecond=0)
SCRATCH = {"kind": "local", "hosts": ["127.0.0.1"], "shared_servers": [], "shares_server_with_source": False}


def lifeboat(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def keygen(path: Path) -> Path:
    result = CliRunner().invoke(cli, ["evidence", "keygen", "--out", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path


def moved(run: DrillRun, at: datetime, run_id: str) -> DrillRun:
    """``run`` as if it had started at ``at`` with id ``run_id``."""
    run.started, run.finished, run.run_id = at, at + timedelta(minutes=5), run_id
    return run


def record_runs(config: Path, key_file: Path, runs: list[DrillRun], *, reports: bool = True) -> list[str]:
    """Store each run's report and evidence record as a drill does; return the record keys, in order."""
    key = load_signing_key(key_file.read_text())
    keys = []
    with open_repository(load_policy(config).repository) as repository:
        for run in runs:
            if reports:
                store_report(repository, run)
            manifests = {s.source: {"manifest_sha256": "0" * 64, "bytes": 1000} for s in run.sources}
            record = build_record(run, policy_hash="1" * 64, manifests=manifests, scratch=SCRATCH, version="test")
            keys.append(write_record(repository, record, key))
    return keys


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A local repository holding a chain of four records of drill nightly; (policy, key file, record keys)."""
    (tmp_path / "keys").mkdir()
    key_file = keygen(tmp_path / "keys" / "evidence")
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source("k8s-etcd", "etcd", endpoints=["http://127.0.0.1:2379"])
    policy.set("evidence", {"signing_key": {"file": key_file}})
    config = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    runs = [moved(passing_run(), NOW - timedelta(days=4 - i), f"nightly-run-{i}") for i in range(4)]
    return config, key_file, record_runs(config, key_file, runs)


def verify(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = lifeboat(config, "evidence", "verify", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def test_keygen_writes_a_private_key_only_its_owner_reads_and_refuses_to_overwrite(tmp_path: Path) -> None:
    key_file = keygen(tmp_path / "evidence")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert Path(f"{key_file}.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = CliRunner().invoke(cli, ["evidence", "keygen", "--out", str(key_file)])
    assert again.exit_code == 2 and "never overwritten" in again.output


def test_an_untouched_chain_verifies_with_only_the_public_key(chain: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    _, key_file, _ = chain
    public = tmp_path / "auditor.pub"
    shutil.copy(f"{key_file}.pub", public)
    key_file.unlink()  # the auditor has no private key, and a policy without one
    auditor = PolicyBuilder(tmp_path / "repo", state=tmp_path / "auditor.db")
    auditor.source("k8s-etcd", "etcd", endpoints=["http://127.0.0.1:2379"])
    auditor_config = auditor.write(tmp_path / "auditor.yaml")

    code, document = verify(auditor_config, "--public-key", str(public))

    assert (code, document["ok"], document["records"], document["breaks"]) == (0, True, 4, [])
    text = lifeboat(auditor_config, "evidence", "verify", "--public-key", str(public))
    assert text.exit_code == 0 and "4 record(s) of 1 drill(s)" in text.output and "whole" in text.output
    recent = verify(auditor_config, "--public-key", str(public), "--since", "3d")[1]
    assert recent["records"] == 2  # the runs of the last three days: 2 and 1 day ago


def test_a_record_edited_by_one_byte_is_named(chain: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    config, _, keys = chain
    edited = tmp_path / "repo" / keys[1]
    data = edited.read_bytes()
    at = data.index(b'"verdict":"PASS"') + len('"verdict":"')
    edited.write_bytes(data[:at] + b"F" + data[at + 1 :])  # PASS -> FASS, one byte

    code, document = verify(config)  # the policy's signing key file + .pub

    assert code == 1 and not document["ok"]
    named = {item["key"]: item["problem"] for item in document["breaks"]}
    assert "edited" in named[keys[1]]
    assert "is not the one it was chained to" in named[keys[2]]  # the next record's link breaks too
    assert set(named) == {keys[1], keys[2]}
    text = lifeboat(config, "evidence", "verify")
    assert text.exit_code == 1 and f"BROKEN {keys[1]}: " in text.output


def test_a_record_removed_from_the_middle_is_named(chain: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    config, _, keys = chain
    (tmp_path / "repo" / keys[1]).unlink()

    code, document = verify(config)

    assert code == 1
    [broken] = document["breaks"]
    assert broken["key"] == keys[2]
    assert broken["problem"] == f"record 2 of the chain, between {keys[0]} and this one, is missing (deleted)"


def test_a_record_signed_with_another_key_is_named(chain: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    config, _, keys = chain
    other = load_signing_key(keygen(tmp_path / "other").read_text())
    replaced = tmp_path / "repo" / keys[3]  # the newest: nothing after it would notice
    replaced.write_bytes(sign(json.loads(replaced.read_bytes()), other))

    code, document = verify(config)

    assert code == 1
    [broken] = document["breaks"]
    assert broken["key"] == keys[3] and broken["problem"].startswith("signed with another key")


def test_the_compliance_report_lists_every_run_the_gap_and_the_sources_never_drilled(tmp_path: Path) -> None:
    key_file = keygen(tmp_path / "evidence")
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    for name in ("k8s-etcd", "features", "models"):
        policy.source(name, "etcd", endpoints=["http://127.0.0.1:2379"])
    policy.source("lake", "etcd", endpoints=["http://127.0.0.1:2379"])  # in no drill: never drilled
    policy.drill("nightly", sources=["k8s-etcd", "features", "models"], objectives={"rto": "30m", "rpo": "26h"})
    policy.set("evidence", {"signing_key": {"file": key_file}})
    config = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    history = [
        moved(passing_run(), NOW - timedelta(days=200), "run-old"),  # before the period: not listed
        moved(passing_run(), NOW - timedelta(days=80), "run-pass-1"),
        moved(failing_run(), NOW - timedelta(days=50), "run-fail"),  # features FAIL
        moved(erroring_run(), NOW - timedelta(days=40), "run-error"),  # models ERROR
        moved(passing_run(), NOW - timedelta(days=20), "run-pass-2"),
        moved(passing_run(), NOW - timedelta(days=5), "run-pass-3"),
    ]
    record_runs(config, key_file, history)

    document = json.loads(lifeboat(config, "evidence", "report", "--since", "90d", "--format", "json").stdout)

    [nightly] = document["drills"]
    by_source = {item["source"]: item for item in nightly["sources"]}
    verdicts = {name: [(row["run_id"], row["verdict"]) for row in item["runs"]] for name, item in by_source.items()}
    ids = ["run-pass-1", "run-fail", "run-error", "run-pass-2", "run-pass-3"]
    assert verdicts == {
        "k8s-etcd": [(run_id, "PASS") for run_id in ids],
        "features": list(zip(ids, ["PASS", "FAIL", "PASS", "PASS", "PASS"], strict=True)),
        "models": list(zip(ids, ["PASS", "PASS", "ERROR", "PASS", "PASS"], strict=True)),
    }
    days = {name: item["longest_gap"]["seconds"] / 86400 for name, item in by_source.items()}
    assert days == {"k8s-etcd": 30, "features": 40, "models": 30}  # features: the FAIL run's 80 -> 40 days ago
    gap = by_source["features"]["longest_gap"]
    assert gap["from"] == (NOW - timedelta(days=80)).isoformat() and not gap["open"]
    assert gap["to"] == (NOW - timedelta(days=40)).isoformat()
    assert all(row["segregated"] is True for item in by_source.values() for row in item["runs"])
    assert document["never_drilled"] == ["lake"]
    assert [control["control"].split(" (")[0] for control in document["controls"]] == [
        "DORA Art. 12",
        "ISO/IEC 27001:2022 A.8.13",
        "SOC 2 A1.3 / CC7.5",
    ]

    rows = list(csv.DictReader(io.StringIO(lifeboat(config, "evidence", "report", "--format", "csv").stdout)))
    assert len(rows) == 3 * 5 + 1
    assert {row["verdict"] for row in rows} == {"PASS", "FAIL", "ERROR", "NOT DRILLED"}
    assert rows[-1]["source"] == "lake" and rows[-1]["verdict"] == "NOT DRILLED"

    page = tmp_path / "compliance.html"
    assert lifeboat(config, "evidence", "report", "--format", "html", "--out", str(page)).exit_code == 0
    seen = render_in_chromium(page, tmp_path / "profile")
    assert "Restore-test evidence report" in seen and "lake" in seen and "run-error" in seen
    assert "DORA Art. 12" in seen and "longest gap between successful tests: <b>40 days</b>" in seen


def render_in_chromium(page: Path, profile: Path) -> str:
    """The page's DOM as headless Chromium renders it; its screenshot and PDF print kept under tests/artifacts/."""
    browser = shutil.which("chromium")
    if browser is None:
        missing_requirement("chromium is not on PATH; install it with: apt-get install chromium (.ci/system-deps.sh does)")
    ARTIFACTS.mkdir(exist_ok=True)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}"]
    flags += ["--disable-background-networking", "--disable-component-update", "--hide-scrollbars"]
    shot, printed = ARTIFACTS / "compliance-report.png", ARTIFACTS / "compliance-report.pdf"
    for action in (f"--screenshot={shot}", f"--print-to-pdf={printed}", "--dump-dom"):
        done = subprocess.run(
            [*flags, "--window-size=1200,1600", action, page.as_uri()], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert shot.stat().st_size > 10_000 and printed.read_bytes().startswith(b"%PDF")
    return done.stdout


def test_evidence_objects_under_object_lock_cannot_be_overwritten_or_deleted(tmp_path: Path, s3_server: Any) -> None:
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    key_file = keygen(tmp_path / "evidence")
    s3 = {"endpoint_url": s3_server.endpoint_url, "access_key_id": "testing", "secret_access_key": "testing"}
    policy = PolicyBuilder(f"s3://{bucket}/prod", state=tmp_path / "state.db", s3=s3)
    policy.set("repository.object_lock", {"mode": "COMPLIANCE", "days": 1})
    policy.source("k8s-etcd", "etcd", endpoints=["http://127.0.0.1:2379"])
    policy.set("evidence", {"signing_key": {"file": key_file}})
    config = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    [key] = record_runs(config, key_file, [moved(passing_run(), NOW, "locked-run")], reports=False)
    client, full = s3_server.client(), f"prod/{key}"
    head = client.head_object(Bucket=bucket, Key=full)
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"] > NOW + timedelta(hours=23)

    with open_repository(load_policy(config).repository) as repository:
        original = get_bytes(repository.store, key)
        put_bytes(repository.store, key, original.replace(b'"PASS"', b'"FAIL"'))  # a new version, on top
        with pytest.raises(ObjectLockedError, match="retention until"):
            repository.store.delete(key)
        versions = client.list_object_versions(Bucket=bucket, Prefix=full)["Versions"]
        bodies = [client.get_object(Bucket=bucket, Key=full, VersionId=v["VersionId"])["Body"].read() for v in versions]
        assert len(bodies) == 2 and original in bodies  # the signed record is still there, unchanged
        assert list(list_records(repository)) == ["nightly"]
    code, document = verify(config)
    assert code == 1 and document["breaks"][0]["key"] == key  # and the version on top is named as edited
