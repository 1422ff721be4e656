"""The rewards, the Ref-L4 submission and the DPO rows against the rules of the tools peers use (issue 26):

- VLM-R1's REC reward (om-ai-lab/VLM-R1, src/open-r1-multimodal/src/open_r1/vlm_modules/qwen_module.py:
  ``iou_reward``, ``format_reward_rec``) and Perception-R1's grounding reward (linkangheng/PR1,
  src/open_r1/rewards.py ``pr1_grounding_reward`` with src/open_r1/utils.py ``extract_bbox_answer``,
  ``parse_float_sequence_within``, ``compute_iou``) against `spr grpo`'s ``iou``, ``iou_squared`` and
  ``format`` rewards on generated answers;
- Ref-L4's evaluator (JierunChen/Ref-L4, ref_l4/evaluation.py ``RefL4Evaluator.evaluate`` with
  ref_l4/overlaps.py ``bbox_overlaps``) on the submission `spr eval rec` writes, and its size buckets;
- TRL 1.16's vision DPO collator (trl/trainer/dpo_trainer.py ``DataCollatorForVisionPreference``), run as it
  is on every row shape, against ``check_row``.

The peers' rules are re-implemented below in a few lines each: the steps the cited code takes, not its text.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from evaluate_fixtures import write_images
from test_evaluate_layouts import make_refl4, refl4_rows
from test_evaluate_predict import ScriptedAdapter, _box_text, run_task

from spr.evaluate import rec, refl4
from spr.rewards import make_rewards, rec_columns
from spr.training.rows import RowProblem, check_row

# ------------------------------------------------------------------------------------------------ VLM-R1

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
INT_BOX = re.compile(r"\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)]")
VLM_R1_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?\{.*\[\d+,\s*\d+,\s*\d+,\s*\d+\].*\}.*?</answer>", re.DOTALL)  # fmt: skip


def vlm_r1_iou(text: str, gt, input_size, image_size) -> float:
    """VLM-R1's iou_reward: the first ``[int, int, int, int]`` inside <answer>, scaled from the model input to
    the image, IoU with an inclusive-pixel intersection (max(x1) < min(x2) - 1); any exception leaves 0."""
    m = ANSWER_TAG.search(text)
    found = INT_BOX.search(m.group(1).strip()) if m else None
    if not found:
        return 0.0
    (iw, ih), (w, h) = input_size, image_size
    x1, y1, x2, y2 = (int(v) for v in found.groups())
    b = [x1 / iw * w, y1 / ih * h, x2 / iw * w, y2 / ih * h]
    ix1, iy1, ix2, iy2 = (
        max(b[0], gt[0]),
        max(b[1], gt[1]),
        min(b[2] - 1, gt[2] - 1),
        min(b[3] - 1, gt[3] - 1),
    )
    inter = (ix2 - ix1 + 1) * (iy2 - iy1 + 1) if ix1 < ix2 and iy1 < iy2 else 0
    union = (b[2] - b[0]) * (b[3] - b[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
    try:
        return float(inter) / union
    except ZeroDivisionError:
        return 0.0


def spr_rewards(texts, gt, image_size, fmt, geometry=None, names=("iou", "iou_squared", "format"), **kw):
    cols = rec_columns("s", "img.png", image_size, "the object", gt, "p", fmt, geometry)
    batch = {k: [v] * len(texts) for k, v in cols.items()}
    return {f.__name__: f(completions=list(texts), **batch) for f in make_rewards(list(names), **kw)}


def _sliver(a, b) -> bool:
    """An overlap of at most one pixel on an axis, which VLM-R1's inclusive-pixel rule counts as none."""
    return any(0 < min(a[k + 2], b[k + 2]) - max(a[k], b[k]) <= 1 for k in (0, 1))


def _raw_iou(a, b) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _answer_boxes(rng: random.Random, w: int, h: int):
    """(kind, [x1, y1, x2, y2]) in a w x h model input: inside and ordered, corners swapped, a negative
    coordinate, or past the far edge."""
    x1, x2 = sorted(rng.sample(range(0, w + 1), 2))
    y1, y2 = sorted(rng.sample(range(0, h + 1), 2))
    yield "inside", [x1, y1, x2, y2]
    yield "swapped", [x2, y1, x1, y2] if rng.random() < 0.5 else [x1, y2, x2, y1]
    yield "negative", [-rng.randint(1, 40), y1, x2, y2]
    yield "beyond", [x1, y1, w + rng.randint(3, 60), y2] if rng.random() < 0.5 else [x1, y1, x2, h + rng.randint(3, 60)]  # fmt: skip


