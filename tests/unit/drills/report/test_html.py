"""The HTML page: self-contained, escaped, ERROR never green, trend charts over the run history."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from report_samples import (
    PROVISION_ERROR,
    T0,
    VERIFY_FAILED,
    drill_run,
    erroring_run,
    failing_run,
    fast_history,
    fast_run,
    history,
    late_run,
    passing_run,
    step,
)

from drills.model import DrillRun, Status
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
    assert '<span class="over">30h00m of 26h objective, over by 4h00m</span>' in page


def test_per_source_tables_list_every_step_with_duration_and_message() -> None:
    page = render_html(failing_run())
    section = re.search(r'<section class="source" id="source-features"[^>]*>.*?</section>', page, re.DOTALL)
    assert section
    rows = re.findall(
        r"<tr class=\"step verdict-(\w+)\"[^>]*><td>([^<]+)</td>.*?class=\"num\">([^<]+)</td>", section.group(0)
    )
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
        assert label in "".join(svg.itertext())  # far above these runs' values: noted, not drawn
    assert page.count('class="verdict-fail"') == 1  # the verdict strip shows the one failed run of history


def test_an_unmeasured_rto_leaves_a_gap_not_a_zero() -> None:
    page = render_html(erroring_run(), history(3))
    rto = chart(page, "rto-chart")
    assert points(rto, "models") == 3 and points(rto, "k8s-etcd") == 4
    assert points(rto, "total") == 3


def test_a_run_with_nothing_measured_says_so() -> None:
    empty = DrillRun("nightly", "nightly-empty", T0, passing_run().objectives, T0)
    before = DrillRun("nightly", "nightly-empty-0", T0 - timedelta(days=1), empty.objectives, T0 - timedelta(days=1))
    page = render_html(empty, [before])
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


# --- issue 19: failures first, readable banner, not-run steps, objective misses, charts of the data --


def main_sections(page: str) -> list[str]:
    """The ids of <main>'s sections, in page order."""
    main = page[page.index("<main>") :]
    return re.findall(r'<section[^>]* id="([^"]+)"', main)


@pytest.mark.parametrize("make_run", [passing_run, failing_run, erroring_run, late_run])
def test_every_text_colour_in_the_banner_is_the_banners_own(make_run) -> None:
    top = banner(render_html(make_run()))
    text_color = re.search(r'style="background:[^;]+;color:([^;"]+)', top)
    assert text_color
    assert set(re.findall(r"[^-]color:\s*([^;\"]+)", top)) == {text_color.group(1)}
    assert 'class="over"' not in top  # red on red was invisible


def test_a_missed_rto_reads_in_the_banner_as_over_by_how_much() -> None:
    top = banner(render_html(late_run()))
    assert "RTO 37m02s of 30m objective, over by 7m02s" in re.sub(r"<[^>]+>", "", top)


def test_a_failed_or_errored_run_puts_what_went_wrong_first_with_links_to_the_rows() -> None:
    page = render_html(failing_run())
    assert main_sections(page)[0] == "problems"
    block = re.search(r'<section id="problems".*?</section>', page, re.DOTALL)
    assert block
    assert '<a href="#step-features-verify">features / verify</a>' in block.group(0)
    assert VERIFY_FAILED in block.group(0)
    assert 'id="step-features-verify"' in page  # the link lands on the row
    assert "Not run on features: fault:corrupt-chunk" in re.sub(r"<[^>]+>", "", block.group(0))


def test_an_errored_run_names_its_one_cause_first_and_what_never_ran() -> None:
    page = render_html(erroring_run(), history(3))
    block = re.search(r'<section id="problems".*?</section>', page, re.DOTALL)
    assert block and main_sections(page)[0] == "problems"
    text = re.sub(r"<[^>]+>", "", block.group(0))
    assert f"models / provision: {PROVISION_ERROR}" in " ".join(text.split())
    assert "Not run on models: restore, verify, fault:corrupt-chunk (provision ended in ERROR)" in " ".join(text.split())
    assert block.group(0).count('class="badge verdict-error"') == 1  # the not-run steps are not causes


def test_a_passing_run_has_no_problem_block() -> None:
    assert "problems" not in main_sections(render_html(passing_run()))


