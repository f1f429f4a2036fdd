"""The HTML page: self-contained, escaped, ERROR never green, trend charts over the run history."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from report_samples import T0, drill_run, erroring_run, failing_run, history, passing_run

from drills.model import DrillRun
from drills.report import render_html

SVG = "{http://www.w3.org/2000/svg}"
GREEN = "#1a7f37"


def banner(page: str) -> str:
    match = re.search(r"<header class=\"banner[^>]*>.*?</header>", page, re.DOTALL)
    assert match, "the page has no verdict banner"
    return match.group(0)


def chart(page: str, chart_id: str) -> ET.Element:
    """The chart's <svg>, parsed as XML (which also proves it is well-formed)."""
    match = re.search(rf'<svg [^>]*id="{chart_id}".*?</svg>', page, re.DOTALL)
    assert match, f"the page has no {chart_id}"
    return ET.fromstring(match.group(0))


def points(svg: ET.Element, series: str) -> int:
    group = svg.find(f"{SVG}g[@data-series='{series}']")
    assert group is not None, f"no series {series}"
    return len(group.findall(f"{SVG}circle"))


@pytest.mark.parametrize(
    ("make_run", "verdict", "color"),
    [(passing_run, "PASS", GREEN), (failing_run, "FAIL", "#cf222e"), (erroring_run, "ERROR", "#f0a30a")],
)
def test_the_banner_shows_the_verdict_in_its_colour(make_run, verdict: str, color: str) -> None:
    top = banner(render_html(make_run()))
    assert f"{verdict}</div>" in top
    assert f"background:{color}" in top


def test_an_error_banner_is_never_green_and_says_it_is_not_a_pass() -> None:
    page = render_html(erroring_run())
    top = banner(page)
    assert GREEN not in top and "green" not in top
    assert "this is not a pass" in top
    assert 'class="badge verdict-error" style="background:#f0a30a' in page


def test_messages_are_escaped() -> None:
    run = failing_run()
    run.sources[1].steps[4].message = "<script>alert('pwned')</script> & <b>bold</b>"
    run.sources[0].census = {"<img src=x>": "<i>"}
    page = render_html(run)
    assert "<script" not in page and "<b>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page


def test_the_page_needs_nothing_from_outside() -> None:
    page = render_html(failing_run(), history(5))
    for outside in ("<script", "<link", "src=", "@import", "url("):
        assert outside not in page


def test_rto_and_rpo_are_shown_against_their_objectives() -> None:
    run = passing_run()
    run.sources[2].rpo_seconds = 30 * 3600.0  # older than the 26h objective
    page = render_html(run)
    assert "RTO 4m12s of 30m objective" in banner(page)
    assert "2m10s of 30m objective" in page
    assert '<span class="over">30h00m of 26h objective (over)</span>' in page


def test_per_source_tables_list_every_step_with_duration_and_message() -> None:
    page = render_html(failing_run())
    section = re.search(r'<section class="source" id="source-features">.*?</section>', page, re.DOTALL)
    assert section
    rows = re.findall(r"<tr class=\"step verdict-(\w+)\"><td>([^<]+)</td>.*?class=\"num\">([^<]+)</td>", section.group(0))
    assert [(verdict, name) for verdict, name, _ in rows][3:5] == [("pass", "restore"), ("fail", "verify")]
    assert rows[3][2] == "2m10s"
    assert "fingerprint mismatch: features.events partition 202606" in section.group(0)


def test_charts_have_a_point_per_run_and_the_objective_line() -> None:
    page = render_html(passing_run(), history(4))
    rto, rpo = chart(page, "rto-chart"), chart(page, "rpo-chart")
    assert rto.get("data-runs") == "5" and rpo.get("data-runs") == "5"
    for source in ("k8s-etcd", "features", "models"):
        assert points(rto, source) == 5 and points(rpo, source) == 5
    assert points(rto, "total") == 5
    for svg, label in ((rto, "objective 30m"), (rpo, "objective 26h")):
        assert svg.find(f"{SVG}line[@class='objective']") is not None
        assert label in "".join(svg.itertext())
    assert page.count('class="verdict-fail"') == 1  # the verdict strip shows the one failed run of history


def test_a_run_without_history_is_one_point() -> None:
    page = render_html(passing_run(), [])
    rto = chart(page, "rto-chart")
    assert rto.get("data-runs") == "1" and points(rto, "features") == 1
    assert "Trends over the last 1 run<" in page


def test_an_unmeasured_rto_leaves_a_gap_not_a_zero() -> None:
    page = render_html(erroring_run(), history(3))
    rto = chart(page, "rto-chart")
    assert points(rto, "models") == 3 and points(rto, "k8s-etcd") == 4
    assert points(rto, "total") == 3


def test_a_run_with_nothing_measured_says_so() -> None:
    empty = DrillRun("nightly", "nightly-empty", T0, passing_run().objectives, T0)
    page = render_html(empty, [])
    assert "no measurement yet" in "".join(chart(page, "rto-chart").itertext())
    assert "No source was drilled." in page
    assert "ERROR</div>" in banner(page)


def test_history_is_ordered_deduplicated_and_of_this_drill_only() -> None:
    run = passing_run()
    other = drill_run([], run_id="weekly-1", at=T0 - timedelta(days=1))
    other.drill = "weekly"
    earlier = history(3)
    page = render_html(run, [earlier[2], run, other, earlier[0], earlier[1], earlier[0]])
    rto = chart(page, "rto-chart")
    assert rto.get("data-runs") == "4"
    titles = [title.text or "" for title in rto.iter(f"{SVG}title")]
    features = [title for title in titles if " features: " in title]
    assert [title[:10] for title in features] == ["2026-06-08", "2026-06-09", "2026-06-10", "2026-06-11"]


def test_history_is_capped_to_the_last_runs() -> None:
    page = render_html(passing_run(), history(50))
    assert chart(page, "rto-chart").get("data-runs") == "30"