def test_vlm_r1s_rec_reward_agrees_on_well_formed_boxes_and_spr_pays_no_malformed_one():
    """Qwen2.5-VL answers (pixels of the resized input) on a 500x333 image read as 504x336: where VLM-R1 gives 0
    (swapped corners, negative numbers) spr gives 0; on a box inside the image the two IoUs are equal; past the
    far edge VLM-R1 pays the raw box's IoU and spr 0 (lenient: the clipped box's, never less than the raw)."""
    rng = random.Random(26)
    size, inp = (500, 333), (504, 336)
    texts, gts, kinds = [], [], []
    for _ in range(150):
        x1, y1 = rng.uniform(0, 400), rng.uniform(0, 250)
        gt = (x1, y1, rng.uniform(x1 + 10, 500), rng.uniform(y1 + 10, 333))
        for kind, box in _answer_boxes(rng, *inp):
            texts.append(f'<think>it is there</think><answer>{{"bbox_2d": {json.dumps(box)}, "label": "the object"}}</answer>')  # fmt: skip
            gts.append(gt)
            kinds.append((kind, box))
    checked = {k: 0 for k in ("inside", "swapped", "negative", "beyond")}
    for text, gt, (kind, box) in zip(texts, gts, kinds):
        got = spr_rewards([text], gt, size, "qwen2_5_vl", {"input_size": inp})
        lenient = spr_rewards([text], gt, size, "qwen2_5_vl", {"input_size": inp}, ("iou",), lenient=True)[
            "iou"
        ][0]
        theirs = vlm_r1_iou(text, gt, inp, size)
        their_format = 1.0 if VLM_R1_FORMAT.search(text) else 0.0
        ours = got["iou"][0]
        assert got["format"][0] <= their_format
        pixels = [box[0] / inp[0] * size[0], box[1] / inp[1] * size[1], box[2] / inp[0] * size[0], box[3] / inp[1] * size[1]]  # fmt: skip
        if kind == "inside":
            if _sliver(pixels, gt):
                continue
            assert ours == pytest.approx(theirs, abs=1e-9) and lenient == pytest.approx(theirs, abs=1e-9)
            assert got["format"][0] == their_format == 1.0
        elif kind in ("swapped", "negative"):
            assert theirs == 0.0 and ours == 0.0 and got["format"][0] == 0.0
        else:  # VLM-R1 pays the raw box, spr nothing (lenient: the clipped box, which overlaps no less)
            assert ours == 0.0 <= theirs and got["format"][0] == 0.0
            assert lenient >= _raw_iou(pixels, gt) - 1e-12
        checked[kind] += 1
    assert min(checked.values()) >= 100, checked

    # what spr reads beyond VLM-R1's integer regex still scores, in full
    gt = (130.0, 22.0, 406.0, 190.0)
    more = [
        '<answer>{"bbox_2d": [130.0, 22.0, 406.0, 190.0]}</answer>',  # floats
        '<answer>{"bbox_2d": [ 130, 22, 406, 190 ]}</answer>',  # spaces inside the brackets
        '```json\n[{"bbox_2d": [130, 22, 406, 190], "label": "the object"}]\n```',  # fenced JSON, no tags
    ]
    assert [vlm_r1_iou(t, gt, size, size) for t in more] == [0.0, 0.0, 0.0]
    assert spr_rewards(more, gt, size, "qwen2_5_vl", {"input_size": size})["iou"] == pytest.approx([1.0] * 3)


# ------------------------------------------------------------------------------------------ Perception-R1

NUM = r"(-?\d+(?:\.\d+)?)"
PR1_PATTERNS = (
    re.compile(rf"\[\s*{NUM},\s*{NUM},\s*{NUM},\s*{NUM}\s*\]"),
    re.compile(rf"\(\s*{NUM},\s*{NUM},\s*{NUM},\s*{NUM}\s*\)"),
    re.compile(rf"\(\s*{NUM},\s*{NUM}\),\s*\(\s*{NUM},\s*{NUM}\)"),
)


