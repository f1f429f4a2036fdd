"""The HTML drill report in a real browser (Debian's headless chromium): the verdict and the charts
render, and the banner has the verdict's colour on screen. The screenshots are kept as test
artifacts under tests/artifacts/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from helpers import missing_requirement
from report_samples import erroring_run, failing_run, history

from drills.model import DrillRun
from drills.report import write_reports

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
]
WINDOW = (1200, 1600)
BROWSER_TIMEOUT = 60
RED, AMBER, GREEN = (0xCF, 0x22, 0x2E), (0xF0, 0xA3, 0x0A), (0x1A, 0x7F, 0x37)


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        missing_requirement("chromium is not on PATH; install it with: apt-get install chromium (.ci/system-deps.sh does)")
    assert path is not None
    return path


def browse(page: Path, profile: Path, *action: str) -> subprocess.CompletedProcess[str]:
    """Run headless chromium on ``page`` with ``action`` (``--dump-dom`` or ``--screenshot=...``)."""
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def screenshot(page: Path, profile: Path, name: str) -> Path:
    """Render ``page`` to tests/artifacts/<name> and return the PNG's path."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    target.unlink(missing_ok=True)
    browse(page, profile, f"--screenshot={target}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
    assert target.is_file() and target.stat().st_size > 10_000, "chromium wrote no real screenshot"
    return target


def report_page(run: DrillRun, earlier: list[DrillRun], directory: Path, name: str) -> Path:
    """Write the reports; keep a copy of the HTML next to the screenshots."""
    page = write_reports(run, directory, earlier)["html"]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(page, ARTIFACTS / name)
    return page


def test_a_failed_drill_renders_its_verdict_and_charts(tmp_path: Path) -> None:
    page = report_page(failing_run(), history(8), tmp_path / "reports", "drill-report.html")

    dom = browse(page, tmp_path / "profile", "--dump-dom").stdout
    banner = re.search(r'<header class="banner verdict-fail".*?</header>', dom, re.DOTALL)
    assert banner and "FAIL" in banner.group(0) and "verified and found wrong" in banner.group(0)
    for chart in ("rto-chart", "rpo-chart"):
        svg = re.search(rf'<svg [^>]*id="{chart}"[^>]*data-runs="9"[^>]*>.*?</svg>', dom, re.DOTALL)
        assert svg, f"{chart} is not in the rendered page"
    # 9 runs: RTO has 3 sources + the total, RPO has 3 sources
    assert dom.count('class="point"') == 9 * 4 + 9 * 3
    assert "fingerprint mismatch: features.events partition 202606" in dom

    shot = screenshot(page, tmp_path / "profile", "drill-report.png")
    assert near(pixel(shot, 600, 8), RED), "the FAIL banner is not red on screen"


def test_an_unverified_drill_is_amber_on_screen_never_green(tmp_path: Path) -> None:
    page = report_page(erroring_run(), [], tmp_path / "reports", "drill-report-error.html")
    shot = screenshot(page, tmp_path / "profile", "drill-report-error.png")
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
