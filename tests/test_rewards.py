"""The rewards of `spr grpo` (spr.rewards): exact values on hand-written answers, through TRL's reward-function
signature, including unparseable, empty, crop-view and out-of-image answers."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from spr import formats, prompts
from spr.data.records import Region
from spr.registry import UnknownName
from spr.rewards import (
    REWARDS,
    completion_text,
    make_rewards,
    read_answers,
    rec_columns,
    region_columns,
    spr_scorer,
)
from spr.sampling import make_candidate
from spr.scoring import ScoreConfig, SemanticScorer

SIZE = (100, 100)
GT = (10.0, 10.0, 50.0, 50.0)


def batch(columns: dict, n: int) -> dict:
    """The columns of one prompt as TRL passes them: repeated for each of its ``n`` completions."""
    return {k: [v] * n for k, v in columns.items()}


def rec(fmt="plain_pixel", size=SIZE, box=GT):
    return rec_columns("s1", "img.png", size, "the red box", box, "Where is the red box?", fmt)


def rewards_of(answers: list[str], columns: dict, names=("iou", "iou_at_t", "iou_squared", "format"), **kw):
    funcs = make_rewards(list(names), **kw)
    cols = batch(columns, len(answers))
    return {f.__name__: f(prompts=[[]] * len(answers), completions=answers, **cols) for f in funcs}


def test_rec_rewards_exact_values_on_hand_written_answers():
    answers = [
        "[10, 10, 50, 50]",  # the ground truth
        "[30, 10, 70, 50]",  # half overlapping: IoU 800 / 2400
        "the box [10, 10, 50, 30]",  # IoU exactly 0.5: iou_at_t counts t itself
        "[10, 10, 50, 50] and [0, 0, 100, 100]",  # the first box is the answer
        "",  # empty
        "the red box is on the left",  # no box
        "[10, 10, 50",  # truncated
        "[5, 5]",  # a point, not a box
    ]
    got = rewards_of(answers, rec())
    third = 800 / 2400
    assert got["iou"] == pytest.approx([1.0, third, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0], abs=1e-12)
    assert got["iou_at_t"] == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert got["iou_squared"] == pytest.approx([1.0, third**2, 0.25, 1.0, 0.0, 0.0, 0.0, 0.0], abs=1e-12)
    assert got["format"] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_repaired_boxes_earn_no_iou_reward_unless_lenient():
    answers = [
        "[50, 50, 150, 150]",  # half outside the 100x100 image: clipped, it would be the ground truth
        "[120, 120, 150, 150]",  # wholly outside
        "[100, 100, 50, 50]",  # corners swapped: reordered, it would be the ground truth
        "[50, 50, 100, 100] and [100, 100, 50, 50]",  # a later box repaired: the answer is malformed
        "[50, 50, 50, 80] [50, 50, 100, 100]",  # the first box has no area: dropped, the second would score
        "[50.0, 50.5, 100, 100]",  # inside the image, floats: read as written
    ]
    names = ("iou", "iou_at_t", "iou_squared", "format")
    got = rewards_of(answers, rec(box=(50.0, 50.0, 100.0, 100.0)), names)
    close = 50 * 49.5 / 2500
    assert got["iou"] == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0, close], abs=1e-12)
    assert got["iou_at_t"] == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert got["iou_squared"] == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0, close**2], abs=1e-12)
    assert got["format"] == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    lenient = rewards_of(answers, rec(box=(50.0, 50.0, 100.0, 100.0)), names, lenient=True)
    assert lenient["iou"] == pytest.approx([1.0, 0.0, 1.0, 1.0, 1.0, close], abs=1e-12)
    assert lenient["iou_at_t"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert lenient["format"] == got["format"]


def test_the_issue_s_repaired_qwen2_5_vl_answers_score_zero():
    """The two answers of issue 26 (500x333 image, ground truth [130, 22, 406, 190]): swapped corners had 0.71,
    a box past the image's edges 0.03; VLM-R1 and Perception-R1 give both 0. What spr reads beyond their regex
    (floats, spaces inside brackets, fenced JSON without <answer> tags) still scores."""
    cols = rec_columns(
        "s", "img.png", (500, 333), "x", (130, 22, 406, 190), "p", "qwen2_5_vl", {"input_size": (500, 333)}
    )
    answers = [
        '<answer>{"bbox_2d": [431,41,119,209]}</answer>',
        '<answer>{"bbox_2d": [-23,176,309,595]}</answer>',
        '<answer>{"bbox_2d": [130.5, 22, 406, 190]}</answer>',
        '```json\n[{"bbox_2d": [ 130 , 22, 406, 190 ]}]\n```',
    ]
    got = rewards_of(answers, cols, ("iou", "format"))
    assert got["iou"] == pytest.approx([0.0, 0.0, 275.5 / 276, 1.0], abs=1e-12)
    assert got["format"] == [0.0, 0.0, 1.0, 1.0]
    lenient = rewards_of(answers, cols, ("iou",), lenient=True)["iou"]
    assert lenient[0] > 0.7 and lenient[1] > 0.02  # what the old default paid


def test_iou_at_t_threshold_is_the_config_s():
    answers = ["[30, 10, 70, 50]"]  # IoU 1/3
    assert rewards_of(answers, rec(), ["iou_at_t"], threshold=0.3)["iou_at_t"] == [1.0]
    assert rewards_of(answers, rec(), ["iou_at_t"], threshold=0.34)["iou_at_t"] == [0.0]


def test_qwen2_vl_answers_are_read_from_the_token_ids_with_special_tokens_kept():
    size = (640, 480)
    text = "<|object_ref_start|>a dog<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>"
    cols = batch(rec("qwen2_vl", size, (64.0, 96.0, 320.0, 384.0)), 2)
    # TRL's decoded completions drop special tokens; the ids, decoded by the adapter, keep them
    stripped = [[{"role": "assistant", "content": "a dog(100,200),(500,800)"}]] * 2
    texts = {1: text, 2: "<|box_start|>(100,200),(500,<|box_end|>"}
    iou, fmt = make_rewards(["iou", "format"], decode=lambda ids: texts[ids[0]])
    assert iou(completions=stripped, completion_ids=[[1], [2]], **cols) == [1.0, 0.0]
    assert fmt(completions=stripped, completion_ids=[[1], [2]], **cols) == [1.0, 0.0]
    assert iou(completions=stripped, **cols) == [0.0, 0.0]  # without ids: the stripped text has no box
    assert iou(completions=[[{"role": "assistant", "content": text}]] * 2, **cols) == [1.0, 1.0]


def test_completion_text_of_every_completion_shape():
    assert completion_text("a [1, 2, 3, 4]") == "a [1, 2, 3, 4]"
    assert completion_text([{"role": "assistant", "content": "x"}]) == "x"
    assert (
        completion_text(
            [{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "image"}]}]
        )
        == "x"
    )
    assert completion_text(None) == "" and completion_text([]) == ""


# ------------------------------------------------------------------------------------------------ spr reward

REGION = Region(
    id="r1",
    image="img.png",
    image_size=[100, 100],
    region_box=[20.0, 20.0, 80.0, 80.0],
    objects=[
        {"label": "red box", "box": [20.0, 20.0, 50.0, 50.0]},
        {"label": "blue box", "box": [50.0, 50.0, 80.0, 80.0]},
    ],
)


class PhraseCount(SemanticScorer):
    """S_sem = number of grounded phrases / 10: exact, and shows the scorer gets the answer's phrases."""

    name = "phrase_count"

    def score(self, state, items):
        return [len(it.phrases) / 10 for it in items]