def pr1_reward(text: str, gt_grid) -> float | None:
    """Perception-R1's pr1_grounding_reward: the first four numbers of its three patterns ([0, 0, 0, 0] if none;
    scaled by 1000 unless the text holds <|box_start|>), raw IoU with the ground truth in the same 0-1000 grid,
    squared. None where its compute_iou divides by zero (the run would stop)."""
    box = [0.0, 0.0, 0.0, 0.0]
    for pattern in PR1_PATTERNS:
        m = pattern.search(text)
        if m:
            box = [float(v) for v in m.groups()]
            break
    if "<|box_start|>" not in text:
        box = [int(v * 1000) for v in box]
    inter = max(0, min(box[2], gt_grid[2]) - max(box[0], gt_grid[0])) * max(0, min(box[3], gt_grid[3]) - max(box[1], gt_grid[1]))  # fmt: skip
    union = (
        (box[2] - box[0]) * (box[3] - box[1]) + (gt_grid[2] - gt_grid[0]) * (gt_grid[3] - gt_grid[1]) - inter
    )
    if union == 0:
        return None
    return (inter / union) ** 2


def test_perception_r1s_reward_agrees_on_well_formed_boxes_and_spr_pays_no_malformed_one():
    """Qwen2-VL answers in its 0-1000 grid, ground truth in the same grid (IoU does not change with the scale
    of an axis): inside the image spr's iou_squared equals Perception-R1's reward; swapped corners get 0 from
    both; a box outside the grid gets Perception-R1's raw IoU squared and 0 from spr."""
    rng = random.Random(2026)
    size = (640, 480)
    checked = {k: 0 for k in ("inside", "swapped", "negative", "beyond")}
    for _ in range(150):
        gx1, gy1 = rng.uniform(0, 900), rng.uniform(0, 900)
        gt_grid = (gx1, gy1, rng.uniform(gx1 + 20, 1000), rng.uniform(gy1 + 20, 1000))
        gt = (
            gt_grid[0] / 1000 * 640,
            gt_grid[1] / 1000 * 480,
            gt_grid[2] / 1000 * 640,
            gt_grid[3] / 1000 * 480,
        )
        for kind, (x1, y1, x2, y2) in _answer_boxes(rng, 1000, 1000):
            text = f"<|object_ref_start|>the object<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
            theirs = pr1_reward(text, gt_grid)
            if theirs is None:
                continue
            got = spr_rewards([text], gt, size, "qwen2_vl")
            ours = got["iou_squared"][0]
            if kind == "inside":
                assert ours == pytest.approx(theirs, abs=1e-9) and got["format"][0] == 1.0
            elif kind == "swapped":
                assert theirs == 0.0 and ours == 0.0
            else:
                assert ours == 0.0 <= theirs and got["format"][0] == 0.0
            checked[kind] += 1
    assert min(checked.values()) >= 100, checked


# ------------------------------------------------------------------------------------------------ Ref-L4


