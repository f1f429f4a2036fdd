"""The mail's HTML part: what mail clients render without <style>, SVG or script: inline styles,
one narrow column that wraps, the failures first, a text table instead of the trend charts."""

from __future__ import annotations

import re

import pytest
from report_samples import PROVISION_ERROR, VERIFY_FAILED, erroring_run, failing_run, history, late_run, passing_run

from drills.report import render_email_html

GREEN, RED, AMBER = "#1a7f37", "#cf222e", "#f0a30a"


def banner(mail: str) -> str:
    match = re.search(r'<td id="verdict-banner".*?</td>', mail, re.DOTALL)
    assert match, "the mail has no verdict banner"
    return match.group(0)


def text_of(html: str) -> str:
    """The text a reader sees, cells apart, no space before punctuation."""
    return re.sub(r" ([:,.])", r"\1", " ".join(re.sub(r"<[^>]+>", " ", html).split()))


@pytest.mark.parametrize("make_run", [passing_run, failing_run, erroring_run, late_run])
def test_the_mail_needs_no_style_sheet_svg_or_script(make_run) -> None:
    mail = render_email_html(make_run(), history(5))
    for unsupported in ("<style", "<svg", "<script", "<link", "class=", "@media", "display:flex", "src="):
        assert unsupported not in mail
    # every table fills its column instead of pushing the card wider
    assert all('width="100%"' in table for table in re.findall(r"<table[^>]*>", mail))


@pytest.mark.parametrize(
    ("make_run", "background", "color"),
    [(passing_run, GREEN, "#ffffff"), (late_run, RED, "#ffffff"), (erroring_run, AMBER, "#1f2328")],
)
def test_the_banner_is_one_colour_pair_with_every_figure_readable(make_run, background: str, color: str) -> None:
    top = banner(render_email_html(make_run()))
    assert f"background:{background}" in top
    assert set(re.findall(r"[^-]color:\s*([^;\"]+)", top)) == {color}
    assert "RTO" in text_of(top)


def test_what_went_wrong_comes_right_after_the_banner() -> None:
    mail = render_email_html(erroring_run(), history(3))
    text = text_of(mail)
    assert text.index("What went wrong") < text.index("Sources") < text.index("Last runs")
    assert f"models / provision: {PROVISION_ERROR}" in text
    assert "Not run on models: restore, verify, fault:corrupt-chunk" in text
    assert "objects: 161" not in text


def test_a_failed_check_is_named_with_its_message() -> None:
    text = text_of(render_email_html(failing_run()))
    assert f"features / verify: {VERIFY_FAILED}" in text
    assert "a restore or a check was verified and found wrong" in text


def test_a_passing_mail_has_no_problem_block() -> None:
    assert "What went wrong" not in text_of(render_email_html(passing_run(), history(2)))


def test_the_charts_fall_back_to_a_table_of_the_last_runs() -> None:
    text = text_of(render_email_html(passing_run(), history(12)))
    assert "Last runs" in text and "06-11 04:00 \u2714 PASS 4m12s" in text
    assert "06-08 04:00 \u2718 FAIL" in text  # history's one failed run
    assert text.count(" RTO ") >= 1 and "06-01 04:00" not in text  # the ten newest runs only


def test_one_run_so_far() -> None:
    assert "One run so far" in text_of(render_email_html(passing_run(), []))
