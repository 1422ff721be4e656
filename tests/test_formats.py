"""Box-format codecs: each format read as its model writes it, on a non-square image (so a swapped x/y or W/H
shows), round trips within the format's quantization, in-place box replacement, tolerance of broken output,
and cross-checks against transformers' own conversions."""

from __future__ import annotations

import importlib
import math
import random
from types import SimpleNamespace

import pytest

from spr import formats as F
from spr.formats import kosmos2, qwen2_5_vl
from spr.formats.base import Grounding, Parsed

W, H = 640, 480
ALL = F.available()  # every registered format; test_available_lists_every_format guards the content

# The run's geometry for the formats that need more than the image size (the codec has no default for it).
QWEN_BUDGET = {"min_pixels": qwen2_5_vl.RELEASED_MIN_PIXELS, "max_pixels": qwen2_5_vl.RELEASED_MAX_PIXELS}
RUN_GEOMETRY = {"qwen2_5_vl": QWEN_BUDGET}


def geo(fmt: str) -> dict:
    """Geometry options for ``fmt`` in these tests (the released Qwen2.5-VL processor budget for qwen2_5_vl)."""
    if F.get(fmt).geometry_keys and fmt not in RUN_GEOMETRY:
        raise AssertionError(f"format {fmt!r} takes geometry options: add it to RUN_GEOMETRY")
    return dict(RUN_GEOMETRY.get(fmt, {}))


MAN = (160.0, 120.0, 480.0, 480.0)
CUPS = [(64.0, 240.0, 128.0, 360.0), (192.0, 240.0, 256.0, 360.0)]