def refl4_evaluate(gt_rows: list[dict], predictions: list[dict]) -> dict:
    """RefL4Evaluator.evaluate, the steps that decide whether and what it scores: duplicate prediction ids and a
    ground-truth id missing from the predictions are ValueErrors; gt [x, y, w, h] -> xyxy; IoU as mmdet's aligned
    bbox_overlaps (union floored at eps 1e-6); acc@t counts IoU > t; size by sqrt(w * h): < 128 small,
    <= 256 medium, else large."""
    by_id = {p["id"]: p for p in predictions}
    if len(by_id) != len(predictions):
        raise ValueError("Duplicate ids found in the predictions.")
    ious, sizes = [], []
    for gt in gt_rows:
        x, y, w, h = gt["bbox"]
        if gt["id"] not in by_id:
            raise ValueError(f"Id {gt['id']} not found in the predictions.")
        p = by_id[gt["id"]]
        b = list(p["pred_bbox"])
        if p["format"] == "xywh":
            b = [b[0], b[1], b[0] + b[2], b[1] + b[3]]
        g = [x, y, x + w, y + h]
        overlap = max(0.0, min(b[2], g[2]) - max(b[0], g[0])) * max(0.0, min(b[3], g[3]) - max(b[1], g[1]))
        union = max((g[2] - g[0]) * (g[3] - g[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap, 1e-6)
        ious.append(overlap / union)
        size = math.sqrt(w * h)
        sizes.append("small" if size < 128 else "medium" if size <= 256 else "large")
    ious = np.array(ious)
    return {"n": len(ious), "hits@0.5": int((ious > 0.5).sum()), "acc@0.5": float((ious > 0.5).mean()), "sizes": sizes}  # fmt: skip


def _refl4_with_an_unusable_row(root):
    """Ref-L4's tree (make_refl4) whose val file holds a third annotation with a zero-width box, which spr's
    reader cannot use (and skips, with a problem)."""
    make_refl4(root)
    val = [r for r in refl4_rows() if r["split"] == "val"]
    val.append({**val[0], "id": 99, "bbox": [10.0, 10.0, 0.0, 20.0], "caption": "A line in the picture."})
    pq.write_table(pa.Table.from_pylist(val), root / "ref-l4-val.parquet")
    return val


def test_refl4s_evaluator_scores_every_submission_spr_eval_rec_writes(tmp_path):
    root = tmp_path / "Ref-L4"
    val = _refl4_with_an_unusable_row(root)
    adapter = ScriptedAdapter(
        {"The red box in the picture.": _box_text("img1", 0)}
    )  # the blue box: no answer

    m = run_task(rec, "scripted", root, tmp_path / "run", adapter, splits=["val"])
    assert m["n"] == 2 and m["refl4_misses"] == 1  # the zero-width row: not evaluated, but in the submission
    assert any("1 Ref-L4 annotation(s) without a prediction" in p for p in m["problems"])
    sub = json.loads((tmp_path / "run" / refl4.SUBMISSION_FILE).read_text())
    assert [r["id"] for r in sub] == [0, 1, 99]
    theirs = refl4_evaluate(val, sub)  # before the fix: ValueError: Id 99 not found in the predictions
    assert theirs["n"] == 3 and theirs["hits@0.5"] == round(m["acc@0.5"] * m["n"]) == 1
    # the whole release: both splits' ids, the unusable one among them
    m_all = run_task(rec, "scripted", root, tmp_path / "all", ScriptedAdapter(adapter.answers))
    everything = val + [r for r in refl4_rows() if r["split"] == "test"]
    assert (
        refl4_evaluate(everything, json.loads((tmp_path / "all" / refl4.SUBMISSION_FILE).read_text()))["n"]
        == 5
    )
    assert m_all["refl4_misses"] == 1

    # --limit: part of a split, so no submission that the evaluator would refuse (or score as misses)
    limited = run_task(rec, "scripted", root, tmp_path / "limited", ScriptedAdapter(adapter.answers), limit=1)
    assert limited["n"] == 1 and limited["refl4_submission"] is None
    assert not (tmp_path / "limited" / refl4.SUBMISSION_FILE).exists()
    assert any("not written: --limit 1" in p for p in limited["problems"])


def test_refl4_size_buckets_are_its_evaluators_on_the_files_own_numbers(tmp_path):
    """sqrt(w * h) on the file's [x, y, w, h], not the area of the converted x1y1x2y2 box: [0.1, 0.7, 128.0,
    128.0] has x2 - x1 = 127.99999999999999 and was small; Ref-L4 says medium."""
    rng = random.Random(4)
    boxes = [[0.1, 0.7, 128.0, 128.0], [0.3, 0.7, 256.0, 256.0]]
    for _ in range(300):
        edge = rng.choice([128.0, 256.0])
        w = edge * rng.choice([1.0, 1 + 1e-15, 1 - 1e-15, rng.uniform(0.9, 1.1)])
        h = edge * edge / w if rng.random() < 0.5 else rng.uniform(0.5, 2) * edge
        boxes.append([rng.choice([0.1, 0.3, 0.7, 7.9, rng.uniform(0, 50)]), rng.uniform(0, 50), w, h])
    rows = [
        {"id": i, "caption": f"thing {i}", "bbox": b, "file_name": "objects365_v2_00000001.jpg", "split": "val",
         "ori_category_id": "o365_1"}
        for i, b in enumerate(boxes)
    ]  # fmt: skip
    data = tmp_path / "ref-l4-val.json"
    data.write_text(json.dumps(rows))
    write_images(tmp_path / "images")  # one scene image under Ref-L4's name, big enough for every box
    from PIL import Image

    Image.new("RGB", (600, 600), "white").save(tmp_path / "images" / "objects365_v2_00000001.jpg")
    answers = {r["caption"]: "" for r in rows}
    m = run_task(
        rec, "scripted", data, tmp_path / "run", ScriptedAdapter(answers), images=str(tmp_path / "images")
    )
    theirs = refl4_evaluate(rows, json.loads((tmp_path / "run" / refl4.SUBMISSION_FILE).read_text()))["sizes"]
    records = {
        r["id"]: r for r in map(json.loads, (tmp_path / "run" / "predictions.jsonl").read_text().splitlines())
    }
    assert [rec.bucket_of(records[str(r["id"])]) for r in rows] == theirs
    assert (
        theirs[:2] == ["medium", "medium"] and rec.size_of((0.1, 0.7, 128.1, 128.7)) == "small"
    )  # the old rule
    assert [m[f"n_{s}"] for s in rec.SIZES] == [theirs.count(s) for s in rec.SIZES]


# ------------------------------------------------------------------------------------------------ TRL DPO


def _prompts():
    text = {"type": "text", "text": "Describe the region."}
    image = {"type": "image"}
    return {
        "image then text": [{"role": "user", "content": [image, text]}],
        "plain text (TRL puts the image in)": [{"role": "user", "content": "Describe the region."}],
        "system then image": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [image, text]},
        ],  # fmt: skip
        "text part only": [{"role": "user", "content": [text]}],
        "two image parts": [{"role": "user", "content": [image, image, text]}],
        "plain text and an image part": [
            {"role": "user", "content": "Look."},
            {"role": "user", "content": [image, text]},
        ],  # fmt: skip
        "image part, then a plain user turn": [
            {"role": "user", "content": [image, text]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "And?"},
        ],  # fmt: skip
        "unknown role": [{"role": "human", "content": [image, text]}],
    }


