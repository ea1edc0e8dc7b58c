"""The fleet evaluation's reports (sfnet_ros/tools/fleet/report_html.py, report_markdown.py).

The HTML page must work offline as one file, escape every string of the summary (bag names and
failure reasons come from files), hold every strip as a data URI and show only the sections the
summary has data for. A real headless Chromium then loads it: no console errors, every picture
decodes and every chart has a size, and a screenshot is not blank. Each browser check has a
negative control (a broken page it must reject), so a check that cannot fail is not mistaken for
a pass. Without Chromium those tests skip (``.ci/install_browser.sh`` installs it as root).
"""
from __future__ import annotations

import base64
import html
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from sfnet_core.data.classes import ClassTable
from sfnet_core.viz import colorize, image_strip
from sfnet_ros.tools.fleet.report_html import render_html
from sfnet_ros.tools.fleet.report_markdown import render_markdown

TABLE = ClassTable.cityscapes()
NAMES = list(TABLE.names)
BAG_A = "drive<b>1</b>&co.mcap"  # markup and an ampersand: must come out escaped everywhere
BAG_B = "drive2.mcap"
CAMERAS = ("front", "left")
REASON = 'not a bag: <script>alert("x")</script> & more'
ABSENT = "train"  # no pixels anywhere: IoU null


