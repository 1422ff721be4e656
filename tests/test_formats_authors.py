"""Box formats against the model authors' own output forms and parsers (docs/formats.md, "Checked against the
model authors' code"): CogVLM's grounding_parser, InternVL's RefCOCO evaluator, VLM-R1's REC evaluator for
Qwen2.5-VL, Qwen3-VL's ODinW evaluator, GLM-V's box-token extraction and README convention, big_vision's PaliGemma
encoder and evaluator.

Every text is written as the model writes it; every expected box is in original pixels of a 640x480 image,
computed from the authors' definition with W and H on their own axes, so a swapped x/y or W/H fails. The
"authors' parser" helpers below re-implement, in a few lines each, the steps the cited code takes; they are
written here from the description in docs/formats.md, not copied.
"""

from __future__ import annotations

import random
import re

import pytest

from spr import formats as F
from spr.formats import qwen2_5_vl

W, H = 640, 480
QWEN_BUDGET = {"min_pixels": qwen2_5_vl.RELEASED_MIN_PIXELS, "max_pixels": qwen2_5_vl.RELEASED_MAX_PIXELS}
QWEN_INPUT = (644, 476)  # smart_resize of 640x480 under the released budget (image_grid_thw 34x46, x 14)


def grid(vals, scale=1000):
    """x / scale * W, y / scale * H: the 0-1000 grid of CogVLM and InternVL."""
    x1, y1, x2, y2 = vals
    return (x1 / scale * W, y1 / scale * H, x2 / scale * W, y2 / scale * H)


def assert_boxes(parsed, want, tol=1e-6):
    assert len(parsed) == len(want), (parsed, parsed.problems)
    for g, box in zip(parsed, want):
        assert g.box == pytest.approx(tuple(float(v) for v in box), abs=tol), (g.box, box)


# ---- CogVLM ---------------------------------------------------------------------------------------------------


def cogvlm_parser(text):
    """CogVLM's utils/utils/grounding_parser.py: every [[...]] (non-greedy), split on ';', keep the parts made of
    digits and commas only, each number / 1000 of the image."""
    groups = []
    for inside in re.findall(r"\[\[(.*?)\]\]", text):
        parts = [p for p in inside.split(";") if p.replace(",", "").isdigit()]
        groups.append([grid([int(v) for v in p.split(",")]) for p in parts])
    return groups


# CogVLM paper (arXiv 2311.03079), "Grounding with Caption" example, copied as the model wrote it
COGVLM_CAPTION = (
    "A piggy bank [[302,198,694,857]] with a smile [[400,520,582,643]] on it is surrounded by coins "
    "[[028,820,986,997]], toy houses [[052,697,174,892; 526,763,636,952;168,697,286,883;738,697,852,895]], "
    "and greenery."
)


def test_cogvlm_grounded_caption_as_the_model_writes_it():
    parsed = F.parse(COGVLM_CAPTION, "cogvlm", (W, H))
    assert parsed.problems == []
    houses = [(52, 697, 174, 892), (526, 763, 636, 952), (168, 697, 286, 883), (738, 697, 852, 895)]
    assert_boxes(
        parsed,
        [
            (302 / 1000 * W, 198 / 1000 * H, 694 / 1000 * W, 857 / 1000 * H),
            grid((400, 520, 582, 643)),
            grid((28, 820, 986, 997)),
            *[grid(b) for b in houses],
        ],
    )
    assert parsed[0].phrase == "A piggy bank"
    assert [g.phrase for g in parsed[3:]] == ["toy houses"] * 4  # one ';' group: one phrase, four boxes
    # the span of each house is its four numbers, without the space after ';'
    assert [COGVLM_CAPTION[slice(*g.span)] for g in parsed[3:5]] == ["052,697,174,892", "526,763,636,952"]


def test_cogvlm_rec_answer_alone():
    parsed = F.parse("[[086,540,400,760]]", "cogvlm", (W, H))
    assert parsed.problems == [] and parsed[0].phrase is None
    assert_boxes(parsed, [(86 / 1000 * W, 540 / 1000 * H, 400 / 1000 * W, 760 / 1000 * H)])


