"""write_reports: the four files land in the report directory, named after the run, complete."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from report_samples import failing_run, history

from drills.report import load_json, write_reports


def test_writes_the_four_reports(tmp_path: Path) -> None:
    run = failing_run()
    written = write_reports(run, tmp_path / "reports", history(2))

    assert set(written) == {"json", "junit", "html", "text"}
    assert sorted(path.name for path in (tmp_path / "reports").iterdir()) == [
        "nightly-20260611T040000Z-0001.junit.xml",
        "nightly-20260611T040000Z-0001.report.html",
        "nightly-20260611T040000Z-0001.report.json",
        "nightly-20260611T040000Z-0001.summary.txt",
    ]
    assert load_json(written["json"].read_text(encoding="utf-8")).to_dict() == run.to_dict()
    assert ET.parse(written["junit"]).getroot().get("failures") == "1"
    assert "FAIL</div>" in written["html"].read_text(encoding="utf-8")
    assert written["text"].read_text(encoding="utf-8").startswith("Lifeboat drill nightly: FAIL")
    assert json.loads(written["json"].read_text(encoding="utf-8"))["schema"] == "lifeboat.drill-report/v1"


def test_a_strange_run_id_cannot_leave_the_directory(tmp_path: Path) -> None:
    run = failing_run()
    run.run_id = "../../etc/passwd"
    written = write_reports(run, tmp_path / "reports")
    assert all(path.parent == tmp_path / "reports" for path in written.values())
    assert written["json"].name == "etc_passwd.report.json"
    assert not (tmp_path / "etc").exists()


def test_a_second_run_does_not_overwrite_the_first(tmp_path: Path) -> None:
    first, second = failing_run(), failing_run()
    second.run_id = "nightly-20260612T040000Z-0002"
    write_reports(first, tmp_path)
    write_reports(second, tmp_path)
    assert len(list(tmp_path.glob("*.report.json"))) == 2