def _answers():
    text = {"type": "text", "text": "A red box."}
    return {
        "text part": [{"role": "assistant", "content": [text]}],
        "plain text": [{"role": "assistant", "content": "A red box."}],
        "user turn, then the answer": [
            {"role": "user", "content": "Sure?"},
            {"role": "assistant", "content": [text]},
        ],  # fmt: skip
        "image part": [{"role": "assistant", "content": [{"type": "image"}, text]}],
        "image part in a user turn": [
            {"role": "user", "content": [{"type": "image"}]},
            {"role": "assistant", "content": [text]},
        ],  # fmt: skip
    }


def test_check_row_refuses_exactly_the_rows_trls_vision_dpo_collator_refuses(tiny_model_dir, tmp_path):
    from PIL import Image
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from spr import models

    adapter = models.load(str(tiny_model_dir("qwen2_vl")))
    collator = DataCollatorForVisionPreference(adapter.processor)
    image_path = write_images(tmp_path)["img1"]
    image = Image.open(image_path).convert("RGB")
    cases = [(p, "text part", "text part") for p in _prompts()]
    cases += [("image then text", a, "text part") for a in _answers()]
    cases += [("image then text", "text part", a) for a in _answers()]
    refused = set()
    for prompt, chosen, rejected in cases:
        row = {"images": [str(image_path)], "prompt": _prompts()[prompt], "chosen": _answers()[chosen],
               "rejected": _answers()[rejected]}  # fmt: skip
        try:
            collator([{**copy.deepcopy(row), "images": [image]}])
            trl_ok = True
        except (ValueError, KeyError, TypeError) as e:
            trl_ok = False
            trl_error = str(e)
        try:
            check_row(row, tmp_path, adapter)
            ours_ok = True
        except RowProblem as e:
            ours_ok = False
            refused.add((prompt, chosen, rejected, str(e)))
        assert ours_ok == trl_ok, (prompt, chosen, rejected, None if trl_ok else trl_error)
    # the three shapes are among those refused, each with its reason
    reasons = {(p, c, r): e for p, c, r, e in refused}
    assert "has 0 image slot(s)" in reasons[("text part only", "text part", "text part")]
    assert "has 2 image slot(s)" in reasons[("two image parts", "text part", "text part")]
    assert "'chosen' has an image part" in reasons[("image then text", "image part", "text part")]


def test_a_row_the_collator_would_refuse_is_named_by_file_and_line(tmp_path):
    from evaluate_fixtures import make_dpo_jsonl

    from spr.errors import UserError
    from spr.training.rows import read_pairs

    data = make_dpo_jsonl(tmp_path, n=3)
    lines = data.read_text().splitlines()
    row = json.loads(lines[1])
    row["prompt"][0]["content"] = [p for p in row["prompt"][0]["content"] if p["type"] == "text"]
    lines[1] = json.dumps(row)
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"dpo\.jsonl:2 \(id .*\): field 'prompt' has 0 image slot\(s\)"):
        read_pairs(data)
    problems: list[str] = []
    assert len(read_pairs(data, skip_bad=True, problems=problems)) == 2 and "dpo.jsonl:2" in problems[0]