def region_prompt(template_id: str):
    return prompts.render(prompts.BUILTIN[template_id], REGION, "plain_pixel")


def spr_values(answers, template_id="crop", lam=0.8, semantic=None):
    scorer = spr_scorer(ScoreConfig(lam=lam), semantic=semantic or PhraseCount())
    columns = region_columns(REGION, region_prompt(template_id), "plain_pixel")
    (spr,) = make_rewards(["spr"], scorer=scorer)
    return spr(completions=answers, **batch(columns, len(answers)))


def test_spr_reward_on_a_crop_view_shifts_boxes_back_to_the_image():
    # The crop prompt shows (20, 20)-(80, 80) as a 60x60 image: the answer's boxes are in that view.
    answers = [
        "a red box [0, 0, 30, 30] and a blue box [30, 30, 60, 60]",  # both objects exactly
        "a red box [0, 0, 30, 30]",  # one of two: S_loc = (1 + 0) / 2
        "a red box [0, 0, 30, 30] and a blue box [30, 30, 90, 90]",  # the second runs out of the crop: clipped
        "a red box [20, 20, 50, 50]",  # the box in image coordinates: wrong in the crop view
        "a red box and a blue box",  # no box: S_loc = 0
        "",
    ]
    got = spr_values(answers)
    # total = 0.8 * phrases / 10 + 0.2 * S_loc; the last two ground no phrase
    assert got == pytest.approx(
        [0.8 * 0.2 + 0.2, 0.8 * 0.1 + 0.2 * 0.5, 0.8 * 0.2 + 0.2, 0.8 * 0.1, 0.0, 0.0]
    )


