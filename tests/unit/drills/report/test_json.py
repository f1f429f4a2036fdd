"""The JSON report: versioned schema, lossless round trip, clear refusal of anything else."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from report_samples import erroring_run, failing_run, passing_run

from drills.model import REPORT_SCHEMA, DrillRun
from drills.report import load_json, render_json


@pytest.mark.parametrize("make_run", [passing_run, failing_run, erroring_run], ids=["pass", "fail", "error"])
def test_a_report_reads_back_as_the_same_run(make_run) -> None:
    run: DrillRun = make_run()
    again = load_json(render_json(run))
    assert again.to_dict() == run.to_dict()
    assert again.verdict is run.verdict
    assert [source.rto_seconds for source in again.sources] == [source.rto_seconds for source in run.sources]


def test_the_document_names_its_schema_and_the_verdicts() -> None:
    document = json.loads(render_json(failing_run()))
    assert document["schema"] == REPORT_SCHEMA
    assert document["verdict"] == "FAIL"
    assert document["rto_seconds"] == 252.0
    assert {source["source"]: source["verdict"] for source in document["sources"]} == {
        "k8s-etcd": "PASS",
        "features": "FAIL",
        "models": "PASS",
    }


def test_odd_step_details_do_not_stop_the_report() -> None:
    run = passing_run()
    run.sources[0].steps[3].details = {"finished_at": datetime(2026, 6, 11, tzinfo=UTC), "bytes": 10}
    document = json.loads(render_json(run))
    assert document["sources"][0]["steps"][3]["details"] == {"finished_at": "2026-06-11 00:00:00+00:00", "bytes": 10}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("not json", "not a JSON drill report"),
        ("[1, 2]", "not a JSON object"),
        ('{"schema": "lifeboat.drill-report/v0"}', "not a lifeboat.drill-report/v1 report"),
        (f'{{"schema": "{REPORT_SCHEMA}", "drill": "nightly"}}', "incomplete"),
    ],
)
def test_anything_but_a_v1_report_is_refused_clearly(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        load_json(text)


def test_a_step_that_never_ran_says_so_and_reads_back() -> None:
    document = json.loads(render_json(erroring_run()))
    models = document["sources"][2]["steps"]
    assert [(step["name"], step["ran"]) for step in models] == [
        ("select-snapshot", True),
        ("rpo", True),
        ("provision", True),
        ("restore", False),
        ("verify", False),
        ("fault:corrupt-chunk", False),
    ]
    assert set(models[0]) == {"name", "verdict", "started", "finished", "seconds", "message", "details", "ran"}
    for step in models:
        del step["ran"]  # a report written before the key existed
    again = DrillRun.from_dict(document)
    assert [step.ran for step in again.sources[2].steps] == [True, True, True, False, False, False]