def test_cogvlm_several_boxes_are_rendered_so_that_cogvlms_parser_reads_them():
    boxes = [(64.0, 240.0, 128.0, 360.0), (192.0, 240.0, 256.0, 360.0), (320.0, 48.0, 576.0, 432.0)]
    text = F.render([("cups", b) for b in boxes], "cogvlm", (W, H))
    assert text == "cups[[100,500,200,750;300,500,400,750;500,100,900,900]]"
    assert cogvlm_parser(text) == [[pytest.approx(b) for b in boxes]]
    assert_boxes(F.parse(text, "cogvlm", (W, H)), boxes)
    # the former '[[..];[..]]' rendering: CogVLM's parser finds the group but drops every part of it
    legacy = "cups[[100,500,200,750];[300,500,400,750]]"
    assert cogvlm_parser(legacy) == [[]]
    assert_boxes(F.parse(legacy, "cogvlm", (W, H)), boxes[:2])  # SPR still reads it


def test_cogvlm_random_renders_agree_with_cogvlms_parser():
    rng = random.Random(0)
    for _ in range(50):
        gs = []
        for phrase in ("a dog", "two cats", "two cats", "a tree"):
            x1, y1 = rng.uniform(0, W - 50), rng.uniform(0, H - 50)
            gs.append((phrase, (x1, y1, rng.uniform(x1 + 20, W), rng.uniform(y1 + 20, H))))
        text = F.render(gs, "cogvlm", (W, H))
        theirs = [b for group in cogvlm_parser(text) for b in group]
        ours = F.parse(text, "cogvlm", (W, H))
        assert [g.box for g in ours] == [pytest.approx(b) for b in theirs]


# ---- InternVL ---------------------------------------------------------------------------------------------------


def internvl_evaluator(answer):
    """InternVL's internvl_chat/eval/refcoco/evaluate_grounding.py: the first bracket (one or more '[') holding
    four comma-separated values, / 1000, x by the width and y by the height."""
    m = re.search(r"\[+([^,\[\]]*),([^,\[\]]*),([^,\[\]]*),([^,\[\]]*)\]+", answer)
    return grid([float(v) for v in m.groups()])


INTERNVL_ANSWERS = [
    # the training and answer form (InternVL issue #227, confirmed by the maintainers)
    ("<ref>the man in red</ref><box>[[253, 231, 733, 787]]</box>", "the man in red"),
    # REC answers without <box> tags
    ("[[253, 231, 733, 787]]", None),
    ("<ref>the man in red</ref>[[253, 231, 733, 787]]", "the man in red"),
    ("The bounding box coordinates of the region this sentence describes are [[253, 231, 733, 787]].", None),
    ("The bounding box coordinates of the region this sentence describes are [253, 231, 733, 787].", None),
]


@pytest.mark.parametrize("text,phrase", INTERNVL_ANSWERS)
def test_internvl_rec_answers_with_and_without_box_tags(text, phrase):
    parsed = F.parse(text, "internvl", (W, H))
    assert parsed.problems == []
    assert_boxes(parsed, [(253 / 1000 * W, 231 / 1000 * H, 733 / 1000 * W, 787 / 1000 * H)])
    assert parsed[0].phrase == phrase
    assert parsed[0].box == pytest.approx(internvl_evaluator(text))
    # refinement: the span is the inner list; replacing it keeps the answer readable
    s, e = parsed[0].span
    edited = text[:s] + F.format_box((64.0, 48.0, 320.0, 240.0), "internvl", (W, H)) + text[e:]
    assert_boxes(F.parse(edited, "internvl", (W, H)), [(64.0, 48.0, 320.0, 240.0)])


def test_internvl_several_boxes_in_one_group():
    text = "<ref>person</ref><box>[[10, 20, 300, 400], [500, 20, 990, 980]]</box>"
    parsed = F.parse(text, "internvl", (W, H))
    assert parsed.problems == [] and [g.phrase for g in parsed] == ["person", "person"]
    assert_boxes(parsed, [grid((10, 20, 300, 400)), grid((500, 20, 990, 980))])
    bare = F.parse("[[10, 20, 300, 400], [500, 20, 990, 980]]", "internvl", (W, H))
    assert_boxes(bare, [grid((10, 20, 300, 400)), grid((500, 20, 990, 980))])
    # SPR writes the group the same way
    out = F.render([("person", b.box) for b in parsed], "internvl", (W, H))
    assert out == text


def test_internvl_prose_lists_outside_box_tags_are_not_boxes():
    parsed = F.parse(
        "Steps [1, 2, 3] and the [sic] sign <ref>a cat</ref><box>[[1, 2, 300, 400]]</box>", "internvl", (W, H)
    )
    assert parsed.problems == [] and [g.phrase for g in parsed] == ["a cat"]