# (format, text as the model writes it, image size, geometry, expected [(phrase, box in original pixels)]).
# Every expected box is computed by hand from the format's definition.
SAMPLES = {
    "qwen2_vl": (
        "<|object_ref_start|>a man<|object_ref_end|><|box_start|>(250,250),(750,1000)<|box_end|> is holding "
        "<|object_ref_start|>two cups<|object_ref_end|><|box_start|>(100,500),(200,750)<|box_end|>"
        "<|box_start|>(300,500),(400,750)<|box_end|>",
        (W, H),
        {},
        [("a man", MAN), ("two cups", CUPS[0]), ("two cups", CUPS[1])],
    ),
    # 640x480 -> smart_resize -> 644x476 model input: 161/644*640 = 160, 119/476*480 = 120, ...
    "qwen2_5_vl": (
        '```json\n[\n\t{"bbox_2d": [161, 119, 483, 476], "label": "man"},\n'
        '\t{"bbox_2d": [322, 238, 644, 357], "label": "cup"}\n]\n```',
        (W, H),
        QWEN_BUDGET,
        [("man", MAN), ("cup", (320.0, 240.0, 640.0, 360.0))],
    ),
    "qwen2_5_vl/input_size": (
        'Here you go:\n```json\n[{"bbox_2d": [322, 238, 966, 952], "label": "man"}]\n```',
        (W, H),
        {"input_size": (1288, 952)},
        [("man", MAN)],
    ),
    # max_pixels 200704 = 256 * 28 * 28 -> 504x364 input; a single object, no list, no fence
    "qwen2_5_vl/max_pixels": (
        '{"bbox_2d": [126, 91, 378, 273], "label": "man"}',
        (W, H),
        {"min_pixels": 3136, "max_pixels": 200704},
        [("man", (160.0, 120.0, 480.0, 360.0))],
    ),
    "internvl": (
        "<ref>a man</ref><box>[[250, 250, 750, 1000]]</box> is holding "
        "<ref>two cups</ref><box>[[100, 500, 200, 750], [300, 500, 400, 750]]</box>.",
        (W, H),
        {},
        [("a man", MAN), ("two cups", CUPS[0]), ("two cups", CUPS[1])],
    ),
    "ferret": (
        "A man [250, 250, 750, 999] holding two cups [100, 500, 200, 750], [300, 500, 400, 750].",
        (W, H),
        {},
        [
            ("A man", (160.0, 120.0, 480.0, 479.52)),
            ("holding two cups", CUPS[0]),
            ("holding two cups", CUPS[1]),
        ],
    ),
    # padded to 640x640, pad_y = 80: y = v * 640 - 80
    "shikra": (
        "A man[0.250,0.250,0.750,0.875] holding two cups[0.100,0.500,0.200,0.625;0.300,0.500,0.400,0.625].",
        (W, H),
        {},
        [
            ("A man", (160.0, 80.0, 480.0, 480.0)),
            ("holding two cups", (64.0, 240.0, 128.0, 320.0)),
            ("holding two cups", (192.0, 240.0, 256.0, 320.0)),
        ],
    ),
    # portrait 480x640: pad_x = 80
    "shikra/portrait": (
        "Answer: A man[0.250,0.250,0.750,0.875].",
        (480, 640),
        {},
        [("A man", (80.0, 160.0, 400.0, 560.0))],
    ),
    # 641x480: pad = (641 - 480) // 2 = 80, not 80.5
    "shikra/odd": (
        "a dog[0.000,0.500,1.000,0.800]",
        (641, 480),
        {},
        [("a dog", (0.0, 240.5, 641.0, 432.8))],
    ),
    # several boxes of one phrase: ';' inside one double bracket, as CogVLM writes them
    "cogvlm": (
        "A man[[250,250,750,999]] holding two cups[[100,500,200,750;300,500,400,750]] and a spoon[[050,100,150,200]]",
        (W, H),
        {},
        [
            ("A man", (160.0, 120.0, 480.0, 479.52)),
            ("holding two cups", CUPS[0]),
            ("holding two cups", CUPS[1]),
            ("a spoon", (32.0, 48.0, 96.0, 96.0)),
        ],
    ),
    # the '[[..];[..]]' rendering of earlier SPR versions is still read
    "cogvlm/legacy": (
        "two cups[[100,500,200,750];[300,500,400,750]]",
        (W, H),
        {},
        [("two cups", CUPS[0]), ("two cups", CUPS[1])],
    ),
    # bins read at their centre: (bin + 0.5) / 1000 * size
    "florence2": (
        "</s><s>a man<loc_250><loc_250><loc_750><loc_999>two cups<loc_100><loc_500><loc_200><loc_750>"
        "<loc_300><loc_500><loc_400><loc_750></s>",
        (W, H),
        {},
        [
            ("a man", (160.32, 120.24, 480.32, 479.76)),
            ("two cups", (64.32, 240.24, 128.32, 360.24)),
            ("two cups", (192.32, 240.24, 256.32, 360.24)),
        ],
    ),
    # y first: <loc y1><loc x1><loc y2><loc x2>, loc / 1023 * size (big_vision's scale; <loc1023> is the edge)
    "paligemma": (
        "<loc0256><loc0256><loc1023><loc0767> man ; <loc0341><loc0000><loc0682><loc1023> cup ; "
        "<loc0000><loc0000><loc0512><loc0512> " + "<seg017>" * 16 + " wall",
        (W, H),
        {},
        [
            ("man", (256 / 1023 * 640, 256 / 1023 * 480, 767 / 1023 * 640, 480.0)),
            ("cup", (0.0, 160.0, 640.0, 320.0)),  # 341 / 1023 = 1/3, 682 / 1023 = 2/3
            ("wall", (0.0, 0.0, 512 / 1023 * 640, 512 / 1023 * 480)),
        ],
    ),
    # 44 -> patch (12, 1), 863 -> (31, 26): centres; 0 -> (0, 0), 5 -> (5, 0) share a row: patch edges
    "kosmos2": (
        "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> "
        "warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object> with"
        "<phrase> two dogs</phrase><object><patch_index_0000><patch_index_0033></delimiter_of_multi_objects/>"
        "<patch_index_0066><patch_index_0099></object> under<phrase> a shelf</phrase><object><patch_index_0000>"
        "<patch_index_0005></object>.",
        (W, H),
        {},
        [
            ("a snowman", (250.0, 22.5, 630.0, 397.5)),
            ("a fire", (110.0, 7.5, 310.0, 427.5)),
            ("two dogs", (10.0, 7.5, 30.0, 22.5)),
            ("two dogs", (50.0, 37.5, 70.0, 52.5)),
            ("a shelf", (0.0, 0.0, 120.0, 15.0)),
        ],
    ),
    "minigpt_v2": (
        "<p>a man</p> {<25><25><75><100>} holding <p>two cups</p> {<10><50><20><75>}<delim>{<30><50><40><75>}",
        (W, H),
        {},
        [("a man", MAN), ("two cups", CUPS[0]), ("two cups", CUPS[1])],
    ),
    "plain_norm": (
        "In the image, a man [0.25, 0.25, 0.75, 1.0] and two cups [0.1, 0.5, 0.2, 0.75], [0.3, 0.5, 0.4, 0.75].",
        (W, H),
        {},
        [("a man", MAN), ("two cups", CUPS[0]), ("two cups", CUPS[1])],
    ),
    # Qwen3-VL / Qwen3.5: relative 0-1000 (250/1000*640 = 160 ...); the think block's numbers are not the answer
    "qwen3_vl": (
        "<think>\nThe man is at [1, 2, 3, 4]?\n</think>\n\n"
        '```json\n[\n\t{"bbox_2d": [250, 250, 750, 1000], "label": "man"},\n'
        '\t{"bbox_2d": [100, 500, 200, 750], "label": "cup"}\n]\n```',
        (W, H),
        {},
        [("man", MAN), ("cup", CUPS[0])],
    ),
    # GLM-4.xV: per-mille of width / height inside the box tokens; several boxes of one block share its phrase
    "glm4v": (
        "<think>two cups and a man</think>A man <|begin_of_box|>[[250,250,750,1000]]<|end_of_box|> holds "
        "two cups: <|begin_of_box|>[[100,500,200,750],[300,500,400,750]]<|end_of_box|>",
        (W, H),
        {},
        [("A man", MAN), ("holds two cups", CUPS[0]), ("holds two cups", CUPS[1])],
    ),
    "plain_pixel": (
        "a man [160, 120, 480, 480], two cups [64, 240, 128, 360] and [192.5, 240, 256, 360]",
        (W, H),
        {},
        [("a man", MAN), ("two cups", CUPS[0]), ("two cups", (192.5, 240.0, 256.0, 360.0))],
    ),
}


