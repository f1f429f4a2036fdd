"""JUnit XML: a testsuite per source, a testcase per step, FAIL and ERROR kept apart, counts right."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from report_samples import PROVISION_ERROR, PROVISION_NOT_RUN, VERIFY_FAILED, erroring_run, failing_run, passing_run, step

from drills.model import Status
from drills.report import render_junit


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml.encode("utf-8"))


def counts(element: ET.Element) -> tuple[int, int, int]:
    return int(element.get("tests", -1)), int(element.get("failures", -1)), int(element.get("errors", -1))


def test_a_passing_run_is_all_green_testcases() -> None:
    root = parse(render_junit(passing_run()))
    assert root.tag == "testsuites"
    assert counts(root) == (21, 0, 0)
    suites = root.findall("testsuite")
    assert [suite.get("name") for suite in suites] == ["nightly.k8s-etcd", "nightly.features", "nightly.models"]
    for suite in suites:
        assert counts(suite) == (7, 0, 0)
        for case in suite.findall("testcase"):
            assert case.get("classname") == suite.get("name")
            assert list(case) == []  # PASS: no failure, no error


def test_testcases_are_the_steps_with_their_seconds() -> None:
    suite = parse(render_junit(passing_run())).find("testsuite[@name='nightly.features']")
    assert suite is not None
    cases = {case.get("name"): float(case.get("time", "-1")) for case in suite.findall("testcase")}
    assert list(cases) == ["select-snapshot", "rpo", "provision", "restore", "verify", "fault:corrupt-chunk", "teardown"]
    assert cases["restore"] == 130.0 and cases["verify"] == 1.5
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["kind"] == "clickhouse" and properties["rto_seconds"] == "130.0"


def test_a_failed_step_is_a_failure_not_an_error() -> None:
    root = parse(render_junit(failing_run()))
    assert counts(root) == (21, 1, 0)
    suite = root.find("testsuite[@name='nightly.features']")
    assert suite is not None and counts(suite) == (7, 1, 0) and suite.get("skipped") == "1"
    [failure] = root.iter("failure")
    assert list(root.iter("error")) == []
    verify = suite.find("testcase[@name='verify']")
    assert verify is not None and verify.find("failure") is failure
    assert failure.get("message") == VERIFY_FAILED and failure.text == VERIFY_FAILED


def test_an_errored_step_is_an_error_not_a_failure() -> None:
    root = parse(render_junit(erroring_run()))
    assert counts(root) == (20, 0, 1)
    suite = root.find("testsuite[@name='nightly.models']")
    assert suite is not None and counts(suite) == (6, 0, 1)
    [error] = root.iter("error")
    assert list(root.iter("failure")) == []
    assert error.get("message") == PROVISION_ERROR and error.get("type") == "ERROR"


def test_run_level_steps_get_their_own_suite() -> None:
    run = passing_run()
    run.steps = [step("scratch-setup", Status.ERROR, message="workdir is read-only"), step("janitor")]
    root = parse(render_junit(run))
    assert counts(root) == (23, 0, 1)
    first = root.findall("testsuite")[0]
    assert first.get("name") == "nightly" and counts(first) == (2, 0, 1)
    assert [case.get("classname") for case in first.findall("testcase")] == ["nightly", "nightly"]


def test_any_message_still_gives_a_parsable_file() -> None:
    run = failing_run()
    nasty = 'clickhouse said "<Code: 60> & table missing" \x1b[31mred\x1b[0m \x00\nsecond line'
    run.sources[1].steps[4].message = nasty
    [failure] = parse(render_junit(run)).iter("failure")
    assert failure.get("message") == 'clickhouse said "<Code: 60> & table missing" \ufffd[31mred\ufffd[0m \ufffd'
    assert failure.text is not None and failure.text.endswith("\nsecond line")


def test_steps_that_never_ran_are_skipped_with_the_reason() -> None:
    root = parse(render_junit(erroring_run()))
    assert root.get("skipped") == "3"
    suite = root.find("testsuite[@name='nightly.models']")
    assert suite is not None and suite.get("skipped") == "3"
    skipped = {case.get("name"): case.find("skipped") for case in suite.findall("testcase")}
    for name in ("restore", "verify", "fault:corrupt-chunk"):
        element = skipped[name]
        assert element is not None and element.get("message") == f"not run: {PROVISION_NOT_RUN}"
    [error] = root.iter("error")
    assert skipped["provision"] is None and error.get("message") == PROVISION_ERROR