# ---- Qwen2.5-VL ---------------------------------------------------------------------------------------------------


def vlm_r1_rec(answer, input_size, image_size=(W, H)):
    """VLM-R1's src/eval/test_rec_r1.py for Qwen2.5-VL: the four integers of the first [a, b, c, d] inside
    <answer>..</answer>, scaled from the resized input (image_grid_thw x 14) to the original image."""
    inner = re.search(r"<answer>(.*?)</answer>", answer, re.S).group(1)
    a, b, c, d = (int(v) for v in re.search(r"\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)]", inner).groups())
    (iw, ih), (w, h) = input_size, image_size
    return (a / iw * w, b / ih * h, c / iw * w, d / ih * h)


MAN = (160.0, 120.0, 480.0, 480.0)  # [161, 119, 483, 476] in the 644x476 input
QWEN_ANSWERS = [
    # the Qwen2.5-VL cookbook's JSON
    ('```json\n[\n\t{"bbox_2d": [161, 119, 483, 476], "label": "man"}\n]\n```', "man"),
    # VLM-R1's REC answer (question template "... <answer>[x1, y1, x2, y2]</answer>")
    ("<think>The man stands on the left of the bench.</think>\n<answer>[161, 119, 483, 476]</answer>", None),
    ("<think> reasoning process here </think><answer> [161, 119, 483, 476]</answer>", None),
    # VLM-R1's JSON answer ("Output the final answer in JSON format.")
    (
        '<think>...</think> <answer>```json\n[{"bbox_2d": [161, 119, 483, 476], "label": "man"}]\n```</answer>',
        "man",
    ),
    ('<answer>{"bbox": [161, 119, 483, 476], "label": "man"}</answer>', "man"),
    # a bare REC answer
    ("[161, 119, 483, 476]", None),
    ("The man is at [161, 119, 483, 476].", None),
]


@pytest.mark.parametrize("text,phrase", QWEN_ANSWERS)
def test_qwen2_5_vl_rec_answers_read_in_pixels_of_the_resized_input(text, phrase):
    for geometry in (QWEN_BUDGET, {"input_size": QWEN_INPUT}):
        parsed = F.parse(text, "qwen2_5_vl", (W, H), **geometry)
        assert parsed.problems == []
        assert_boxes(parsed, [MAN])
        assert parsed[0].phrase == phrase
    if "<answer>" in text:
        assert parsed[0].box == pytest.approx(vlm_r1_rec(text, QWEN_INPUT))
    # refinement: the span is the list itself
    s, e = parsed[0].span
    assert text[s:e].replace(" ", "") == "[161,119,483,476]"
    new = (64.0, 48.0, 320.0, 240.0)
    edited = text[:s] + F.format_box(new, "qwen2_5_vl", (W, H), **QWEN_BUDGET) + text[e:]
    assert_boxes(F.parse(edited, "qwen2_5_vl", (W, H), **QWEN_BUDGET), [new], tol=W / 644)


def test_qwen2_5_vl_only_the_answer_counts_when_there_is_one():
    text = (
        "<think>At first [0, 0, 100, 100] looked right, then [10, 10, 50, 50].</think>"
        "<answer>[161, 119, 483, 476]</answer>"
    )
    assert_boxes(F.parse(text, "qwen2_5_vl", (W, H), **QWEN_BUDGET), [MAN])
    # the same answer under a smaller pixel budget (VLM-R1 trains with max_pixels 12845056, others with less)
    parsed = F.parse(text, "qwen2_5_vl", (W, H), min_pixels=3136, max_pixels=200704)  # 504x364 input
    assert_boxes(parsed, [(161 / 504 * W, 119 / 364 * H, 483 / 504 * W, H)], tol=1e-6)
    assert "clipped" in " ".join(parsed.problems)  # 476 is beyond a 364-pixel-high input: clipped to H


# ---- Qwen3-VL / Qwen3.5 ---------------------------------------------------------------------------------------------


def qwen3_vl_odinw(answer, image_size=(W, H)):
    """QwenLM/Qwen3-VL evaluation/ODinW-13/run_odinw.py (relative mode, is_rel=1, as Qwen3-VL is evaluated): remove
    the ```json fences, ast.literal_eval the rest, keep each object's bbox_2d of length 4 (with its label), and
    scale by / 1000 * [img_w, img_h, img_w, img_h]. Any failure to evaluate gives no boxes."""
    import ast

    w, h = image_size
    try:
        objects = ast.literal_eval(answer.replace("```json", "").replace("```", ""))
        out = [(o["label"], o["bbox_2d"]) for o in objects if len(o.get("bbox_2d", [])) == 4]
    except Exception:  # noqa: BLE001  as the evaluator: any failure is no prediction
        return []
    return [(label, (b[0] / 1000 * w, b[1] / 1000 * h, b[2] / 1000 * w, b[3] / 1000 * h)) for label, b in out]