def fmt_of(key: str) -> str:
    return key.split("/")[0]


def assert_box(got, want, tol=1e-6):
    assert got == pytest.approx(tuple(float(v) for v in want), abs=tol), f"{got} != {want}"


BUILT_IN = {
    "cogvlm",
    "ferret",
    "florence2",
    "internvl",
    "kosmos2",
    "minigpt_v2",
    "paligemma",
    "plain_norm",
    "plain_pixel",
    "qwen2_5_vl",
    "qwen2_vl",
    "qwen3_vl",
    "glm4v",
    "shikra",
}


def test_available_lists_every_format():
    assert F.available() == sorted(BUILT_IN)  # the self-registration found every module, each once
    assert {fmt_of(k) for k in SAMPLES} == set(F.available())  # and every format has a model-written sample


def test_each_codec_module_registers_itself_once():
    from spr.formats import codecs, registry

    assert sorted(codecs.MODULES_WITH_CODECS) == F.available()
    for fmt in F.available():
        module = importlib.import_module(f"spr.formats.{fmt}")
        assert module.CODEC is F.get(fmt)
    importlib.reload(codecs)  # importing the package's modules again registers nothing twice
    assert F.available() == sorted(BUILT_IN)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(F.get("ferret"))


@pytest.mark.parametrize("key", list(SAMPLES))
def test_model_written_sample_reads_to_hand_computed_pixels(key):
    text, size, geometry, expected = SAMPLES[key]
    parsed = F.parse(text, fmt_of(key), image_size=size, **geometry)
    assert parsed.problems == []
    assert [g.phrase for g in parsed] == [p for p, _ in expected]
    for g, (_, box) in zip(parsed, expected):
        assert_box(g.box, box)


@pytest.mark.parametrize("key", list(SAMPLES))
def test_replacing_a_span_in_model_text_replaces_exactly_that_box(key):
    """Refinement writes format_box(new) over text[span]; the text must stay valid and read back new."""
    fmt = fmt_of(key)
    text, size, geometry, _ = SAMPLES[key]
    before = F.parse(text, fmt, size, **geometry)
    tx, ty = tolerance(fmt, size, geometry)
    new = (0.3 * size[0], 0.35 * size[1], 0.55 * size[0], 0.6 * size[1])
    for i, g in enumerate(before):
        s, e = g.span
        edited = text[:s] + F.format_box(new, fmt, size, **geometry) + text[e:]
        after = F.parse(edited, fmt, size, **geometry)
        assert after.problems == []
        assert [a.phrase for a in after] == [b.phrase for b in before]
        for j, (a, b) in enumerate(zip(after, before)):
            want = new if j == i else b.box
            assert abs(a.box[0] - want[0]) <= tx + 1e-9 and abs(a.box[2] - want[2]) <= tx + 1e-9
            assert abs(a.box[1] - want[1]) <= ty + 1e-9 and abs(a.box[3] - want[3]) <= ty + 1e-9


# ---- render / parse round trip ------------------------------------------------------------------------------


def tolerance(fmt, size, geometry=None):
    """Largest per-axis error (x, y) in pixels that the format's number space allows."""
    w, h = size
    grid = {
        "qwen2_vl": 1000,
        "qwen3_vl": 1000,
        "glm4v": 1000,
        "internvl": 1000,
        "ferret": 1000,
        "cogvlm": 1000,
        "florence2": 1000,
        "plain_norm": 1000,
        "paligemma": 1023,
        "minigpt_v2": 100,
        "kosmos2": 32,
    }
    if fmt in grid:
        return w / grid[fmt], h / grid[fmt]
    if fmt == "shikra":
        return max(w, h) / 1000, max(w, h) / 1000
    if fmt == "plain_pixel":
        return 0.5, 0.5
    if fmt == "qwen2_5_vl":
        iw, ih = qwen2_5_vl.CODEC.resolve_geometry(size, **(geometry or geo(fmt)))["input_size"]
        return w / iw, h / ih
    raise AssertionError(fmt)


