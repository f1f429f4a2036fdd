"""JUnit XML, so CI systems and dashboards show a drill like a test run.

One ``<testsuite>`` per source (and one for run-level steps, if any), one ``<testcase>`` per step
with ``classname="<drill>.<source>"``. FAIL becomes ``<failure>``, ERROR becomes ``<error>``: the
two must stay apart, because "verified and wrong" and "could not verify" call for different work.
A step that never ran (an earlier one did not pass) is ``<skipped>`` with the reason.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from drills.model import DrillRun, SourceRun, Status, Step

# XML 1.0 cannot carry most control characters, and a step message may quote a tool's raw stderr
# (ANSI colours, NULs): such characters would make the whole file unparsable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MESSAGE_ATTRIBUTE_CHARS = 300  # the full message is in the element text; the attribute is a headline

_CHILD_FOR = {Status.FAIL: "failure", Status.ERROR: "error"}


@dataclass(frozen=True)
class _Suite:
    name: str
    classname: str
    steps: list[Step]
    properties: dict[str, str]


def render_junit(run: DrillRun) -> str:
    """The run as a JUnit XML document (``<testsuites>`` root), as text."""
    suites = _suites(run)
    root = ET.Element("testsuites", name=_clean(f"lifeboat drill {run.drill}"))
    _set_counts(root, [step for suite in suites for step in suite.steps])
    for suite in suites:
        root.append(_suite_element(suite, run))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suites(run: DrillRun) -> list[_Suite]:
    suites = []
    if run.steps:
        suites.append(_Suite(run.drill, run.drill, run.steps, {"run_id": run.run_id}))
    suites += [_source_suite(run, source) for source in run.sources]
    return suites


def _source_suite(run: DrillRun, source: SourceRun) -> _Suite:
    name = f"{run.drill}.{source.source}"
    properties = {"run_id": run.run_id, "kind": source.kind, "verdict": source.verdict.value}
    for key, value in (
        ("snapshot", source.snapshot),
        ("rto_seconds", source.rto_seconds),
        ("rpo_seconds", source.rpo_seconds),
    ):
        if value is not None:
            properties[key] = str(value)
    return _Suite(name, name, source.steps, properties)


def _suite_element(suite: _Suite, run: DrillRun) -> ET.Element:
    element = ET.Element("testsuite", name=_clean(suite.name), timestamp=run.started.isoformat(timespec="seconds"))
    _set_counts(element, suite.steps)
    properties = ET.SubElement(element, "properties")
    for key, value in suite.properties.items():
        ET.SubElement(properties, "property", name=key, value=_clean(value))
    for step in suite.steps:
        element.append(_testcase(suite.classname, step))
    return element


def _set_counts(element: ET.Element, steps: list[Step]) -> None:
    element.set("tests", str(len(steps)))
    element.set("failures", str(sum(step.verdict is Status.FAIL for step in steps)))
    element.set("errors", str(sum(step.verdict is Status.ERROR and step.ran for step in steps)))
    element.set("skipped", str(sum(not step.ran for step in steps)))
    element.set("time", _seconds(sum(step.seconds for step in steps)))


def _testcase(classname: str, step: Step) -> ET.Element:
    case = ET.Element("testcase", classname=_clean(classname), name=_clean(step.name), time=_seconds(step.seconds))
    if not step.ran:
        ET.SubElement(case, "skipped", message=_clean(step.message)[:_MESSAGE_ATTRIBUTE_CHARS])
        return case
    child = _CHILD_FOR.get(step.verdict)
    if child is not None:
        message = _clean(step.message) or "(no message)"
        headline = message.strip().splitlines()[0] if message.strip() else message
        outcome = ET.SubElement(case, child, message=headline[:_MESSAGE_ATTRIBUTE_CHARS], type=step.verdict.value)
        outcome.text = message
    return case


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)
