"""Rewards for online RL (`spr grpo`): the project's own scores as TRL reward functions.

Every reward is a callable with TRL's reward-function signature, ``f(prompts, completions, completion_ids=None,
**columns) -> list[float | None]``. It reads the dataset columns `spr grpo` writes for each prompt
(:func:`region_columns`, :func:`rec_columns`), repeated by TRL for each of the prompt's completions:

- ``task``: ``"region"`` (a grounded description prompt) or ``"rec"`` (a referring expression);
- ``region``: the Region record the prompt is about, as JSON; for a REC prompt the referent as a one-object
  region (region box = the ground-truth box, object label = the expression);
- ``candidate``: the Candidate record of the prompt without its text, as JSON (prompt id and text, box format,
  codec geometry, crop box).

An answer becomes that Candidate with its text, and its boxes are read exactly as `spr score` reads a
candidate's (:func:`spr.refine.usable_groundings`): the model's codec in the view the model saw, crop views
shifted back to original-image pixels, boxes clipped to the image. The text is decoded from the completion's
token ids with ``decode`` (the model adapter's, which keeps special tokens: box markup such as ``<|box_start|>``
is made of them, and TRL's decoded ``completions`` drop them); without ids or ``decode`` the completion's own
text is used.

The rewards (None where one does not apply: TRL leaves it out of that reward's mean and of the weighted sum):

- ``spr`` (description prompts): the SPR total ``lambda * S_sem + (1 - lambda) * S_loc`` of the answer against
  its region's references, computed by :class:`spr.scoring.RegionScorer` as `spr score` does (the completions
  of one prompt are scored together; no refinement). An answer without a usable box has S_loc = 0.
- ``iou`` (REC prompts): IoU of the answer's first box with the ground truth; 0 without a box (as
  `spr eval rec` counts a miss), and 0 when the codec had to repair or drop a box of the answer (corners
  swapped, box clipped to the image, zero area: :attr:`Answer.repaired`), as VLM-R1's and Perception-R1's
  rewards and every evaluator that reads the raw box give it. ``lenient=True`` scores the repaired box instead
  (the clipped, reordered box: a policy can then learn malformed boxes at no cost).
- ``iou_at_t`` (REC): 1 when that IoU (0 for a repaired box, as above) >= t (t included, the rule of `spr eval rec`'s acc@t), else 0.
- ``iou_squared`` (REC): IoU squared (Perception-R1's sharper IoU reward).
- ``format`` (every prompt): 1 when the codec reads at least one box and every piece of the answer without a
  problem (no unreadable or unclosed box, no box outside the view), else 0: unparseable or empty text is never
  rewarded.

>>> iou = make_rewards(["iou"])[0]
>>> cols = rec_columns("r1", "img.png", (100, 100), "a box", (10, 10, 50, 50), "<ref>a box</ref>", "plain_pixel")
>>> iou(completions=["[10, 10, 50, 50]", "no box"], **{k: [v] * 2 for k, v in cols.items()})
[1.0, 0.0]
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import boxes as B
from .data.records import Candidate, Region
from .formats.base import is_repair
from .options import resolve_device
from .refine import Usable, problem_kind, usable_groundings
from .registry import Registry

# usable_groundings' own words for a stored box it had to fix or leave out (the codec's are formats.is_repair's)
FIXED_KINDS = {"box outside the image", "degenerate box", "non-finite box"}
REC_PROMPT_ID = "rec"


# ------------------------------------------------------------------------------------------------ columns


def region_columns(region: Region, prompt, fmt: str, pixel_budget: dict | None = None) -> dict:
    """The reward columns of one description prompt (a :class:`spr.prompts.RenderedPrompt` of ``region``)."""
    from .sampling import make_candidate

    candidate = make_candidate(region, prompt, 0, "", fmt, pixel_budget)
    return {
        "task": "region",
        "region": json.dumps(region.to_dict()),
        "candidate": json.dumps(candidate.to_dict()),
    }


def rec_columns(
    sample_id: str,
    image: str,
    image_size,
    expression: str,
    box,
    prompt: str,
    fmt: str,
    geometry: dict | None = None,
) -> dict:
    """The reward columns of one REC prompt: the full image of ``image_size`` (W, H), the ground-truth ``box``."""
    box = [float(v) for v in box]
    region = Region(
        id=str(sample_id), image=image, image_size=[int(v) for v in image_size], region_box=box,
        objects=[{"label": expression, "box": box}], source="rec",
    )  # fmt: skip
    candidate = Candidate(
        id=f"{sample_id}/{REC_PROMPT_ID}/0", region_id=str(sample_id), prompt_id=REC_PROMPT_ID, prompt=prompt,
        sample=0, text="", fmt=fmt, geometry=dict(geometry or {}), image=image,
    )  # fmt: skip
    return {
        "task": "rec",
        "region": json.dumps(region.to_dict()),
        "candidate": json.dumps(candidate.to_dict()),
    }


# ------------------------------------------------------------------------------------------------ answers


@dataclass
class Answer:
    """One completion as the scorers see it."""

    task: str
    region: Region
    candidate: Candidate  # the prompt's Candidate record with the answer's text
    usable: Usable  # its groundings in original-image pixels, and what was wrong

    @property
    def parses(self) -> bool:
        return bool(self.usable.groundings) and not self.usable.problems

    @property
    def repaired(self) -> bool:
        """Whether a box of the answer was not scored as written: the codec swapped its corners, clipped it to
        the image or dropped it (zero area, non-finite), or a stored box was clipped or left out."""
        return any(is_repair(p) or problem_kind(p) in FIXED_KINDS for p in self.usable.problems)

    @property
    def iou(self) -> float:
        """IoU of the first box with the region box (a REC prompt's ground truth); 0 without a box."""
        if not self.usable.groundings:
            return 0.0
        return float(B.paired_iou([self.usable.groundings[0]["box"]], [self.region.region_box])[0])


def completion_text(completion) -> str:
    """The text of a completion: a string, or a conversational completion (its last message's text)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, list):
            return "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        return content if isinstance(content, str) else ""
    return ""


def read_answers(completions, completion_ids=None, decode: Callable | None = None, **columns) -> list[Answer]:
    """The :class:`Answer` of every completion (module docstring); ``columns`` as TRL passes them."""
    out = []
    for i, (task, region, template) in enumerate(
        zip(columns["task"], columns["region"], columns["candidate"])
    ):
        if decode is not None and completion_ids is not None:
            text = decode(completion_ids[i])
        else:
            text = completion_text(completions[i])
        region = Region.from_dict(json.loads(region))
        fields = json.loads(template)
        candidate = Candidate.from_dict({**fields, "id": f"{fields['id']}#{i}", "sample": i, "text": text})
        out.append(Answer(task, region, candidate, usable_groundings(candidate, region)))
    return out


# ------------------------------------------------------------------------------------------------ rewards


class Reward:
    """A TRL reward function over :class:`Answer` records; subclasses define ``name`` and ``score``."""

    name = ""

    def __init__(self, decode: Callable | None = None):
        self.decode = decode
        self.__name__ = self.name  # what TRL logs it as: rewards/<name>/mean

    def __call__(self, prompts=None, completions=(), completion_ids=None, **columns) -> list[float | None]:
        return self.score(read_answers(completions, completion_ids, self.decode, **columns))

    def score(self, answers: Sequence[Answer]) -> list[float | None]:
        raise NotImplementedError


class FormatReward(Reward):
    name = "format"

    def score(self, answers):
        return [1.0 if a.parses else 0.0 for a in answers]


class IouReward(Reward):
    """IoU of a REC answer's first box; 0 for an answer with a repaired box unless ``lenient``."""

    name = "iou"

    def __init__(self, decode: Callable | None = None, lenient: bool = False):
        super().__init__(decode)
        self.lenient = lenient

    def score(self, answers):
        return [self.of(self.iou_of(a)) if a.task == "rec" else None for a in answers]

    def iou_of(self, answer: Answer) -> float:
        return 0.0 if answer.repaired and not self.lenient else answer.iou

    def of(self, iou: float) -> float:
        return iou


class IouAtReward(IouReward):
    name = "iou_at_t"

    def __init__(self, threshold: float = 0.5, decode: Callable | None = None, lenient: bool = False):
        super().__init__(decode, lenient)
        self.threshold = threshold

    def of(self, iou):
        return 1.0 if iou >= self.threshold else 0.0


class IouSquaredReward(IouReward):
    name = "iou_squared"

    def of(self, iou):
        return iou * iou


class SprReward(Reward):
    """The SPR total, from a :class:`spr.scoring.RegionScorer` (built by :func:`spr_scorer`)."""

    name = "spr"

    def __init__(self, scorer, decode: Callable | None = None):
        super().__init__(decode)
        self.scorer = scorer

    def score(self, answers):
        out: list[float | None] = [None] * len(answers)
        groups = defaultdict(list)  # the completions of one prompt share the region's references and state
        for i, a in enumerate(answers):
            if a.task == "region":
                groups[(a.region.id, a.candidate.prompt_id)].append(i)
        for members in groups.values():
            scores = self.scorer.score_region(answers[members[0]].region, [answers[i].candidate for i in members], Counter())  # fmt: skip
            for i, s in zip(members, scores):
                out[i] = s.total
        return out


def spr_scorer(score_config=None, semantic=None):
    """A RegionScorer for the ``spr`` reward: ``score_config`` (a :class:`spr.scoring.ScoreConfig`, default
    its defaults) without refinement; ``semantic`` a SemanticScorer, default the one the config names."""
    import dataclasses

    from .scoring import RegionScorer, ScoreConfig, make_semantic_scorer

    config = dataclasses.replace(score_config or ScoreConfig(), refine=False)
    if semantic is None:
        semantic = make_semantic_scorer(
            config.semantic_name(), clip_model=config.clip_model, label_model=config.label_model,
            label_mode=config.label_mode, device=resolve_device(config.device),
        )  # fmt: skip
    return RegionScorer(semantic, config)


# name -> factory(decode, scorer, threshold, lenient) -> Reward; a reward of one's own is registered here
REWARDS: Registry[Callable[..., Reward]] = Registry("reward")
REWARDS.register(
    "spr", lambda decode, scorer, **_: SprReward(scorer if scorer is not None else spr_scorer(), decode)
)
REWARDS.register("iou", lambda decode, lenient, **_: IouReward(decode, lenient))
REWARDS.register("iou_at_t", lambda decode, threshold, lenient, **_: IouAtReward(threshold, decode, lenient))
REWARDS.register("iou_squared", lambda decode, lenient, **_: IouSquaredReward(decode, lenient))
REWARDS.register("format", lambda decode, **_: FormatReward(decode))


def make_rewards(
    names: Sequence[str],
    decode: Callable | None = None,
    scorer=None,
    threshold: float = 0.5,
    lenient: bool = False,
) -> list[Reward]:
    """The reward functions named ``names`` (of :data:`REWARDS`), in order. ``scorer``: the RegionScorer of
    ``spr`` (default :func:`spr_scorer`); ``threshold``: the t of ``iou_at_t``; ``lenient``: the iou rewards
    score a repaired box (module docstring)."""
    options = dict(decode=decode, scorer=scorer, threshold=threshold, lenient=lenient)
    return [REWARDS.get(name)(**options) for name in names]