def random_groundings(rng, size, n=6):
    w, h = size
    phrases = ["a red car", "the dog", None, "two cups", "two cups", "a man", None]
    out = [Grounding("the whole scene", (0.0, 0.0, float(w), float(h)))]  # touches every edge
    for _ in range(n):
        bw, bh = rng.uniform(0.1, 0.4) * w, rng.uniform(0.1, 0.4) * h
        x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        out.append(Grounding(rng.choice(phrases), (x1, y1, x1 + bw, y1 + bh)))
    return out


ROUND_TRIP_CASES = [(fmt, size) for fmt in ALL for size in [(640, 480), (480, 640)]] + [
    ("shikra", (641, 479)),
    ("qwen2_5_vl", (1999, 1003)),
]


@pytest.mark.parametrize("fmt,size", ROUND_TRIP_CASES)
def test_render_then_parse_returns_the_boxes_within_quantization(fmt, size):
    rng = random.Random(f"{fmt}{size}")
    tx, ty = tolerance(fmt, size)
    for _ in range(20):
        gs = random_groundings(rng, size)
        text = F.render(gs, fmt, image_size=size, **geo(fmt))
        parsed = F.parse(text, fmt, image_size=size, **geo(fmt))
        assert parsed.problems == [], text
        assert [g.phrase for g in parsed] == [g.phrase for g in gs], text
        for got, want in zip(parsed, gs):
            assert abs(got.box[0] - want.box[0]) <= tx + 1e-9 and abs(got.box[2] - want.box[2]) <= tx + 1e-9
            assert abs(got.box[1] - want.box[1]) <= ty + 1e-9 and abs(got.box[3] - want.box[3]) <= ty + 1e-9


@pytest.mark.parametrize("fmt", ALL)
def test_span_of_rendered_text_is_exactly_format_box(fmt):
    rng = random.Random(fmt)
    gs = random_groundings(rng, (W, H))
    text = F.render(gs, fmt, image_size=(W, H), **geo(fmt))
    parsed = F.parse(text, fmt, image_size=(W, H), **geo(fmt))
    assert [text[g.span[0] : g.span[1]] for g in parsed] == [
        F.format_box(g.box, fmt, (W, H), **geo(fmt)) for g in gs
    ]
    # replacing every box at once, right to left, as refinement does
    new_boxes = [g.box for g in random_groundings(rng, (W, H))]
    edited = text
    for g, new in sorted(zip(parsed, new_boxes), key=lambda p: -p[0].span[0]):
        edited = edited[: g.span[0]] + F.format_box(new, fmt, (W, H), **geo(fmt)) + edited[g.span[1] :]
    again = F.parse(edited, fmt, (W, H), **geo(fmt))
    tx, ty = tolerance(fmt, (W, H))
    assert [g.phrase for g in again] == [g.phrase for g in gs]
    for got, want in zip(again, new_boxes):
        assert abs(got.box[0] - want[0]) <= tx + 1e-9 and abs(got.box[3] - want[3]) <= ty + 1e-9


def test_render_accepts_pairs_dicts_and_clips_to_the_image():
    a = F.render([("a dog", (10, 20, 300, 200))], "plain_pixel", (W, H))
    b = F.render([{"phrase": "a dog", "box": [10, 20, 300, 200]}], "plain_pixel", (W, H))
    assert a == b == "a dog [10, 20, 300, 200]"
    assert F.format_box((-5, -5, 700, 500), "plain_pixel", (W, H)) == "[0, 0, 640, 480]"


# ---- broken output -------------------------------------------------------------------------------------------