def test_spr_reward_on_the_full_view_and_lambda():
    answers = ["a red box [20, 20, 50, 50] and a blue box [50, 50, 80, 80]", "a red box [20, 20, 50, 50]"]
    assert spr_values(answers, "region_box", lam=0.0) == pytest.approx([1.0, 0.5])
    assert spr_values(answers, "region_box", lam=1.0) == pytest.approx([0.2, 0.1])


def test_spr_reward_is_the_total_spr_score_gives_the_same_candidate():
    """The same candidate record scored by `spr score`'s RegionScorer (refinement on) has the same total."""
    from spr.scoring import RegionScorer

    prompt = region_prompt("crop")
    answers = [
        "a red box [2, 1, 33, 29] and a blue box [28, 33, 59, 61]",
        "a blue box [0, 0, 20, 20]",
        "garbage [",
    ]
    rewards = spr_values(answers)
    scorer = RegionScorer(PhraseCount(), ScoreConfig())
    candidates = [make_candidate(REGION, prompt, i, text, "plain_pixel") for i, text in enumerate(answers)]
    scores = scorer.score_region(REGION, candidates, Counter())
    assert rewards == pytest.approx([s.total for s in scores if not s.refined])


def test_spr_reward_does_not_apply_to_rec_prompts_nor_iou_to_descriptions():
    scorer = spr_scorer(ScoreConfig(), semantic=PhraseCount())
    spr, iou, fmt = make_rewards(["spr", "iou", "format"], scorer=scorer)
    region = region_columns(REGION, region_prompt("region_box"), "plain_pixel")
    cols = {k: [region[k], rec()[k]] for k in region}
    answers = ["a red box [20, 20, 50, 50]", "[10, 10, 50, 50]"]
    assert spr(completions=answers, **cols) == [pytest.approx(0.8 * 0.1 + 0.2 * 0.5), None]
    assert iou(completions=answers, **cols) == [None, 1.0]
    assert fmt(completions=answers, **cols) == [1.0, 1.0]


def test_answers_are_candidate_records_in_original_pixels():
    (a,) = read_answers(
        ["a red box [0, 0, 30, 30]"], **batch(region_columns(REGION, region_prompt("crop"), "plain_pixel"), 1)
    )
    assert a.candidate.crop_box == [20, 20, 80, 80] and a.candidate.fmt == "plain_pixel"
    assert a.usable.groundings[0]["box"] == [20.0, 20.0, 50.0, 50.0]
    assert json.loads(region_columns(REGION, region_prompt("crop"), "plain_pixel")["region"])["id"] == "r1"


def test_reward_names_and_unknown_rewards():
    scorer = spr_scorer(ScoreConfig(), semantic=PhraseCount())
    assert [f.__name__ for f in make_rewards(list(REWARDS), scorer=scorer)] == list(REWARDS)
    with pytest.raises(UnknownName, match="unknown reward 'bleu'; available: format, iou, iou_at_t"):
        make_rewards(["bleu"])
    with pytest.raises(ValueError, match="reward 'iou' is already registered"):
        REWARDS.register("iou", lambda **_: None)


def test_the_format_reward_reads_the_model_s_format():
    box = formats.format_box(GT, "qwen2_vl", image_size=SIZE)
    got = rewards_of([box, "[10, 10, 50, 50]"], rec("qwen2_vl"), ["format"])
    assert got["format"] == [1.0, 0.0]  # a plain box is not Qwen2-VL's format
