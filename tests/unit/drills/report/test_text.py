"""The mail subject and the plain-text summary: what an on-call engineer reads first."""

from __future__ import annotations

from report_samples import (
    PROVISION_ERROR,
    VERIFY_FAILED,
    drill_run,
    erroring_run,
    failing_run,
    late_run,
    passing_run,
    source_run,
)

from drills.model import Status
from drills.report import render_text, subject_line


def test_subject_of_a_passing_run() -> None:
    assert subject_line(passing_run()) == "[lifeboat] nightly PASS: 3 sources, RTO 4m12s (objective 30m)"


def test_subject_names_what_failed_or_errored() -> None:
    assert subject_line(failing_run()) == "[lifeboat] nightly FAIL: 3 sources (features FAIL), RTO 4m12s (objective 30m)"
    assert subject_line(erroring_run()) == "[lifeboat] nightly ERROR: 3 sources (models ERROR), RTO n/a (objective 30m)"


def test_subject_stays_one_short_line_with_many_failures() -> None:
    broken = {"verify": (Status.FAIL, "mismatch\nsecond line")}
    run = drill_run([source_run(f"src{n}", outcomes=broken) for n in range(5)])
    subject = subject_line(run)
    assert subject.startswith("[lifeboat] nightly FAIL: 5 sources (src0 FAIL, src1 FAIL, src2 FAIL, +2 more), RTO ")
    assert "\n" not in subject


def test_subject_says_one_source() -> None:
    assert subject_line(drill_run([source_run("k8s-etcd")])).startswith("[lifeboat] nightly PASS: 1 source, RTO 1m02s")


def test_summary_of_a_passing_run() -> None:
    lines = render_text(passing_run()).splitlines()
    assert lines[0] == "Lifeboat drill nightly: PASS - every source was restored and verified"
    assert lines[2] == "total RTO 4m12s of 30m objective"
    assert [line.split()[:2] for line in lines[4:7]] == [["k8s-etcd", "PASS"], ["features", "PASS"], ["models", "PASS"]]
    assert "RTO 2m10s of 30m objective, RPO 2h00m of 26h objective" in lines[5]
    assert not any("Failed or errored" in line for line in lines)


def test_summary_lists_the_failed_step_with_its_message_before_the_sources() -> None:
    text = render_text(failing_run())
    assert text.startswith("Lifeboat drill nightly: FAIL")
    assert "What went wrong:\n  FAIL  features / verify: " + VERIFY_FAILED + "\n" in text
    assert "  not run on features: fault:corrupt-chunk (the restored copy it needs was not verified)\n" in text
    assert text.index("What went wrong:") < text.index("  k8s-etcd ")


def test_summary_of_an_unverified_run_says_it_is_not_a_pass() -> None:
    text = render_text(erroring_run())
    assert text.splitlines()[0] == "Lifeboat drill nightly: ERROR - something could not be verified: this is not a pass"
    assert "total RTO n/a (objective 30m)" in text
    assert "  models    ERROR  RTO not run, RPO 30m00s of 26h objective" in text
    assert f"  ERROR models / provision: {PROVISION_ERROR}" in text
    assert "  not run on models: restore, verify, fault:corrupt-chunk (provision ended in ERROR)" in text
    assert "ERROR models / restore" not in text  # a step that never ran is not a cause


def test_a_multi_line_message_stays_readable() -> None:
    run = failing_run()
    run.sources[1].steps[4].message = "3 tables differ:\nevents\nusers"
    text = render_text(run)
    head = "  FAIL  features / verify: "
    assert f"{head}3 tables differ:\n{' ' * len(head)}events\n{' ' * len(head)}users\n" in text


def test_a_stale_snapshot_reads_in_days() -> None:
    run = passing_run()
    run.sources[0].rpo_seconds = 5 * 86400 + 3 * 3600
    assert "RPO 5d03h of 26h objective" in render_text(run)


def test_each_report_shows_a_snapshots_consistency_window() -> None:
    from drills.report import load_json, render_html, render_json

    window = {
        "pinned": "2026-11-30T02:00:00+00:00",
        "earliest": "2026-11-30T02:00:00+00:00",
        "latest": "2026-11-30T02:00:03+00:00",
        "window_seconds": 3.0,
        "moved": [
            {"table": "features.a", "partitions": ["all"], "pinned": "2026-11-30T02:00:03+00:00", "why": "pinned again"}
        ],
    }
    run = passing_run()
    run.sources[1].consistency = window
    lines = render_text(run).splitlines()
    at = next(n for n, line in enumerate(lines) if line.strip().startswith("features"))
    assert lines[at + 1].strip().startswith("consistency window 3.0s from 2026-11-30T02:00:00+00:00")
    assert "features.a at 2026-11-30T02:00:03+00:00 (pinned again)" in lines[at + 1]
    assert "consistency window 3.0s" in render_html(run)
    assert load_json(render_json(run)).sources[1].consistency == window


def test_a_fail_on_objectives_alone_says_which_and_by_how_much() -> None:
    first = render_text(late_run()).splitlines()[0]
    assert first == (
        "Lifeboat drill nightly: FAIL - missed its objectives: features RTO 35m00s, 5m00s over the 30m objective; "
        "models RPO 30h00m, 4h00m over the 26h objective"
    )