BROKEN = [
    # (format, text, groundings expected, a word the problem must contain)
    (
        "qwen2_5_vl",
        '```json\n[\n\t{"bbox_2d": [161, 119, 483, 476], "label": "man"},\n\t{"bbox_2d": [322, 238, 6',
        1,
        "cut off",
    ),
    (
        "qwen2_5_vl",
        '[{"point_2d": [100, 200], "label": "dot"}, {"bbox_2d": [161, 119, 483, 476]}]',
        1,
        "point_2d",
    ),
    ("qwen2_5_vl", '[{"bbox_2d": [1, 2, 3], "label": "x"}]', 0, "four numbers"),
    ("qwen2_5_vl", "<answer>[322, 238]</answer>", 0, "a point"),
    ("qwen2_5_vl", '{"bbox_2d": [161, 119, 483, 476], "label": "ma', 0, "cut off"),
    (
        "qwen3_vl",
        '```json\n[{"bbox_2d": [250, 250, 750, 1000], "label": "man"}, {"bbox_2d": [1',
        1,
        "cut off",
    ),
    ("qwen3_vl", '<think>the man is at [250, 250, 750, 1000], so {"bbox_2d": [2', 0, "thinking"),
    (
        "qwen3_vl",
        '[{"point_2d": [500, 500], "label": "dot"}, {"bbox_2d": [750, 250, 250, 1000]}]',
        1,
        "point_2d",
    ),
    ("qwen3_vl", '[{"bbox_2d": [750, 250, 250, 1000]}]', 1, "swapped"),
    (
        "glm4v",
        "<|begin_of_box|>42<|end_of_box|> <|begin_of_box|>[[1,2,3,4]]<|end_of_box|>",
        1,
        "no coordinates",
    ),
    ("glm4v", "The answer is <|begin_of_box|>B. a red car<|end_of_box|>", 0, "no coordinates"),
    ("glm4v", "a man <|begin_of_box|>[[250,250,750", 0, "truncated"),
    ("glm4v", "<think>it is <|begin_of_box|>[[1,2,3,4]]<|end_of_box|>", 0, "thinking"),
    ("glm4v", "a man <|begin_of_box|>[[750,250,250,1000]]<|end_of_box|>", 1, "swapped"),
    ("internvl", "[[100, 100, 200]]", 0, "cannot read"),
    ("qwen2_vl", "<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,2),(3,4)", 0, "truncated"),
    ("qwen2_vl", "<|box_start|>(1,2),(3)<|box_end|>", 0, "4 numbers"),
    ("internvl", "<ref>a</ref><box>[[100, 100, 1200, 500]]</box>", 1, "clipped"),
    ("internvl", "<ref>a</ref><box>[[100, 100, 200", 0, "truncated"),
    ("ferret", "a cup [500, 500] and a man [1, 2, 3, 4]", 1, "point"),
    ("shikra", "a cup[0.1,0.2,0.3;0.1,0.2,0.3,0.4]", 1, "not four numbers"),
    ("cogvlm", "a cup[[100,200,300]]", 0, "not four numbers"),
    ("florence2", "a<loc_1><loc_2><loc_3><loc_40><loc_5>", 1, "do not make a box"),
    ("paligemma", "<loc0001><loc0002><loc0003> cat", 0, "do not make a box"),
    ("kosmos2", "<phrase>a</phrase><object><patch_index_0000><patch_index_0033>", 1, "not closed"),
    ("kosmos2", "<phrase>a</phrase><object><patch_index_2000><patch_index_2001></object>", 0, "beyond"),
    ("minigpt_v2", "<p>a</p> {<1><2><3>}", 0, "cannot read"),
    ("plain_pixel", "a thin line [10, 10, 10, 50]", 0, "zero area"),
    ("plain_pixel", "upside down [100, 100, 50, 50]", 1, "swapped"),
    ("plain_norm", "a man [0.2, 0.2, 1.4, 0.9]", 1, "clipped"),
]


@pytest.mark.parametrize("fmt,text,count,word", BROKEN)
def test_broken_output_is_reported_beside_what_could_be_read(fmt, text, count, word):
    parsed = F.parse(text, fmt, image_size=(W, H), **geo(fmt))
    assert len(parsed) == count
    assert any(word in p for p in parsed.problems), parsed.problems


def test_qwen2_5_vl_reads_python_style_objects_and_swapped_corners():
    text = "[{'bbox_2d': [483, 476, 161, 119], 'label': 'man',}]"
    parsed = F.parse(text, "qwen2_5_vl", (W, H), **QWEN_BUDGET)
    assert [g.phrase for g in parsed] == ["man"]
    assert_box(parsed[0].box, MAN)
    assert any("swapped" in p for p in parsed.problems)