QWEN3_ANSWERS = [
    '```json\n[\n\t{"bbox_2d": [250, 250, 750, 1000], "label": "man"}\n]\n```',
    '```json\n[\n\t{"bbox_2d": [250, 250, 750, 999], "label": "man"},\n\t{"bbox_2d": [100, 500, 200, 750], "label": "cup"}\n]\n```',
    '[{"bbox_2d": [0, 0, 1000, 1000], "label": "the whole scene"}, {"bbox_2d": [3, 7, 11, 13], "label": "speck"}]',
    "[{'bbox_2d': [100, 500, 200, 750], 'label': 'cup'}]",  # Python quotes: literal_eval reads them, so does spr
]


@pytest.mark.parametrize("text", QWEN3_ANSWERS)
def test_qwen3_vl_agrees_with_the_authors_odinw_evaluator(text):
    want = qwen3_vl_odinw(text)
    assert want, "the evaluator reads this answer"
    parsed = F.parse(text, "qwen3_vl", (W, H))
    assert parsed.problems == []
    assert [g.phrase for g in parsed] == [label for label, _ in want]
    assert_boxes(parsed, [box for _, box in want])


def test_qwen3_vl_random_renders_agree_with_the_authors_evaluator():
    rng = random.Random(3)
    for _ in range(50):
        boxes = []
        for _ in range(rng.randint(1, 4)):
            x1, y1 = rng.uniform(0, W - 20), rng.uniform(0, H - 20)
            boxes.append((f"obj{len(boxes)}", (x1, y1, rng.uniform(x1 + 10, W), rng.uniform(y1 + 10, H))))
        text = F.render(boxes, "qwen3_vl", (W, H))
        want = qwen3_vl_odinw(text)
        assert_boxes(F.parse(text, "qwen3_vl", (W, H)), [box for _, box in want])
        assert_boxes(F.parse(text, "qwen3_vl", (W, H)), [box for _, box in boxes], tol=W / 1000)


# ---- GLM-4.1V / 4.5V / 4.6V ----------------------------------------------------------------------------------------


def glm_v_boxes(answer, image_size=(W, H)):
    """zai-org/GLM-V: glmv_reward/src/glmv_reward/utils/text.py find_boxed_content (every stretch between
    <|begin_of_box|> and <|end_of_box|>, stripped), read as the README's "Grounding" section defines the numbers:
    [x1, y1, x2, y2], each normalized by the width (x) or height (y) and scaled by 1000, in brackets of any style.
    A stretch that is not four-number groups is not a box."""
    w, h = image_size
    out = []
    for inside in re.findall(r"<\|begin_of_box\|>(.*?)<\|end_of_box\|>", answer, re.S):
        nums = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", inside)]
        if not nums or len(nums) % 4 or re.search(r"[^\d\s.,\[\]()<>]", inside.strip()):
            continue
        for i in range(0, len(nums), 4):
            x1, y1, x2, y2 = nums[i : i + 4]
            out.append((x1 / 1000 * w, y1 / 1000 * h, x2 / 1000 * w, y2 / 1000 * h))
    return out


GLM_ANSWERS = [
    # GLM-4.5V answering the README's prompt "Help me to locate <expr> in the image and give me its bounding boxes."
    "<think>The man in the blue coat stands on the left.</think>The man is located at "
    "<|begin_of_box|>[[250,250,750,1000]]<|end_of_box|>.",
    # GLM-4.1V-Thinking's answer block
    "<think>...</think><answer><|begin_of_box|>[250,250,750,1000]<|end_of_box|></answer>",
    "<|begin_of_box|>(250,250,750,1000)<|end_of_box|>",
    # several objects, no labels
    "<|begin_of_box|>[[100,500,200,750],[300,500,400,750]]<|end_of_box|>",
    "<|begin_of_box|>[[100, 500, 200, 750], [300, 500, 400, 750], [0, 0, 1000, 1000]]<|end_of_box|>",
]


