"""The HTML report: escaping, relative assets, histograms, and what a real headless Chromium shows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html import escape, unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scoring_fixtures import (
    OBJECTS,
    SIZE,
    candidate,
    draw_image,
    fixture_region,
    hand_made_texts,
    qwen_text,
    write_run,
)

from spr import formats
from spr.cli import main
from spr.data.jsonl import write_jsonl
from spr.report import marked_text, readable_text
from spr.report.cells import css
from spr.report.draw import REFERENCE, REGION, box_colour
from spr.report.svg import histogram_svg

SCRIPT = (
    'Look: <script>document.title="PWNED";document.body.setAttribute("data-pwned","1")</script> '
    "<img src=x onerror=alert(1)> & <b>bold</b> "
    "<|object_ref_start|>person<|object_ref_end|><|box_start|>(600,50),(700,200)<|box_end|>"
)


def make_report(root: Path, extra=()) -> Path:
    """A scored run whose rejected description carries markup and a script; returns the run directory."""
    run, ids = write_run(root, extra=[("script", SCRIPT), *extra], names=("precise", "near"))
    files = ["--regions", str(run / "regions.jsonl"), "--candidates", str(run / "candidates.jsonl")]
    assert main(["score", *files, "--out", str(run / "scores.jsonl"), "--semantic", "keywords"]) == 0
    assert (
        main(["pairs", *files, "--scores", str(run / "scores.jsonl"), "--out", str(run / "pairs.jsonl")]) == 0
    )
    assert main(["report", "--run", str(run)]) == 0
    pair = json.loads((run / "pairs.jsonl").read_text())
    assert pair["chosen_id"] == ids["precise"] + "#refined"
    assert extra or pair["rejected_id"] == ids["script"]
    return run


def write_results(run: Path, **extra) -> Path:
    """results.json in the schema `spr report` reads: three models, one metric missing from the last."""
    rounds = {
        "base": {"acc@0.5": 0.73, "acc@0.6": 0.68, "acc@0.7": 0.58, "acc@0.8": 0.31, "acc@0.9": 0.05,
                 "mean_iou": 0.60, "description_f1@0.5": 0.57, "description_f1@0.75": 0.23},
        "round 1": {"acc@0.5": 0.76, "acc@0.6": 0.72, "acc@0.7": 0.63, "acc@0.8": 0.40, "acc@0.9": 0.09,
                    "acc@0.95": 0.01, "mean_iou": 0.63, "description_f1@0.5": 0.61, "description_f1@0.75": 0.29},
        "<i>round 2</i>": {"acc@0.5": 0.77, "acc@0.6": 0.73, "acc@0.7": 0.66, "acc@0.8": 0.44, "acc@0.9": 0.12,
                           "mean_iou": 0.65, "description_f1@0.5": 0.60},
    }  # fmt: skip
    data = {
        "eval": {"split": "test", "rec_n": 346, "description_n": 150, "note": "held-out <b>scenes</b>"},
        "models": rounds,
        **extra,
    }
    path = run / "results.json"
    path.write_text(json.dumps(data))
    return path


def text_cells(html: str) -> list[str]:
    """The text column of every all-scores table, as a reader sees it (tags removed, entities decoded)."""
    return [
        unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r'<td class="text">(.*?)</td>', html, re.S)
    ]


def test_marked_text_escapes_everything_and_marks_boxes():
    text = "a <b>cat</b> [1, 2, 3, 4] & more"
    groundings = [{"span": [13, 25], "box": [1, 2, 3, 4]}, {"span": [99, 120]}, {"span": "bad"}]
    html = marked_text(text, groundings, coloured=False)
    assert html == 'a &lt;b&gt;cat&lt;/b&gt; <span class="box">[1, 2, 3, 4]</span> &amp; more'
    coloured = marked_text(text, groundings)
    assert (
        f"border-bottom-color:{css(box_colour(0))}" in coloured
        and 'title="box 1: [1, 2, 3, 4] px' in coloured
    )
    assert unescape(re.sub(r"<[^>]+>", "", coloured)) == text  # whole: nothing cut
    assert "empty text" in marked_text("", [])


def test_readable_text_makes_each_phrase_a_chip_in_its_box_colour():
    text = (
        "In <b>it</b>: <|object_ref_start|>a cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|> and "
        "<|object_ref_start|>two dogs<|object_ref_end|><|box_start|>(5,6),(7,8)<|box_end|>"
        "<|box_start|>(9,9),(12,12)<|box_end|>."
    )
    spans = [(m.start(), m.end()) for m in re.finditer(r"<\|box_start\|>.*?<\|box_end\|>", text)]
    groundings = [
        {"phrase": "a cat", "box": [10, 20, 30, 40], "span": list(spans[0])},
        {"phrase": "two dogs", "box": [50, 60, 70, 80], "span": list(spans[1])},
        {"phrase": "two dogs", "box": [90, 90, 120, 120], "span": list(spans[2])},
        {"phrase": "ghost", "box": [1, 1, 5, 5], "span": None},  # no place in the text: listed after it
        {"phrase": "broken", "box": [5, 5, 1, 1], "span": None},  # not a box: no chip, no colour
    ]
    html = readable_text(text, groundings)
    assert html.count('class="chip"') == 4
    for k in range(4):
        assert f"background:{css(box_colour(k))}" in html
    assert "box_start" not in html and "object_ref" not in html  # codec markup gone from the readable text
    assert "&lt;b&gt;it&lt;/b&gt;" in html  # any other markup is shown, escaped
    assert 'title="box 1 (a cat): [10, 20, 30, 40] px in the image; written as (1,2),(3,4)"' in html
    plain = unescape(re.sub(r"<[^>]+>", "", html))
    assert plain.startswith("In <b>it</b>: 1a cat and 2two dogs3.") and "4ghost" in plain
    assert "empty text" in readable_text("   ", [])


@pytest.mark.parametrize(
    "fmt", ["qwen2_vl", "shikra", "internvl", "cogvlm", "kosmos2", "paligemma", "florence2"]
)
def test_readable_text_leaves_no_box_string_in_any_format(fmt):
    text = formats.render(
        [("a dog", (10, 20, 100, 200)), ("two cats", (150, 50, 300, 250))], fmt, image_size=SIZE
    )
    html = readable_text(text, [g.to_dict() for g in formats.parse(text, fmt, image_size=SIZE)])
    plain = unescape(re.sub(r"<[^>]+>", "", re.sub(r'<span class="num">\d+</span>', "", html)))
    assert plain.count("a dog") == 1 and plain.count("two cats") == 1, plain
    assert not re.search(r"[0-9\[\]<>{}]", plain), plain  # no coordinates, brackets or codec markup left
    assert html.count('class="chip"') == 2


def test_histogram_counts_values_and_keeps_its_legend_off_the_bars():
    svg = histogram_svg("t", {"a": ([0.0, 0.01, 0.99, float("nan")], "#000"), "b": ([], "#111")}, bins=10)
    bars = re.findall(r"<title>a: (\d+) in", svg)
    assert sorted(int(b) for b in bars) == [1, 2]
    assert "(n=3)" in svg and "(n=0)" in svg
    bar_tops = [float(y) for y in re.findall(r'<rect x="[^"]+" y="([^"]+)" width="[^"]+" height="[^"]+" fill="[^"]+" '
                                             r'fill-opacity', svg)]  # fmt: skip
    plot_top = min(float(y) for y in re.findall(r'<line x1="34" y1="([0-9.]+)" x2="34"', svg))
    legend_ys = [float(y) for y in re.findall(r'<text x="[^"]+" y="([0-9.]+)" font-size="10">[ab] \(n=', svg)]
    assert len(legend_ys) == 2 and max(legend_ys) < plot_top <= min(bar_tops)


def test_report_is_self_contained_and_escaped(tmp_path):
    run = make_report(tmp_path / "run")
    html = (run / "report.html").read_text()
    assert "<script" not in html and "&lt;script&gt;" in html and "<b>bold" not in html
    assert "default-src 'none'" in html and "script-src" not in html  # the CSP forbids scripts
    assert str(tmp_path) not in html  # no absolute path: the directory can move
    srcs = re.findall(r'<img class="view" src="([^"]+)"', html)
    hrefs = re.findall(r'<a href="([^"]+)" title="open the image', html)
    assert len(srcs) == len(hrefs) == 2 and all((run / s).exists() for s in srcs + hrefs)
    assert Image.open(run / srcs[0]).size == (400, 300)  # 640x480 shown at 400 px, enlarged at twice its size
    assert Image.open(run / hrefs[0]).size == (1280, 960)
    assert "chosen" in html and "rejected" in html and "<svg" in html
    assert "No results: results.json not found" in html
    assert main(["report", "--run", str(tmp_path / "nowhere")]) == 2


def test_each_pair_shows_chosen_and_rejected_on_their_own_images(tmp_path):
    run = make_report(tmp_path / "run")
    pair = json.loads((run / "pairs.jsonl").read_text())
    html = (run / "report.html").read_text()
    section = re.search(r'<section class="region".*?</section>', html, re.S).group(0)
    sides = re.findall(r'<div class="side (chosen|rejected)">.*?<img class="view" src="([^"]+)" '
                       r'width="(\d+)" height="(\d+)"', section, re.S)  # fmt: skip
    assert [s[0] for s in sides] == ["chosen", "rejected"]
    assert all(max(int(w), int(h)) >= 320 for _, _, w, h in sides)
    chosen = np.asarray(Image.open(run / sides[0][1]).convert("RGB"))
    rejected = np.asarray(Image.open(run / sides[1][1]).convert("RGB"))
    # each image shows only its own text's boxes: as many box colours as the text has boxes
    for pixels, groundings in ((chosen, pair["chosen_groundings"]), (rejected, pair["rejected_groundings"])):
        n = len(groundings)
        assert all(near(pixels, box_colour(k), 10) > 100 for k in range(n)), n
        assert near(pixels, box_colour(n), 10) < 20
        assert near(pixels, REGION, 10) > 300 and near(pixels, REFERENCE, 10) > 300
    # each phrase a chip of its box's colour, the raw text one click away
    for kind in ("chosen", "rejected"):
        side = re.search(rf'<div class="side {kind}">(.*?)</details></div>', section, re.S).group(1)
        assert side.count('class="chip"') == len(pair[f"{kind}_groundings"])
        assert "<details><summary>raw model text</summary>" in side


def test_all_scores_table_holds_every_text_whole(tmp_path):
    long = qwen_text(
        [(f"object number {i} of a long list", (10.0 + i, 20.0, 60.0 + i, 80.0)) for i in range(40)]
    )
    run = make_report(tmp_path / "run", extra=[("long", long)])
    html = (run / "report.html").read_text()
    scores = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    cells = text_cells(html)
    assert len(long) > 2000 and sorted(cells) == sorted(s["text"] for s in scores)  # no text cut anywhere
    for s in scores:  # and every box string is one span, whole
        for g in s["groundings"]:
            if g.get("span"):
                piece = escape(s["text"][g["span"][0] : g["span"][1]])
                assert re.search(r'<span class="box"[^>]*>' + re.escape(piece) + "</span>", html), piece


def test_results_come_first_with_a_chart_and_a_table(tmp_path):
    run = make_report(tmp_path / "run")
    write_results(run)
    assert main(["report", "--run", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert (
        html.index("<h2>Results</h2>")
        < html.index("Candidates (spr generate)")
        < html.index("Score distributions")
    )
    chart = re.search(r'<svg [^>]*class="results-chart".*?</svg>', html, re.S).group(0)
    series = re.findall(r'<g class="series" data-series="([^"]*)">(.*?)</g>', chart, re.S)
    assert [unescape(n) for n, _ in series] == ["base", "round 1", "<i>round 2</i>"]
    assert [g.count("<circle") for _, g in series] == [5, 6, 5]  # acc@0.95 only where present
    assert "<i>" not in html and "&lt;i&gt;round 2&lt;/i&gt;" in html and "&lt;b&gt;scenes" in html
    table = re.search(r'<table class="results-table">.*?</table>', html, re.S).group(0)
    head = [unescape(h) for h in re.findall(r"<th>(.*?)</th>", table)]
    assert head[:8] == ["model", *(f"REC acc@{t}" for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)), "REC mean IoU"]
    assert head[8:] == ["description F1@0.5", "description F1@0.75"]
    rows = re.findall(r"<tr><td>(.*?)</td>(.*?)</tr>", table, re.S)
    assert len(rows) == 3
    assert "(+0.030)" in rows[1][1] and "(+0.040)" in rows[2][1]  # deltas against the first model
    assert rows[0][1].count("-</td>") == 1 and rows[2][1].count(">-</td>") == 2  # missing keys: "-"
    assert (
        "On the <b>test</b> split: REC on n = 346 referring expressions" in html and "n = 150 regions" in html
    )

    elsewhere = write_results(tmp_path, eval={})
    (run / "results.json").write_text(json.dumps({"base": {"acc@0.5": 0.5}, "spr": {"acc@0.5": 0.6}}))
    assert main(["report", "--run", str(run)]) == 0
    assert escape('No results: results.json has no "models" mapping') in (run / "report.html").read_text()
    assert main(["report", "--run", str(run), "--results", str(elsewhere)]) == 0
    html = (run / "report.html").read_text()
    assert html.count('<g class="series"') == 3 and "On an unnamed split: REC on n = ?" in html


def test_every_counter_says_what_it_counts(tmp_path):
    broken = qwen_text([("person", OBJECTS[0][1])]) + " and a <|box_start|>(,687,278,995)<|box_end|>"
    run = make_report(tmp_path / "run", extra=[("broken", broken)])
    html = (run / "report.html").read_text()
    scores = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    per_text = [sum(any(p.startswith("codec problem") for p in s["problems"]) for s in scores if s["refined"] == r)
                for r in (False, True)]  # fmt: skip
    summary = json.loads((run / "scores.summary.json").read_text())["problems"]
    row = re.search(r"<tr><td>codec problem</td>(.*?)</tr>", html, re.S).group(1)
    cells = re.findall(r'<td class="(?:num|what)">(.*?)</td>', row)
    assert cells[:3] == [str(summary["codec problem"]), str(per_text[0]), str(per_text[1])]
    assert per_text[0] == 1 and sum(per_text) == summary["codec problem"]
    assert "once per text" in cells[3] and "generate" in cells[3]
    assert re.search(r"<td>candidates with parse problems</td><td[^>]*>1 \(", html)
    assert "the count `spr generate` prints" in html
    # the pairs' setting and the measured smallest margin are labelled as what they are
    assert "<td>setting: --min-margin</td>" in html and "<td>measured: smallest margin</td>" in html
    assert "<td>min_margin</td>" not in html and "<td>min margin</td>" not in html


def test_report_shows_one_block_per_prompt_with_a_pair(tmp_path):
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
    assert len(list((tmp_path / "report_files").iterdir())) == 8  # per block: chosen and rejected, each twice
    (tmp_path / "report_files" / "mine.png").write_bytes(b"")
    assert main(["report", "--run", str(tmp_path), "--max-regions", "0"]) == 0
    assert [f.name for f in (tmp_path / "report_files").iterdir()] == [
        "mine.png"
    ]  # old images gone, not others


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


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-d array."""
    out, start = [], None
    for i, f in enumerate([*flags, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i - start))
            start = None
    return out