def test_qwen3_vl_reads_0_to_1000_and_writes_0_to_999():
    """The authors' evaluator divides by 1000, so 1000 is the edge and 999 is 0.1% short of it; SPR writes at most
    999, the largest number the models write, and that reads back within one grid step of the edge."""
    whole = F.parse('[{"bbox_2d": [0, 0, 1000, 1000]}]', "qwen3_vl", (W, H))
    assert whole.problems == [] and whole[0].box == (0.0, 0.0, W, H)
    almost = F.parse('[{"bbox_2d": [0, 0, 999, 999]}]', "qwen3_vl", (W, H))
    assert almost[0].box == pytest.approx((0.0, 0.0, 0.999 * W, 0.999 * H))
    assert F.format_box((0, 0, W, H), "qwen3_vl", (W, H)) == "[0, 0, 999, 999]"
    assert F.format_box(MAN, "qwen3_vl", (W, H)) == "[250, 250, 750, 999]"
    # no pixel budget: the numbers do not depend on the processor's resize
    with pytest.raises(ValueError, match="no geometry option input_size"):
        F.parse("[]", "qwen3_vl", (W, H), input_size=(644, 476))


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "<think>\n\n</think>\n\n",
        "Let me look [10, 20, 30, 40].\n</think>\n\n",
        "<think>a</think><think>b</think>",
    ],
)
def test_qwen3_vl_reads_the_answer_after_thinking_with_its_span_in_the_whole_text(prefix):
    """Qwen3.5 thinks by default; its prompt opens <think>, so the answer may carry a lone </think>."""
    text = prefix + '```json\n[{"bbox_2d": [250, 250, 750, 1000], "label": "man"}]\n```'
    parsed = F.parse(text, "qwen3_vl", (W, H))
    assert parsed.problems == [] and [g.phrase for g in parsed] == ["man"]
    assert_box(parsed[0].box, MAN)
    assert text[slice(*parsed[0].span)] == "[250, 250, 750, 1000]"


@pytest.mark.parametrize(
    "text",
    [
        '{"bbox_2d": [250, 250, 750, 1000], "label": "man"}',  # no fence, no list
        'The man:\n```json\n[\n  {"bbox_2d": [250, 250, 750, 1000], "label": "man"}\n]\n```\nDone.',
        "<answer>[250, 250, 750, 1000]</answer>",  # an R1-style REC answer, same grid
        "[250, 250, 750, 1000]",
    ],
)
def test_qwen3_vl_reads_fenced_bare_and_answer_forms(text):
    parsed = F.parse(text, "qwen3_vl", (W, H))
    assert parsed.problems == [] and len(parsed) == 1
    assert_box(parsed[0].box, MAN)


@pytest.mark.parametrize(
    "body",
    [
        "[[250,250,750,1000]]",
        "[250,250,750,1000]",
        "(250,250,750,1000)",
        "<250,250,750,1000>",
        " 250, 250, 750, 1000 ",
    ],
)
def test_glm4v_reads_every_bracket_style(body):
    text = f"The man is at <|begin_of_box|>{body}<|end_of_box|>."
    parsed = F.parse(text, "glm4v", (W, H))
    assert parsed.problems == [] and len(parsed) == 1
    assert_box(parsed[0].box, MAN)
    edited = text[: parsed[0].span[0]] + F.format_box(CUPS[0], "glm4v", (W, H)) + text[parsed[0].span[1] :]
    assert_box(F.parse(edited, "glm4v", (W, H))[0].box, CUPS[0])


def test_glm4v_multi_object_answer_has_no_labels_and_boxes_without_tokens_are_read_when_there_are_none():
    parsed = F.parse("<|begin_of_box|>[[100,500,200,750],[300,500,400,750]]<|end_of_box|>", "glm4v", (W, H))
    assert [g.phrase for g in parsed] == [None, None] and parsed.problems == []
    assert [g.box for g in parsed] == [pytest.approx(b) for b in CUPS]
    bare = F.parse("The man: [[250, 250, 750, 1000]]", "glm4v", (W, H))
    assert len(bare) == 1 and bare.problems == []
    assert_box(bare[0].box, MAN)
    # with box tokens present, only their insides count: a quoted list elsewhere is prose
    assert (
        len(
            F.parse(
                "not [1, 2, 3, 4] but <|begin_of_box|>[[250,250,750,1000]]<|end_of_box|>", "glm4v", (W, H)
            )
        )
        == 1
    )


def test_prose_in_brackets_is_not_a_box():
    parsed = F.parse("the [sic] sign [1, 2, 30, 40]", "ferret", (W, H))
    assert len(parsed) == 1 and parsed.problems == []