@pytest.mark.parametrize("text", GLM_ANSWERS)
def test_glm4v_agrees_with_glm_vs_box_tokens_and_per_mille_convention(text):
    parsed = F.parse(text, "glm4v", (W, H))
    assert parsed.problems == []
    assert_boxes(parsed, glm_v_boxes(text))


def test_glm4v_box_tokens_around_other_answers_are_not_boxes():
    """GLM-V's reward code reads <|begin_of_box|>42<|end_of_box|> as the answer 42: the same tokens, no box."""
    for text in [
        "<|begin_of_box|>42<|end_of_box|>",
        "<|begin_of_box|>B<|end_of_box|>",
        "<|begin_of_box|>1, 2<|end_of_box|>",
    ]:
        parsed = F.parse(text, "glm4v", (W, H))
        assert glm_v_boxes(text) == [] and len(parsed) == 0
        assert any("no coordinates" in p for p in parsed.problems)


def test_glm4v_random_renders_agree_with_glm_vs_reading():
    rng = random.Random(4)
    for _ in range(50):
        boxes = []
        for _ in range(rng.randint(1, 4)):
            x1, y1 = rng.uniform(0, W - 20), rng.uniform(0, H - 20)
            boxes.append(
                (
                    rng.choice(["a cup", "a man", None]),
                    (x1, y1, rng.uniform(x1 + 10, W), rng.uniform(y1 + 10, H)),
                )
            )
        text = F.render(boxes, "glm4v", (W, H))
        assert_boxes(F.parse(text, "glm4v", (W, H)), glm_v_boxes(text))
        assert_boxes(F.parse(text, "glm4v", (W, H)), [box for _, box in boxes], tol=W / 1000)


# ---- PaliGemma -----------------------------------------------------------------------------------------------------


def big_vision_encode(box, size=(W, H)):
    """big_vision's PaliGemma targets (refcoco_mask2str): normalized (y1, x1, y2, x2), round(v * 1023), clipped
    to 0..1023, as <locNNNN> tokens."""
    w, h = size
    x1, y1, x2, y2 = box
    return "".join(f"<loc{min(max(round(v * 1023), 0), 1023):04d}>" for v in (y1 / h, x1 / w, y2 / h, x2 / w))


def big_vision_decode(tokens, size=(W, H)):
    """big_vision's PaliGemma evaluator: loc / 1023 in (y1, x1, y2, x2) order, then by the image size."""
    w, h = size
    y1, x1, y2, x2 = (int(v) / 1023 for v in re.findall(r"<loc(\d{4})>", tokens))
    return (x1 * w, y1 * h, x2 * w, y2 * h)


def test_paligemma_scale_is_big_visions_1023():
    # the whole image is <loc0000><loc0000><loc1023><loc1023> and reads back as the whole image (1024 would not)
    assert F.format_box((0, 0, W, H), "paligemma", (W, H)) == "<loc0000><loc0000><loc1023><loc1023>"
    assert_boxes(F.parse("<loc0000><loc0000><loc1023><loc1023> wall", "paligemma", (W, H)), [(0, 0, W, H)])
    # y first: a wide, short box on the 640x480 image
    text = "<loc0341><loc0000><loc0682><loc1023> table ; <loc0000><loc0512><loc0256><loc0767> lamp"
    parsed = F.parse(text, "paligemma", (W, H))
    assert parsed.problems == [] and [g.phrase for g in parsed] == ["table", "lamp"]
    assert_boxes(
        parsed,
        [(0.0, 341 / 1023 * H, W, 682 / 1023 * H), (512 / 1023 * W, 0.0, 767 / 1023 * W, 256 / 1023 * H)],
    )


def test_paligemma_agrees_with_big_visions_encoder_and_evaluator():
    rng = random.Random(3)
    for size in ((W, H), (480, 640), (1000, 333)):
        w, h = size
        boxes = [(0, 0, w, h), (0.3, 0.2, w - 0.4, h - 0.1)]
        for _ in range(300):
            x1, y1 = rng.uniform(0, w - 2), rng.uniform(0, h - 2)
            boxes.append((x1, y1, rng.uniform(x1 + 1, w), rng.uniform(y1 + 1, h)))
        for box in boxes:
            tokens = F.format_box(box, "paligemma", size)
            assert tokens == big_vision_encode(box, size)
            parsed = F.parse(tokens + " thing", "paligemma", size)
            if parsed:  # a box thinner than one bin collapses to zero area and is dropped
                assert parsed[0].box == pytest.approx(big_vision_decode(tokens, size), abs=1e-9)