def test_steps_that_never_ran_show_as_not_run_and_their_figures_are_absent() -> None:
    page = render_html(erroring_run())
    section = re.search(r'<section class="source" id="source-models"[^>]*>.*?</section>', page, re.DOTALL)
    assert section
    rows = re.findall(r'<tr class="step ([\w -]+)" id="step-models-([\w:-]+)">', section.group(0))
    assert rows[-3:] == [("not-run", "restore"), ("not-run", "verify"), ("not-run", "fault-corrupt-chunk")]
    assert section.group(0).count("NOT RUN") == 3
    assert "objects: 161" not in section.group(0) and "restored" not in section.group(0).split("<table")[0]
    assert "RTO not run" in section.group(0)
    overview = re.search(r'<section id="overview"[^>]*>.*?</section>', page, re.DOTALL)
    assert overview and "not run" in overview.group(0)


def test_figures_of_a_restore_that_ran_are_shown() -> None:
    run = passing_run()
    section = re.search(r'id="source-k8s-etcd"[^>]*>.*?</section>', render_html(run), re.DOTALL)
    assert section and "restored keys: 4120" in section.group(0)


def test_a_fail_on_objectives_alone_says_which_objective_was_missed() -> None:
    top = " ".join(re.sub(r"<[^>]+>", "", banner(render_html(late_run()))).split())
    assert "verified and found wrong" not in top
    assert "missed its objectives: features RTO 35m00s, 5m00s over the 30m objective" in top
    assert "models RPO 30h00m, 4h00m over the 26h objective" in top


def test_a_fail_on_a_check_and_an_objective_says_both() -> None:
    run = late_run()
    run.sources[0].steps[4] = step("verify", Status.FAIL, message="1 key differs")
    top = " ".join(re.sub(r"<[^>]+>", "", banner(render_html(run))).split())
    assert "a restore or a check was verified and found wrong" in top and "features RTO 35m00s" in top


def cys(svg: ET.Element, series: str) -> list[float]:
    group = svg.find(f"{SVG}g[@data-series='{series}']")
    assert group is not None
    return [float(circle.get("cy", "nan")) for circle in group.findall(f"{SVG}circle")]


def test_sub_second_restores_fill_the_chart_instead_of_lying_on_zero() -> None:
    page = render_html(fast_run(), fast_history(5))
    rto = chart(page, "rto-chart")
    heights = cys(rto, "total")
    assert max(heights) - min(heights) > 40  # 0.25 s .. 0.76 s spread over the plot, not a flat line
    ticks = [text.text for text in rto.iter(f"{SVG}text") if text.get("class") == "tick"]
    assert "1s" not in ticks and any(tick and tick.endswith("s") and "." in tick for tick in ticks)


def test_an_objective_far_above_the_data_is_noted_not_drawn() -> None:
    rto = chart(render_html(fast_run(), fast_history(5)), "rto-chart")
    assert rto.find(f"{SVG}line[@class='objective']") is None
    label = rto.find(f"{SVG}text[@class='objective-label']")
    assert label is not None and "objective 30m" in "".join(label.itertext()) and "above" in "".join(label.itertext())


def test_an_objective_near_the_data_is_a_dashed_line_with_its_label() -> None:
    slow = [passing_run(at=T0 - timedelta(days=d), run_id=f"slow-{d}", rto_scale=5) for d in (3, 2, 1)]
    rto = chart(render_html(passing_run(rto_scale=5), slow), "rto-chart")
    line = rto.find(f"{SVG}line[@class='objective']")
    assert line is not None and line.get("stroke-dasharray")
    assert "objective 30m" in "".join(rto.itertext())


def test_every_point_tells_its_value_on_hover() -> None:
    rto = chart(render_html(fast_run(), fast_history(3)), "rto-chart")
    titles = [title.text or "" for title in rto.iter(f"{SVG}title")]
    assert "2026-06-11T04:00+00:00 features: 0.26s" in titles


def test_one_run_says_so_instead_of_drawing_a_trend() -> None:
    page = render_html(passing_run(), [])
    trends = re.search(r'<section id="trends"[^>]*>.*?</section>', page, re.DOTALL)
    assert trends and "One run so far" in trends.group(0)
    assert "<svg" not in trends.group(0).split("</p>", 1)[1]  # no chart of one point
    assert "4m12s" in trends.group(0)  # its figures are still there


def test_the_page_is_built_for_narrow_screens() -> None:
    page = render_html(failing_run(), history(3))
    assert "@media (max-width:" in page
    assert page.count('<div class="scroll">') == page.count("<table")
