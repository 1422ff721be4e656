"""The HTML report: escaping, relative assets, histograms, and what a real headless Chromium shows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scoring_fixtures import KeywordScorer, candidate, draw_image, fixture_region, hand_made_texts, write_run

from spr.cli import main
from spr.data.jsonl import write_jsonl
from spr.report import marked_text
from spr.report.draw import CHOSEN, REGION, REJECTED
from spr.report.svg import histogram_svg
from spr.scoring import register_semantic_scorer

SCRIPT = (
    'Look: <script>document.title="PWNED";document.body.setAttribute("data-pwned","1")</script> '
    "<img src=x onerror=alert(1)> & <b>bold</b> "
    "<|object_ref_start|>person<|object_ref_end|><|box_start|>(600,50),(700,200)<|box_end|>"
)


def make_report(root: Path) -> Path:
    """A scored run whose rejected description carries markup and a script; returns the run directory."""
    register_semantic_scorer("keywords", lambda **_: KeywordScorer())
    run, ids = write_run(root, extra=[("script", SCRIPT)], names=("precise", "near"))
    files = ["--regions", str(run / "regions.jsonl"), "--candidates", str(run / "candidates.jsonl")]
    assert main(["score", *files, "--out", str(run / "scores.jsonl"), "--semantic", "keywords"]) == 0
    assert (
        main(["pairs", *files, "--scores", str(run / "scores.jsonl"), "--out", str(run / "pairs.jsonl")]) == 0
    )
    assert main(["report", "--run", str(run)]) == 0
    pair = json.loads((run / "pairs.jsonl").read_text())
    assert (pair["chosen_id"], pair["rejected_id"]) == (ids["precise"] + "#refined", ids["script"])
    return run


def test_marked_text_escapes_everything_and_marks_boxes():
    text = "a <b>cat</b> [1, 2, 3, 4] & more"
    html = marked_text(text, [{"span": [13, 25]}, {"span": [99, 120]}, {"span": "bad"}])
    assert html == 'a &lt;b&gt;cat&lt;/b&gt; <span class="box">[1, 2, 3, 4]</span> &amp; more'
    assert "empty text" in marked_text("", [])


def test_histogram_counts_values():
    svg = histogram_svg("t", {"a": ([0.0, 0.01, 0.99, float("nan")], "#000"), "b": ([], "#111")}, bins=10)
    bars = re.findall(r"<title>a: (\d+) in", svg)
    assert sorted(int(b) for b in bars) == [1, 2]
    assert "(n=3)" in svg and "(n=0)" in svg


def test_report_is_self_contained_and_escaped(tmp_path):
    run = make_report(tmp_path / "run")
    html = (run / "report.html").read_text()
    assert "<script" not in html and "&lt;script&gt;" in html and "<b>bold" not in html
    assert str(tmp_path) not in html  # no absolute path: the directory can move
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all((run / s).exists() for s in srcs)
    assert Image.open(run / srcs[0]).size == (480, 360)  # a small thumbnail, not the image
    assert "chosen" in html and "rejected" in html and "<svg" in html
    assert main(["report", "--run", str(tmp_path / "nowhere")]) == 2


def test_report_shows_one_block_per_prompt_with_a_pair(tmp_path):
    register_semantic_scorer("keywords", lambda **_: KeywordScorer())
    region = fixture_region(draw_image(tmp_path / "images" / "scene.png"))
    texts = hand_made_texts()
    cands = [
        candidate(region, n, texts[n], i, prompt_id=p)
        for i, (p, n) in enumerate([("p0", "precise"), ("p0", "vague"), ("p1", "near"), ("p1", "invented")])
    ]
    write_jsonl(tmp_path / "regions.jsonl", [region])
    write_jsonl(tmp_path / "candidates.jsonl", cands)
    files = ["--regions", str(tmp_path / "regions.jsonl"), "--candidates", str(tmp_path / "candidates.jsonl")]
    assert main(["score", *files, "--out", str(tmp_path / "scores.jsonl"), "--semantic", "keywords"]) == 0
    assert main(["report", "--run", str(tmp_path)]) == 0  # no pairs file: pairs computed from the scores
    html = (tmp_path / "report.html").read_text()
    assert re.findall(r'<section class="region" id="([^"]+)"', html) == ["img1/r0/p0", "img1/r0/p1"]
    assert html.count("all 4 scored texts of this prompt") == 2
    assert "pairs computed from the scores" in html
    assert len(list((tmp_path / "report_files").iterdir())) == 2


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(*args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp()}",
    ]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def near(pixels: np.ndarray, rgb, tol: int = 30) -> int:
    return int((np.abs(pixels.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


@pytest.mark.browser
@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_boxes_and_shows_script_as_text_in_chromium(tmp_path):
    built = make_report(tmp_path / "built")
    moved = tmp_path / "moved"
    shutil.copytree(built, moved)
    shutil.rmtree(built)  # the original images are gone too: the page must stand on its own files
    url = (moved / "report.html").as_uri()

    shot = tmp_path / "shot.png"
    run_chromium(f"--screenshot={shot}", "--window-size=1200,1400", url)
    assert shot.exists(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # legends hold about 230 pixels of each colour; the drawn boxes several hundred more
    assert near(pixels, CHOSEN) > 1000, "chosen boxes not drawn"
    assert near(pixels, REJECTED) > 500, "rejected box not drawn"
    assert near(pixels, REGION) > 500, "region box not drawn"

    dom = run_chromium("--dump-dom", url).stdout
    assert "&lt;script&gt;document.title" in dom  # shown as text
    assert "<script" not in dom.lower()  # no script element ever made it into the page
    assert "data-pwned" not in dom.split("&lt;script&gt;")[0] and "<title>PWNED" not in dom
    assert '<img src="x"' not in dom and "&lt;img src=x onerror=alert(1)&gt;" in dom