FRAGMENTS = [
    "<think>",
    "</think>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "```json",
    "```",
    "<|box_start|>",
    "<|box_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "(",
    ")",
    ",",
    ", ",
    "[",
    "]",
    "[[",
    "]]",
    ";",
    "{",
    "}",
    "<",
    ">",
    "<loc_",
    "<loc",
    "<patch_index_",
    "</delimiter_of_multi_objects/>",
    "<object>",
    "</object>",
    "<phrase>",
    "</phrase>",
    "<p>",
    "</p>",
    "<delim>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    '"bbox_2d"',
    '"label"',
    ":",
    '"',
    "'",
    "\\",
    "```json\n",
    "```",
    "\n",
    '"point_2d"',
    "<seg012>",
    "0",
    "7",
    "12",
    "999",
    "1000",
    "1023",
    "0.5",
    "1.",
    ".25",
    "-3",
    "1e5",
    "nan",
    "inf",
    "9" * 60,
    ".",
    " ",
    "a dog",
    "and",
    "é",
    "\x00",
    "🙂",
]


def fuzz_texts(rng, fmt, n):
    valid = F.render(random_groundings(rng, (W, H)), fmt, (W, H), **geo(fmt))
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            yield "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 40)))
        elif kind < 0.7:  # a valid text cut off, or with a piece cut out
            i, j = sorted(rng.randrange(len(valid) + 1) for _ in range(2))
            yield valid[:i] if rng.random() < 0.5 else valid[:i] + valid[j:]
        else:  # a valid text with fragments spliced in
            t = valid
            for _ in range(rng.randint(1, 5)):
                i = rng.randrange(len(t) + 1)
                t = t[:i] + rng.choice(FRAGMENTS) + t[i:]
            yield t


@pytest.mark.parametrize("fmt", ALL)
def test_garbage_never_raises_and_never_yields_a_bad_box(fmt):
    codec = F.get(fmt)
    rng = random.Random(fmt)
    geometry = codec.resolve_geometry((W, H), **geo(fmt))
    for text in fuzz_texts(rng, fmt, 300):
        parsed = codec.read(text, (W, H), **geometry)  # the raw parser, without the safety net of parse()
        assert isinstance(parsed, Parsed)
        assert all(isinstance(p, str) for p in parsed.problems)
        for g in parsed:
            x1, y1, x2, y2 = g.box
            assert all(math.isfinite(v) for v in g.box)
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H, (text, g)
            assert 0 <= g.span[0] < g.span[1] <= len(text)
            assert g.phrase is None or (isinstance(g.phrase, str) and g.phrase.strip() == g.phrase != "")


def test_parser_bug_becomes_a_problem_not_an_exception(monkeypatch):
    codec = F.get("ferret")

    def broken(*args, **kwargs):
        raise IndexError("boom")

    monkeypatch.setattr(codec, "read", broken)
    parsed = F.parse("a dog [1, 2, 3, 4]", "ferret", (W, H))
    assert parsed == [] and "IndexError" in parsed.problems[0]


def test_caller_mistakes_raise_clear_errors():
    assert F.parse(None, "ferret", (W, H)).problems  # not text: a problem, no exception
    with pytest.raises(ValueError, match="input_size"):
        F.parse("x", "qwen2_vl", (W, H), input_size=(644, 476))  # a geometry option this format lacks
    with pytest.raises(ValueError, match="image_size"):
        F.parse("x", "ferret", (0, 480))
    with pytest.raises(ValueError, match="cannot write box"):
        F.format_box((10, 10, 10, 50), "ferret", (W, H))
    with pytest.raises(ValueError, match="cannot write box"):
        F.format_box((float("nan"), 10, 20, 50), "kosmos2", (W, H))
    with pytest.raises(KeyError, match="unknown box format"):
        F.parse("x", "qwen3", (W, H))


@pytest.mark.parametrize(
    "geometry,missing",
    [
        ({}, "min_pixels, max_pixels"),
        ({"max_pixels": 200704}, "min_pixels"),
        ({"min_pixels": 3136}, "max_pixels"),
    ],
)
def test_qwen2_5_vl_without_the_runs_geometry_raises_saying_what_to_pass(geometry, missing):
    """The pixel budget moves every coordinate: a silent default would give shifted boxes."""
    calls = [
        lambda: F.parse('[{"bbox_2d": [161, 119, 483, 476]}]', "qwen2_5_vl", (W, H), **geometry),
        lambda: F.format_box(MAN, "qwen2_5_vl", (W, H), **geometry),
        lambda: F.render([("man", MAN)], "qwen2_5_vl", (W, H), **geometry),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="input_size") as e:
            call()
        assert "min_pixels and max_pixels" in str(e.value) and f"missing: {missing}" in str(e.value)
    with pytest.raises(ValueError, match="min_pixels must not exceed max_pixels"):
        F.parse("x", "qwen2_5_vl", (W, H), min_pixels=200704, max_pixels=3136)
    with pytest.raises(ValueError, match="positive integer"):
        F.parse("x", "qwen2_5_vl", (W, H), min_pixels=0, max_pixels=3136)


# ---- geometry and cross-checks against transformers ------------------------------------------------------


def test_qwen2_5_vl_geometry_is_smart_resize_of_the_budget_and_input_size_wins():
    resolve = qwen2_5_vl.CODEC.resolve_geometry
    assert resolve((W, H), **QWEN_BUDGET) == {"input_size": (644, 476)}
    assert resolve((W, H), min_pixels=3136, max_pixels=200704) == {"input_size": (504, 364)}
    assert resolve((W, H), input_size=(320, 240)) == {"input_size": (320.0, 240.0)}
    assert resolve((W, H), input_size=(320, 240), min_pixels=3136, max_pixels=200704) == {
        "input_size": (320.0, 240.0)
    }
    assert F.format_box(MAN, "qwen2_5_vl", (W, H), **QWEN_BUDGET) == "[161, 119, 483, 476]"
    assert F.format_box(MAN, "qwen2_5_vl", (W, H), input_size=(320, 240)) == "[80, 60, 240, 240]"
    # the same box text means different pixels under another budget: why there is no default
    text = '{"bbox_2d": [161, 119, 483, 476]}'
    a = F.parse(text, "qwen2_5_vl", (W, H), **QWEN_BUDGET)[0].box
    b = F.parse(text, "qwen2_5_vl", (W, H), min_pixels=3136, max_pixels=200704)[0].box
    assert a != pytest.approx(b)


def transformers_smart_resize():
    # the torchvision-free copy first: torchvision is not installed here
    for name in (
        "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl",
        "transformers.models.qwen2_vl.image_processing_qwen2_vl",
    ):
        try:
            return importlib.import_module(name).smart_resize
        except ImportError:
            continue
    pytest.fail("transformers' Qwen2-VL smart_resize not found")


def test_smart_resize_matches_transformers_on_many_sizes():
    theirs = transformers_smart_resize()
    rng = random.Random(0)
    sizes = [(rng.randint(28, 6000), rng.randint(28, 6000)) for _ in range(400)]
    sizes += [(10, 10), (27, 29), (1, 150), (150, 1), (56, 56), (8000, 6000), (4000, 3000), (3584, 3584)]
    for h, w in sizes:
        for limits in ({}, {"min_pixels": 256 * 28 * 28, "max_pixels": 1280 * 28 * 28}):
            args = {**QWEN_BUDGET, **limits}
            assert qwen2_5_vl.smart_resize(h, w, **args) == theirs(h, w, factor=28, **args), (h, w, args)


def test_kosmos2_conversion_matches_transformers():
    from transformers.models.kosmos2 import processing_kosmos2 as K

    rng = random.Random(1)
    for _ in range(2000):
        x1, x2 = sorted(rng.uniform(0, 1) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, 1) for _ in range(2))
        if x2 <= x1 or y2 <= y1:
            continue
        assert kosmos2.coordinate_to_patch_index((x1, y1, x2, y2)) == K.coordinate_to_patch_index(
            (x1, y1, x2, y2), 32
        )
        ul, lr = sorted(rng.randrange(1024) for _ in range(2))
        assert kosmos2.patch_index_to_coordinate(ul, lr) == K.patch_index_to_coordinate(ul, lr, 32)
    # whole texts: the same phrases and boxes as transformers' own post-processing
    text = SAMPLES["kosmos2"][0]
    _, entities = K.clean_text_and_extract_entities_with_bboxes(text)
    theirs = [(p, (b[0] * W, b[1] * H, b[2] * W, b[3] * H)) for p, _, bs in entities for b in bs]
    ours = F.parse(text, "kosmos2", (W, H))
    assert [g.phrase for g in ours] == [p for p, _ in theirs]
    for g, (_, box) in zip(ours, theirs):
        assert_box(g.box, box)


def test_florence2_quantization_matches_transformers_post_processor():
    import torch
    from transformers.models.florence2.processing_florence2 import Florence2PostProcessor

    post = Florence2PostProcessor(None, SimpleNamespace(all_special_tokens=[]))
    rng = random.Random(2)
    gs = random_groundings(rng, (W, H), n=30)
    for g in gs:
        theirs = post.quantize(torch.tensor([g.box], dtype=torch.float64), size=(W, H)).tolist()[0]
        assert F.format_box(g.box, "florence2", (W, H)) == "".join(f"<loc_{v}>" for v in theirs)
    text = SAMPLES["florence2"][0]
    theirs = post.parse_description_with_bboxes_from_text_and_spans(text, image_size=(W, H))
    ours = F.parse(text, "florence2", (W, H))
    assert [g.phrase for g in ours] == [t["cat_name"] for t in theirs]
    # transformers truncates the dequantized floats to int; Florence-2's reference keeps them
    assert [[int(v) for v in g.box] for g in ours] == [t["bbox"] for t in theirs]
