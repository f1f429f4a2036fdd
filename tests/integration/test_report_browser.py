"""The HTML drill report and the mail's HTML part in a real browser (Debian's headless chromium), at a
desktop width (1300 px) and a phone's (420 px): the verdict banner's figures are readable (computed
colours), what went wrong comes first, nothing overflows sideways, and the charts render. The
screenshots are kept as test artifacts under tests/artifacts/ (gitignored) for a human to look at.

What is visible is measured by a copy of the page with a small probe script appended (the reports
themselves never carry a script): it writes its findings into the DOM, which ``--dump-dom`` returns.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import missing_requirement
from report_samples import erroring_run, failing_run, history, late_run, passing_run

from drills.model import DrillRun
from drills.report import render_email_html, write_reports

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in CI containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
WIDTHS = {"desktop": 1300, "phone": 420}
HEIGHT = 1600
BROWSER_TIMEOUT = 60
RED, AMBER, GREEN = (0xCF, 0x22, 0x2E), (0xF0, 0xA3, 0x0A), (0x1A, 0x7F, 0x37)
MIN_CONTRAST = 4.5  # WCAG AA for normal text
FOLD = 700  # px from the top: what a phone shows before any scrolling

# Appended to a copy of a report: measures what a reader sees and writes it into <pre id="probe">.
PROBE = """
<script>
(function () {
  function channels(css) { return (css.match(/[\\d.]+/g) || []).map(Number); }
  function luminance(css) {
    var c = channels(css).slice(0, 3).map(function (v) {
      v = v / 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  }
  function contrast(a, b) {
    var x = luminance(a), y = luminance(b);
    return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05);
  }
  function background(el) {
    for (; el; el = el.parentElement) {
      var c = getComputedStyle(el).backgroundColor, a = channels(c);
      if (a.length === 3 || (a.length === 4 && a[3] > 0)) { return c; }
    }
    return "rgb(255, 255, 255)";
  }
  function ownText(el) {
    return Array.prototype.some.call(el.childNodes, function (n) { return n.nodeType === 3 && n.textContent.trim(); });
  }
  var banner = document.getElementById("verdict-banner"), worst = null, texts = [];
  Array.prototype.forEach.call([banner].concat(Array.prototype.slice.call(banner.querySelectorAll("*"))), function (el) {
    if (!ownText(el)) { return; }
    var style = getComputedStyle(el), back = background(el), alpha = 1;
    for (var up = el; up; up = up.parentElement) { alpha *= parseFloat(getComputedStyle(up).opacity); }
    var ink = channels(style.color), paper = channels(back);  // see-through text: blend it into its background
    var seen = "rgb(" + [0, 1, 2].map(function (i) { return ink[i] * alpha + paper[i] * (1 - alpha); }).join(", ") + ")";
    var ratio = contrast(seen, back);
    texts.push(el.textContent.trim().slice(0, 60));
    if (worst === null || ratio < worst.ratio) {
      worst = {ratio: ratio, text: el.textContent.trim().slice(0, 80), color: seen, background: back};
    }
  });
  var problems = document.getElementById("problems"), blocks = document.querySelectorAll("[data-block]");
  var root = document.documentElement;
  var result = {
    banner_text: banner.innerText,
    worst: worst,
    problems_top: problems ? problems.getBoundingClientRect().top : null,
    first_block: blocks.length ? blocks[0].getAttribute("data-block") : null,
    scroll_width: root.scrollWidth,
    client_width: root.clientWidth,
    wide: Array.prototype.filter.call(document.querySelectorAll("body *"), function (el) {
      return el.getBoundingClientRect().right > root.clientWidth + 1 && !el.closest(".scroll");
    }).slice(0, 5).map(function (el) { return el.tagName + "." + el.className + "#" + el.id; })
  };
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
})();
</script>
"""


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        missing_requirement("chromium is not on PATH; install it with: apt-get install chromium (.ci/system-deps.sh does)")
    assert path is not None
    return path


def browse(page: Path, profile: Path, width: int, *action: str) -> subprocess.CompletedProcess[str]:
    """Run headless chromium on ``page`` at ``width`` with ``action`` (``--dump-dom`` or ``--screenshot=...``)."""
    command = [
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},{HEIGHT}",
        *action,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def screenshot(page: Path, profile: Path, name: str, width: int) -> Path:
    """Render ``page`` to tests/artifacts/<name> and return the PNG's path."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    target.unlink(missing_ok=True)
    browse(page, profile, width, f"--screenshot={target}")
    assert target.is_file() and target.stat().st_size > 10_000, "chromium wrote no real screenshot"
    return target


def probe(page: Path, profile: Path, width: int) -> dict[str, Any]:
    """What a reader of ``page`` sees at ``width``, measured in the browser (see PROBE)."""
    probed = page.with_name(page.stem + ".probe.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = browse(probed, profile, width, "--dump-dom").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, "the probe did not run"
    return dict(
        json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    )


def report_page(run: DrillRun, earlier: list[DrillRun], directory: Path, name: str) -> Path:
    """Write the reports; keep a copy of the HTML next to the screenshots."""
    page = write_reports(run, directory, earlier)["html"]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(page, ARTIFACTS / name)
    return page


def mail_page(run: DrillRun, earlier: list[DrillRun], directory: Path, name: str) -> Path:
    """The mail's HTML part as a file (and a copy next to the screenshots)."""
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / name
    page.write_text(render_email_html(run, earlier), encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(page, ARTIFACTS / name)
    return page


CASES: dict[str, tuple[Callable[[], DrillRun], Callable[[], list[DrillRun]], str]] = {
    "pass": (passing_run, lambda: history(8), "PASS"),
    "fail": (late_run, lambda: history(8), "FAIL"),  # RTO over its objective: once red on the red banner
    "error": (erroring_run, list, "ERROR"),
}


def assert_reads_well(seen: dict[str, Any], verdict: str, width: int) -> None:
    """The banner's figures readable, what went wrong first, nothing wider than the screen."""
    assert verdict in seen["banner_text"] and "RTO" in seen["banner_text"]
    worst = seen["worst"]
    assert worst["ratio"] >= MIN_CONTRAST, f"unreadable in the banner at {width}px: {worst}"
    if verdict != "PASS":
        assert seen["first_block"] == "problems", "what went wrong is not the first thing after the banner"
        assert seen["problems_top"] is not None and seen["problems_top"] < FOLD
    else:
        assert seen["problems_top"] is None
    assert seen["scroll_width"] <= seen["client_width"], f"the page scrolls sideways at {width}px: {seen['wide']}"


@pytest.mark.parametrize("width_name", list(WIDTHS))
@pytest.mark.parametrize("case", list(CASES))
def test_the_report_reads_well_in_a_browser(case: str, width_name: str, tmp_path: Path) -> None:
    make_run, earlier, verdict = CASES[case]
    width = WIDTHS[width_name]
    page = report_page(make_run(), earlier(), tmp_path / "reports", f"drill-report-{case}.html")
    assert_reads_well(probe(page, tmp_path / "profile", width), verdict, width)
    screenshot(page, tmp_path / "profile", f"drill-report-{case}-{width_name}.png", width)


@pytest.mark.parametrize("width_name", list(WIDTHS))
@pytest.mark.parametrize("case", list(CASES))
def test_the_mail_reads_well_in_a_browser(case: str, width_name: str, tmp_path: Path) -> None:
    make_run, earlier, verdict = CASES[case]
    width = WIDTHS[width_name]
    page = mail_page(make_run(), earlier(), tmp_path / "mail", f"drill-mail-{case}.html")
    assert_reads_well(probe(page, tmp_path / "profile", width), verdict, width)
    screenshot(page, tmp_path / "profile", f"drill-mail-{case}-{width_name}.png", width)


def test_a_failed_drill_renders_its_verdict_and_charts(tmp_path: Path) -> None:
    page = report_page(failing_run(), history(8), tmp_path / "reports", "drill-report.html")

    dom = browse(page, tmp_path / "profile", WIDTHS["desktop"], "--dump-dom").stdout
    banner = re.search(r'<header class="banner verdict-fail".*?</header>', dom, re.DOTALL)
    assert banner and "FAIL" in banner.group(0) and "verified and found wrong" in banner.group(0)
    for chart in ("rto-chart", "rpo-chart"):
        svg = re.search(rf'<svg [^>]*id="{chart}"[^>]*data-runs="9"[^>]*>.*?</svg>', dom, re.DOTALL)
        assert svg, f"{chart} is not in the rendered page"
    # 9 runs: RTO has 3 sources + the total, RPO has 3 sources
    assert dom.count('class="point"') == 9 * 4 + 9 * 3
    assert "fingerprint mismatch: features.events partition 202606" in dom

    shot = screenshot(page, tmp_path / "profile", "drill-report.png", WIDTHS["desktop"])
    assert near(pixel(shot, 600, 8), RED), "the FAIL banner is not red on screen"


def test_an_unverified_drill_is_amber_on_screen_never_green(tmp_path: Path) -> None:
    page = report_page(erroring_run(), [], tmp_path / "reports", "drill-report-error.html")
    shot = screenshot(page, tmp_path / "profile", "drill-report-error.png", WIDTHS["desktop"])
    top = pixel(shot, 600, 8)
    assert near(top, AMBER) and not near(top, GREEN)


# --- reading a pixel of chromium's PNG without an imaging library ----------------------------------


def near(color: tuple[int, int, int], expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(color, expected, strict=True))


def pixel(png: Path, x: int, y: int) -> tuple[int, int, int]:
    """The RGB colour at (x, y) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    header, compressed, position = b"", bytearray(), 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        header = body if kind == b"IHDR" else header
        compressed += body if kind == b"IDAT" else b""
        position += 12 + length
    width, _, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color_type in (2, 6) and interlace == 0, "unexpected PNG format"
    channels = 3 if color_type == 2 else 4
    rows = unfilter(zlib.decompress(bytes(compressed)), width * channels, channels, y + 1)
    start = x * channels
    red, green, blue = rows[y][start : start + 3]
    return red, green, blue


def unfilter(raw: bytes, stride: int, bpp: int, count: int) -> list[bytes]:
    """The first ``count`` rows of PNG scanlines with their filters undone (PNG spec, section 9)."""
    rows: list[bytes] = []
    previous = bytes(stride)
    for index in range(count):
        offset = index * (stride + 1)
        kind, line = raw[offset], bytearray(raw[offset + 1 : offset + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, up_left = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                line[i] = (line[i] + paeth(left, up, up_left)) & 0xFF
        previous = bytes(line)
        rows.append(previous)
    return rows


def paeth(a: int, b: int, c: int) -> int:
    estimate = a + b - c
    pa, pb, pc = abs(estimate - a), abs(estimate - b), abs(estimate - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c