def _strip_png(seed: int) -> str:
    """A small realistic strip (input | ground truth | prediction | errors) as base64 PNG."""
    rng = np.random.default_rng(seed)
    h, w = 64, 128
    gt = np.zeros((h, w), np.uint8)  # road below, building, sky on top, a car and a person
    gt[: h // 4], gt[h // 4: h // 2] = NAMES.index("sky"), NAMES.index("building")
    gt[h // 2 + 8: h - 12, 20:60] = NAMES.index("car")
    gt[h // 3: h - 10, 90:98] = NAMES.index("person")
    pred = gt.copy()
    y, x = rng.integers(0, h - 16), rng.integers(0, w - 32)
    pred[y: y + 16, x: x + 32] = NAMES.index("sidewalk")
    image = np.clip(colorize(gt, TABLE.palette()) * 0.7 + rng.integers(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
    errors = np.zeros((h, w, 3), np.uint8)
    errors[gt != pred] = (255, 0, 0)
    strip = image_strip([image, colorize(gt, TABLE.palette()), colorize(pred, TABLE.palette()), errors],
                        ["input", "ground truth", "prediction", "errors"])
    ok, png = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(png.tobytes()).decode("ascii")


def _per_class(rng: np.random.Generator, shift: float = 0.0) -> dict[str, float | None]:
    return {n: None if n == ABSENT else round(float(np.clip(rng.uniform(0.3, 0.97) + shift, 0, 1)), 4) for n in NAMES}


def _confusion(rng: np.random.Generator) -> list[list[int]]:
    c = len(NAMES)
    matrix = rng.integers(0, 2000, (c, c)) + np.diag(rng.integers(50_000, 400_000, c))
    matrix[NAMES.index(ABSENT)] = 0
    matrix[:, NAMES.index(ABSENT)] = 0
    return matrix.tolist()


def make_summary(labelled: bool = True, compare: bool = True) -> dict[str, Any]:
    """A summary as ``sfnet-fleet-eval`` writes it (summary_schema.md): 2 bags x 2 cameras of 40
    frames, 4 worst-frame strips, 2 failed bags and (optionally) an A/B block with a failed gate."""
    rng = np.random.default_rng(0)
    miou = (lambda: round(float(rng.uniform(0.4, 0.8)), 4)) if labelled else (lambda: None)
    frames = 40
    groups = [{"kind": "bag_camera", "bag": b, "camera": c, "frames": frames, "labelled_frames": frames * labelled,
               "miou": miou(), "pixel_accuracy": miou(), "per_class_iou": _per_class(rng),
               "uncertainty": round(float(rng.uniform(0.05, 0.2)), 4)} for b in (BAG_A, BAG_B) for c in CAMERAS]
    groups += [{"kind": "bag", "bag": b, "camera": None, "frames": 2 * frames, "labelled_frames": 2 * frames * labelled,
                "miou": miou(), "pixel_accuracy": miou(), "per_class_iou": _per_class(rng), "uncertainty": 0.1}
               for b in (BAG_A, BAG_B)]
    groups += [{"kind": "camera", "bag": None, "camera": c, "frames": 2 * frames,
                "labelled_frames": 2 * frames * labelled, "miou": miou(), "pixel_accuracy": miou(),
                "per_class_iou": _per_class(rng), "uncertainty": 0.1} for c in CAMERAS]
    times = [round(0.1 * i, 1) for i in range(frames)]
    timeline = []
    for b in (BAG_A, BAG_B):
        for c in CAMERAS:
            values = [round(float(v), 3) for v in 0.6 + 0.2 * np.sin(np.arange(frames) / 5)]
            frame_miou: list[float | None] | None = [None if 12 <= i < 15 else v for i, v in enumerate(values)]
            timeline.append({"bag": b, "camera": c, "time_s": times, "miou": frame_miou if labelled else None,
                             "uncertainty": [round(0.1 + 0.05 * float(rng.random()), 3) for _ in times]})
    worst = [{"bag": (BAG_A, BAG_B)[i % 2], "camera": CAMERAS[i // 2], "stamp_ns": 1_700_000_000_000_000_000 + i,
              "time_s": 0.1 * (3 + 7 * i), "miou": (0.2 + 0.05 * i) if labelled else None,
              "uncertainty": 0.4 - 0.02 * i, "strip_png": _strip_png(i),
              "strip_caption": "input | ground truth | prediction | errors (red)"} for i in range(4)]
    summary: dict[str, Any] = {
        "tool": "sfnet-fleet-eval", "version": 1, "created": "2026-12-07T08:00:00Z",
        "model": {"path": "runs/quick/best.pt", "name": "sfnet_resnet18", "backend": "torch fp32 on cpu"},
        "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(zip(TABLE.names, TABLE.colors))],
        "ignore_index": 255, "labelled": labelled,
        "overall": {"frames": 160, "labelled_frames": 160 * labelled, "pixels": 5_242_880,
                    "miou": 0.61 if labelled else None, "pixel_accuracy": 0.93 if labelled else None,
                    "mean_accuracy": 0.7 if labelled else None,
                    "per_class_iou": _per_class(rng) if labelled else dict.fromkeys(NAMES),
                    "uncertainty": 0.12},
        "groups": groups, "confusion": _confusion(rng) if labelled else None, "timeline": timeline,
        "worst_frames": worst,
        "uncertain_frames": [{"bag": BAG_A, "camera": "front", "stamp_ns": 1_700_000_000_000_000_000 + i,
                              "time_s": 0.1 * i, "uncertainty": 0.5 - 0.01 * i} for i in range(10)],
        "class_uncertainty": {n: None if n == ABSENT else round(float(rng.uniform(0.01, 0.3)), 3) for n in NAMES},
        "speed": {"frames": 160, "wall_s": 12.3, "fps": 13.0, "model_ms_p50": 40.1, "model_ms_p99": 55.0,
                  "workers": 2, "device": "cpu", "backend": "torch fp32 on cpu", "cpu": "AMD EPYC (avx2 fma)"},
        "failed": [{"bag": "broken.mcap", "reason": REASON}, {"bag": "empty.mcap", "reason": "no image topic"}],
        "compare": None,
    }
    if compare:
        deltas: dict[str, dict[str, float] | None] = {
            n: {"value": 0.01, "low": -0.02, "high": 0.03} for n in NAMES}
        deltas["person"] = {"value": -0.05, "low": -0.08, "high": -0.02}  # entirely below 0: red
        deltas["road"] = {"value": 0.02, "low": 0.01, "high": 0.03}  # entirely above 0: green
        deltas[ABSENT] = None
        summary["compare"] = {
            "baseline": {"path": "runs/old/best.pt", "name": "sfnet_old", "backend": "torch fp32 on cpu"},
            "baseline_overall": {**summary["overall"], "miou": 0.59, "per_class_iou": _per_class(rng, -0.02)},
            "delta_miou": {"value": 0.02, "low": -0.01, "high": 0.05}, "delta_per_class": deltas,
            "resampled": "drives", "resamples": 1000,
            "gate": {"classes": ["person", "car"], "max_drop": 0.01, "failed": ["person"], "passed": False},
            "disagreements": [{"bag": BAG_B, "camera": "left", "stamp_ns": 1_700_000_000_500_000_000 + i,
                               "time_s": 0.5 + i, "disagree_fraction": 0.2 - 0.05 * i, "strip_png": _strip_png(10 + i),
                               "strip_caption": "input | baseline | candidate | differs (white)"} for i in range(2)],
        }
    return summary


class _Tags(HTMLParser):
    """The tag names of a page and its text (entities decoded), as a browser would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


def _section(page: str, sid: str) -> str:
    """The HTML of ``<section id=sid>`` (sections do not nest)."""
    match = re.search(rf'<section id="{sid}"[^>]*>(.*?)</section>', page, re.S)
    assert match, f"no section {sid}"
    return match.group(1)


@pytest.fixture(scope="module")
def summary() -> dict[str, Any]:
    return make_summary()


@pytest.fixture(scope="module")
def page(summary: dict[str, Any]) -> str:
    return render_html(summary)


# --- the HTML itself ---------------------------------------------------------------------------

def test_html_is_self_contained(page: str) -> None:
    """Nothing is fetched: no scripts at all, no external stylesheets, fonts or images."""
    lowered = page.lower()
    for needle in ('src="http', "src='http", "<link", "<script", "@import", "url(", "@font-face", 'href="http',
                   "<iframe", "<object", "<embed"):
        assert needle not in lowered, needle
    assert re.findall(r'src="([^"]*)"', page) and all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page


def test_html_escapes_every_summary_string(page: str) -> None:
    escaped = html.escape(BAG_A)
    assert escaped == "drive&lt;b&gt;1&lt;/b&gt;&amp;co.mcap"
    assert escaped in page and BAG_A not in page
    assert html.escape(REASON) in page and "alert(" in page and "<script" not in page
    parsed = _parse(page)
    assert not parsed.tags & {"script", "link", "iframe", "object", "embed", "style_injected"}
    text = "".join(parsed.text)
    # what the reader sees is the original text, in the tables, the captions and the chart titles
    assert text.count(BAG_A) >= 10 and REASON in text
    for shown in ("sfnet_resnet18", "runs/quick/best.pt", "sfnet_old", "AMD EPYC (avx2 fma)", "traffic light"):
        assert shown in text, shown


def test_html_every_strip_is_an_inline_png(summary: dict[str, Any], page: str) -> None:
    strips = summary["worst_frames"] + summary["compare"]["disagreements"]
    for item in strips:
        assert f'src="data:image/png;base64,{item["strip_png"]}"' in page
        assert base64.b64decode(item["strip_png"]).startswith(b"\x89PNG")
    assert page.count("<img ") == len(strips)


def test_html_sections_and_figures(summary: dict[str, Any], page: str) -> None:
    for sid in ("failed", "overall", "compare", "groups", "class-iou", "confusion", "timeline", "worst", "uncertain",
                "class-uncertainty", "speed"):
        assert f'<section id="{sid}"' in page, sid
        assert f'href="#{sid}"' in page or sid == "failed"
    assert "61.0 %" in _section(page, "overall") and "93.0 %" in _section(page, "overall")
    # per-class IoU: a swatch per class in its colour, null as a dash
    iou = _section(page, "class-iou")
    assert iou.count('class="sw"') == len(NAMES) and "background:rgb(128,64,128)" in iou
    assert re.search(rf"{ABSENT}</td><td class=\"n\">–</td>", iou)
    # groups: 4 bag x camera rows, 2 per bag, 2 per camera
    assert _section(page, "groups").count("<tr>") == 3 + 4 + 2 + 2
    # confusion: C x C cells, row-normalised, the absent class's row empty
    cm = _section(page, "confusion")
    assert cm.count("<td class=\"diag\"") == len(NAMES) and cm.count("background:rgba(") == len(NAMES) ** 2
    # one chart per drive; the 3-frame gap in each mIoU line splits it in two polylines
    charts = _section(page, "timeline")
    assert charts.count("<svg ") == 4 and charts.count("<polyline") == 4 * 3
    assert charts.count("worst frame, t =") == len(summary["worst_frames"])
    assert _section(page, "worst").count("<figure>") == 4 and "uncertainty 0.400" in _section(page, "worst")
    assert _section(page, "uncertain").count("<tr>") == 1 + 10
    assert "13.0 frames/s" in _section(page, "speed") and "55.0 ms" in _section(page, "speed")
    assert "2 bag(s) failed" in _section(page, "failed")


def test_html_compare_section(page: str) -> None:
    ab = _section(page, "compare")
    assert "Gate FAILED: person dropped by more than 1.0 pp" in ab and 'class="gate fail"' in ab
    assert "Δ mIoU +2.0 pp [-1.0 pp, +5.0 pp]" in ab and "no significant change" in ab
    assert re.search(r'<tr class="worse"><td><span class="sw"[^>]*></span>person</td>', ab)
    assert re.search(r'<tr class="better"><td><span class="sw"[^>]*></span>road</td>', ab)
    assert ab.count('class="worse"') == 1 and ab.count('class="better"') == 1
    assert ab.count("<figure>") == 2 and "20.0 % of pixels differ" in ab
    passed = make_summary()
    passed["compare"]["gate"] = {"classes": ["car"], "max_drop": 0.01, "failed": [], "passed": True}
    assert "Gate PASSED" in render_html(passed)
    passed["compare"]["gate"] = None
    assert "No gate was set" in render_html(passed)


def test_html_unlabelled_and_without_compare() -> None:
    page = render_html(make_summary(labelled=False, compare=False))
    assert "No labels" in page
    for sid in ("class-iou", "confusion", "compare"):
        assert f'id="{sid}"' not in page, sid
    assert "mIoU</th>" not in _section(page, "groups") and "highest uncertainty (no labels)" in page
    assert _section(page, "timeline").count("<polyline") == 4  # uncertainty only
    for sid in ("worst", "uncertain", "class-uncertainty", "speed", "failed"):
        assert f'<section id="{sid}"' in page
    assert "<script" not in page.lower()


# --- Markdown -----------------------------------------------------------------------------------

def test_markdown_summary(summary: dict[str, Any]) -> None:
    md = render_markdown(summary)
    assert md.startswith("### Fleet evaluation: sfnet_resnet18\n")  # an underscore inside a word stays plain
    assert "mIoU **61.0 %** · 160 frames (160 labelled)" in md and "2 failed bags" in md
    assert "| bag | camera | frames | mIoU | uncertainty |" in md
    rows = [line for line in md.splitlines() if line.startswith("| drive2.mcap |")]
    assert len(rows) == 3 and rows[0].startswith("| drive2.mcap | front | 40 | ")  # 2 cameras, then the bag row
    assert "| all | left | 80 |" in md
    assert "drive\\<b\\>1\\</b\\>\\&co.mcap" in md and BAG_A not in md  # escaped, table intact
    assert all(line.count("|") - line.count("\\|") == 6 for line in md.splitlines() if line.startswith("|"))
    worst = next(line for line in md.splitlines() if line.startswith("Worst classes: "))
    per_class = summary["overall"]["per_class_iou"]
    lowest = sorted((v, n) for n, v in per_class.items() if v is not None)[:5]
    assert worst == "Worst classes: " + ", ".join(f"{n} {100 * v:.1f} %" for v, n in lowest)
    assert "- broken.mcap: not a bag: \\<script\\>" in md
    assert "Δ mIoU **+2.0 pp** [-1.0 pp, +5.0 pp]" in md
    assert "Gate: **FAILED**: person dropped by more than 1.0 pp" in md
    assert "base64" not in md and "data:" not in md and len(md) < 3000


def test_markdown_unlabelled_without_compare() -> None:
    md = render_markdown(make_summary(labelled=False, compare=False))
    assert "**no labels**" in md and "Worst classes" not in md and "Gate" not in md and "| – |" in md


# --- a real browser ----------------------------------------------------------------------------

_BROWSER_NAMES = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")
_BROWSER_PATHS = ("/usr/lib/chromium/chromium-headless-shell",  # Debian's packages, where not on PATH
                  "/usr/lib/chromium-headless-shell/chromium-headless-shell", "/usr/lib/chromium/chromium")
# Chromium's --enable-logging=stderr lines for page trouble: console messages (the report has no
# script, so any is an error), uncaught exceptions, failed loads and network errors.
_CONSOLE_ERROR = re.compile(r":CONSOLE|Uncaught|Failed to load resource|\bERR_[A-Z_]+")
# Appended to a test-side copy of the page: once everything has loaded, every picture must have
# decoded and every chart must take up space; the verdict lands in the DOM that --dump-dom prints.
_VERDICT = """<script>
window.addEventListener("load", () => {
  const bad = [];
  const imgs = Array.from(document.images), svgs = Array.from(document.querySelectorAll("svg"));
  imgs.forEach((img, i) => { if (!(img.complete && img.naturalWidth > 0)) bad.push("img" + i); });
  svgs.forEach((svg, i) => {
    const r = svg.getBoundingClientRect();
    if (!(r.width > 0 && r.height > 0)) bad.push("svg" + i);
  });
  const div = document.createElement("div");
  div.id = "verdict";
  div.textContent = (bad.length ? "FAIL " + bad.join(",") : "OK") + " imgs=" + imgs.length + " svgs=" + svgs.length;
  document.body.appendChild(div);
});
</script>"""


def _find_browser() -> str | None:
    for name in _BROWSER_NAMES:
        if found := shutil.which(name):
            return found
    return next((p for p in _BROWSER_PATHS if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser() -> str:
    found = _find_browser()
    if found is None:
        pytest.skip("no Chromium: install Debian's chromium-headless-shell (make test does as root, "
                    f".ci/install_browser.sh); looked for {', '.join(_BROWSER_NAMES)} on PATH and in /usr/lib")
    return found


def _run_browser(browser: str, profile: Path, page: Path, *args: str) -> tuple[str, str]:
    """Run headless Chromium once on ``page``; (stdout, stderr). Killed with its children after 60 s."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions", *args, page.as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{browser} did not finish within 60 s on {page.name}:\n{err[-2000:]}")
    assert proc.returncode == 0, f"{browser} exited {proc.returncode}:\n{err[-2000:]}"
    return out, err


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if _CONSOLE_ERROR.search(line)]


def _write(path: Path, page: str, before_body_end: str = "") -> Path:
    path.write_text(page.replace("</body>", before_body_end + "</body>"), encoding="utf-8")
    return path


def test_browser_loads_the_page_without_console_errors(browser: str, page: str, tmp_path: Path) -> None:
    out, err = _run_browser(browser, tmp_path / "p1", _write(tmp_path / "report.html", page), "--dump-dom")
    assert "Fleet evaluation: sfnet_resnet18" in out and BAG_A not in out
    assert _console_errors(err) == [], err
    # negative control: a page that does log an error is caught
    bad = _write(tmp_path / "bad.html", page, '<script>console.error("x")</script>')
    _, err = _run_browser(browser, tmp_path / "p2", bad, "--dump-dom")
    assert _console_errors(err), f"an error the check did not see:\n{err}"


def _verdict(browser: str, profile: Path, path: Path) -> str:
    out, _ = _run_browser(browser, profile, path, "--virtual-time-budget=5000", "--dump-dom")
    match = re.search(r'<div id="verdict">([^<]*)</div>', out)
    assert match, f"no verdict (the load event did not run?):\n{out[-2000:]}"
    return match.group(1)


def test_browser_decodes_every_image_and_sizes_every_chart(
        browser: str, summary: dict[str, Any], page: str, tmp_path: Path) -> None:
    n_imgs = len(summary["worst_frames"]) + len(summary["compare"]["disagreements"])
    verdict = _verdict(browser, tmp_path / "p1", _write(tmp_path / "checked.html", page, _VERDICT))
    assert verdict == f"OK imgs={n_imgs} svgs={len(summary['timeline'])}"
    # negative control: an image that does not decode fails the verdict
    broken = _write(tmp_path / "broken.html", page, '<img src="data:image/png;base64,AAAA" alt="broken">' + _VERDICT)
    assert _verdict(browser, tmp_path / "p2", broken) == f"FAIL img{n_imgs} imgs={n_imgs + 1} svgs=4"


def test_browser_screenshot_is_not_blank(browser: str, page: str, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _run_browser(browser, tmp_path / "p1", _write(tmp_path / "report.html", page),
                 f"--screenshot={shot}", "--window-size=1280,2400")
    image = cv2.imread(str(shot))
    assert image is not None, f"no decodable screenshot at {shot}"
    assert image.shape[:2] == (2400, 1280)
    colours = len(np.unique(image.astype(np.int32) @ np.array([1, 256, 65536], np.int32)))  # 0.1 s; axis=0: 8 s
    assert image.std() > 20 and colours > 100, (image.std(), colours)
    # the failed bags' red box is near the top
    reddish = (image[:800, :, 2] > 150) & (image[:800, :, 1] < 80) & (image[:800, :, 0] < 80)
    assert reddish.sum() > 500