@pytest.mark.browser
@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_boxes_and_shows_script_as_text_in_chromium(tmp_path):
    built = make_report(tmp_path / "built")
    write_results(built)
    assert main(["report", "--run", str(built)]) == 0
    moved = tmp_path / "moved"
    shutil.copytree(built, moved)
    shutil.rmtree(built)  # the original images are gone too: the page must stand on its own files
    url = (moved / "report.html").as_uri()

    shot = tmp_path / "shot.png"
    run_chromium(f"--screenshot={shot}", "--window-size=1200,3000", url)
    assert shot.exists(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # The fixture image's background (225, 225, 225) is nowhere else on the page: where the browser drew it is
    # where the two images are. Side by side, each at least 320 px wide (400 x 300 for the 640 x 480 image).
    background = np.abs(pixels.astype(int) - 225).max(axis=-1) <= 2
    columns = [r for r in runs(background.sum(axis=0) >= 40) if r[1] >= 20]
    rows = [r for r in runs(background.sum(axis=1) >= 40) if r[1] >= 20]
    assert len(columns) == 2 and all(395 <= n <= 401 for _, n in columns), columns
    assert len(rows) == 1 and 295 <= rows[0][1] <= 301, rows
    # the boxes: region, references and one colour per box of each text, on the images and on the chips
    assert near(pixels, REGION, 10) > 500, "region box not drawn"
    assert near(pixels, REFERENCE, 10) > 500, "reference boxes not drawn"
    for k in range(5):
        assert near(pixels, box_colour(k), 10) > 300, f"box {k + 1} not drawn"

    dom = run_chromium("--dump-dom", url).stdout
    assert "&lt;script&gt;document.title" in dom  # shown as text
    assert "<script" not in dom.lower()  # no script element ever made it into the page
    assert "data-pwned" not in dom.split("&lt;script&gt;")[0] and "<title>PWNED" not in dom
    assert '<img src="x"' not in dom and "&lt;img src=x onerror=alert(1)&gt;" in dom
    assert "<i>" not in dom and "&lt;i&gt;round 2&lt;/i&gt;" in dom
    assert len(re.findall(r'<g class="series" data-series="[^"]*">', dom)) == 3  # one line per model
    assert len(re.findall(r'<img class="view" src="report_files/[^"]+" width="400" height="300"', dom)) == 2


def test_a_signed_box_error_moving_towards_zero_is_shown_as_a_gain():
    from spr.report.data import ReportData
    from spr.report.results import results_section

    models = {"base": {"acc@0.8": 0.25, "width_error": 2.9, "centre_dx": -0.1},
              "round 1": {"acc@0.8": 0.37, "width_error": 1.1, "centre_dx": -0.3}}  # fmt: skip
    html = results_section(ReportData(regions={}, results={"eval": {}, "models": models}))
    assert '<span class="delta up">(+0.120)</span>' in html  # accuracy up: a gain
    assert '<span class="delta up">(-1.800)</span>' in html  # looseness down: a gain, though negative
    assert '<span class="delta down">(-0.200)</span>' in html  # shifted further from 0: a loss
