"""The recipe that trains the shapes world's base model: a tiny Qwen2-VL that grounds, imprecisely.

A tiny vision-language model trained from scratch with the language-modelling loss alone learns the answer
format and then ignores the image (see docs/toy-world.md). What breaks that plateau here is *dense supervision
of the image tokens*: a linear head on the vision tower's merged tokens predicts, for every token, the label of
the object whose centre falls in that token's cell and that object's box. The image tokens are made to carry the
answer first (a short vision-only phase), then the whole model trains on the language loss plus this auxiliary
loss. The head is used for training only: the saved model is a stock ``Qwen2VLForConditionalGeneration``.

Training data is drawn from the world (seeds ``"<seed>:base:<i>"``, disjoint from the world's train / val /
test scenes; a fixed pool of them, or fresh scenes for every batch): referring expressions answered with one
box, and grounded region descriptions under SPR's own prompts (full image + region box, cropped region, label
hints), all in the model's box format, so the base speaks exactly the prompts that ``spr generate`` and ``spr
eval`` send.

**The annotator.** Real grounding models learn from corpora whose boxes an automatic annotator drew (GRIT was
boxed by a detector), and detectors' boxes are systematically loose; the detection annotations SPR refines
against are tight. ``box_grow`` / ``box_jitter`` model that annotator: every box of the training corpus has each
edge moved outward by ``box_grow`` of the box's side, plus Gaussian jitter of ``box_jitter`` of the side (seeded
per scene). Only the base's training boxes pass through it (:func:`annotate`); the world's own annotations and
every evaluation ground truth stay exact.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .. import boxes as B
from .. import formats
from .. import prompts as P
from ..config import opt, required
from ..data.records import Region
from ..regions import grow
from .descriptions import grounded_description
from .expressions import expressions_for_scene
from .world import WorldConfig, WorldPreset, make_scene


@dataclass
class BaseRecipeConfig:
    """Everything that decides the trained base; saved beside the weights as recipe.json. `spr toy train-base`
    takes these options (the model's size and the world from Python or a preset)."""

    seed: int = opt(0, "seed of the training scenes and weights")
    steps: int = opt(6000, "joint-phase optimizer steps (language loss + dense image-token loss)", min=0)
    vision_steps: int = opt(400, "vision-only steps first (the image tokens learn the dense targets)", min=0)
    batch_size: int = opt(32, "examples per step", min=1)
    lr: float = opt(1e-3, "peak learning rate of the joint phase", above=0)
    vision_lr: float = opt(2e-3, "learning rate of the vision-only phase", above=0)
    warmup: int = opt(100, "learning-rate warm-up steps", min=0)
    min_lr_fraction: float = opt(0.1, "the cosine decay ends at this fraction of the rate", min=0, max=1)
    aux_weight: float = opt(1.0, "weight of the dense image-token loss in the joint phase", min=0)
    expression_kinds: tuple[str, ...] = opt(
        (),
        "referring-expression kinds to train on (label, shape, colour, size, relation)",
        default_text="all",
    )
    rec_fraction: float = opt(
        0.6,
        "share of referring-expression examples (the rest are grounded region descriptions)",
        min=0,
        max=1,
    )
    scene_pool: int = opt(
        3000, "training scenes drawn once and reused (each pass draws new expressions, regions and prompts from "
        "them); 0: fresh scenes every batch", min=0,
    )  # fmt: skip
    box_grow: float = opt(
        0.0, "annotator noise, systematic: each training box edge moves outward by this fraction of the box's "
        "side (negative: inward; 0: exact boxes)",
    )  # fmt: skip
    box_jitter: float = opt(
        0.0, "annotator noise, random: Gaussian edge jitter, sd as a fraction of the side"
    )
    init: str = opt("", "model directory to continue training from (empty: from scratch)")
    freeze_vision: bool = opt(
        False, "train the language model only (no vision phase, no dense loss: needs --vision-steps 0 "
        "--aux-weight 0)",
    )  # fmt: skip
    eval_every: int = opt(1000, "validation REC accuracy every N steps", min=1)
    eval_scenes: int = opt(100, "validation scenes (the world's val split, never test) for the curve", min=1)
    hidden_size: int = opt(128, "language model width", min=1, cli=False)
    intermediate_size: int = opt(384, "language model MLP width", min=1, cli=False)
    layers: int = opt(3, "language model layers", min=1, cli=False)
    heads: int = opt(4, "attention heads", min=1, cli=False)
    vision_dim: int = opt(96, "vision tower width", min=1, cli=False)
    vision_depth: int = opt(2, "vision tower layers", min=1, cli=False)
    threads: int = opt(0, "torch CPU threads (0: torch's default)", min=0)
    world: WorldConfig = field(default_factory=WorldConfig)

    def to_dict(self) -> dict:
        """The recipe (what recipe.json holds): this class's fields, whatever config adds more."""
        d = {f.name: getattr(self, f.name) for f in fields(BaseRecipeConfig)}
        d["expression_kinds"] = list(d["expression_kinds"])
        d["world"] = self.world.to_dict()
        return d

    def recipe(self) -> BaseRecipeConfig:
        return BaseRecipeConfig(**{f.name: getattr(self, f.name) for f in fields(BaseRecipeConfig)})

    def __post_init__(self) -> None:
        from ..errors import UserError

        # "label,shape" given as one value or several
        self.expression_kinds = tuple(
            k.strip() for v in self.expression_kinds for k in str(v).split(",") if k.strip()
        )

        if self.scene_pool < 0:
            raise UserError(f"scene_pool must be 0 (fresh scenes) or more, got {self.scene_pool}")
        if not (math.isfinite(self.box_grow) and -0.25 < self.box_grow < 0.5):
            raise UserError(f"box_grow must be in (-0.25, 0.5) of the box side, got {self.box_grow}")
        if not (math.isfinite(self.box_jitter) and 0 <= self.box_jitter < 0.5):
            raise UserError(f"box_jitter must be in [0, 0.5) of the box side, got {self.box_jitter}")
        if self.freeze_vision and (self.vision_steps or self.aux_weight):
            raise UserError(
                "freeze_vision trains the language model only: set vision_steps 0 and aux_weight 0"
            )


# ------------------------------------------------------------------------------------------ the model


def build_model(config: BaseRecipeConfig):
    """(model, processor, adapter) of a fresh Qwen2-VL of the recipe's size with the project's tokenizer."""
    import torch
    import transformers
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil

    from ..models import get_family
    from ..models.adapter import ModelAdapter
    from ..models.processors import processor_class
    from ..models.tiny import make_tokenizer, qwen_config, token_ids

    if config.init:
        from ..models.loading import load

        adapter = load(config.init, family="qwen2_vl")
        return adapter.model, adapter.processor, adapter

    spec = get_family("qwen2_vl")
    tokenizer = make_tokenizer(spec)
    half = config.hidden_size // config.heads // 2
    text = dict(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=1024,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [half // 4, 3 * half // 8, 3 * half // 8],
        },
    )
    vision = dict(
        depth=config.vision_depth,
        embed_dim=config.vision_dim,
        hidden_size=config.hidden_size,
        num_heads=4,
        mlp_ratio=2,
    )
    model_config = qwen_config("qwen2_vl", tokenizer, spec, text_overrides=text, vision_overrides=vision)
    torch.manual_seed(config.seed)
    model = transformers.Qwen2VLForConditionalGeneration(model_config)
    model.generation_config = GenerationConfig(**token_ids(tokenizer, spec))
    side = config.world.image_size
    # One image token per 28 x 28 px of the world's images; crops get at least 4.
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28 * 4, max_pixels=max(side * side, 28 * 28 * 4)
    )
    processor = processor_class(spec)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=spec.chat_template
    )
    return model, processor, ModelAdapter(model, processor, spec)


# ------------------------------------------------------------------------------------------ examples


@dataclass
class Example:
    image: object  # PIL image the model sees
    prompt: str
    answer: str
    objects: list[tuple[str, tuple[float, float, float, float]]]  # (label, box) in the view's pixels
    target: tuple[float, float, float, float] | None = None  # REC referent, view pixels


def rec_example(scene, rng: random.Random, adapter, kinds: tuple[str, ...] = ()) -> Example | None:
    exprs = [e for e in expressions_for_scene(scene.objects, rng) if not kinds or e.kind in kinds]
    if not exprs:
        return None
    e = rng.choice(exprs)
    box = tuple(scene.objects[e.target].box)
    answer = formats.render([(e.text, box)], adapter.fmt, scene.size, **adapter.geometry(scene.size))
    objects = [(o.label, tuple(o.box)) for o in scene.objects]
    return Example(scene.image, adapter.rec_prompt(e.text), answer, objects, box)


def scene_region(scene, rng: random.Random, n_objects: int = 5) -> Region:
    """An SPR region of the scene (as ``spr regions`` grows them), with its members' scene indices in ``source``."""
    boxes = np.array([o.box for o in scene.objects], dtype=np.float64)
    _, region_box, members = grow(boxes, rng.randrange(len(boxes)), n_objects)
    return Region(
        id="scene",
        image="<in memory>",
        image_size=list(scene.size),
        region_box=list(region_box),
        objects=[{"label": scene.objects[i].label, "box": list(scene.objects[i].box)} for i in members],
        source=",".join(map(str, members)),
    )


def description_example(scene, rng: random.Random, adapter, templates) -> Example:
    region = scene_region(scene, rng)
    rendered = P.render(rng.choice(templates), region, adapter.fmt, adapter.geometry)
    members = [scene.objects[int(i)] for i in region.source.split(",")]
    dx, dy = rendered.origin
    image = rendered.view_image(scene.image)
    view = []
    for phrase, box in grounded_description(members):
        shifted = B.clip(B.shift(box, -dx, -dy), rendered.view_size)
        if B.is_valid(shifted):
            view.append((phrase, shifted))
    answer = formats.render(view, adapter.fmt, rendered.view_size, **rendered.geometry)
    objects = [(o.label, B.clip(B.shift(o.box, -dx, -dy), rendered.view_size)) for o in scene.objects]
    objects = [(label, box) for label, box in objects if B.is_valid(box)]
    return Example(image, rendered.text, answer, objects)


def annotate(scene, grow: float, jitter: float):
    """The scene as the training corpus' annotator boxed it: each edge moved outward by ``grow`` of the box's
    side plus Gaussian jitter of ``jitter`` of the side, clipped to the image (seeded by the scene). The image and
    the labels are the scene's own; ``scene`` itself is not changed."""
    if not grow and not jitter:
        return scene
    rng = np.random.default_rng(list(f"annotator:{scene.seed}".encode()))
    w, h = scene.size
    objects = []
    for o in scene.objects:
        x1, y1, x2, y2 = o.box
        bw, bh = x2 - x1, y2 - y1
        dx1, dy1, dx2, dy2 = rng.normal(0.0, jitter, 4) if jitter else np.zeros(4)
        box = (
            max(0.0, x1 - (grow + dx1) * bw),
            max(0.0, y1 - (grow + dy1) * bh),
            min(float(w), x2 + (grow + dx2) * bw),
            min(float(h), y2 + (grow + dy2) * bh),
        )
        if not B.is_valid(box):  # jitter cannot turn a box inside out: keep the exact one
            box = tuple(o.box)
        objects.append(replace(o, box=tuple(float(v) for v in box)))
    return replace(scene, objects=objects)


class ScenePool:
    """Training scenes as the corpus' annotator boxed them. With ``scene_pool`` > 0 a fixed pool, made on first use
    and kept (drawing a scene costs more than a training example); with 0, a fresh scene for every draw."""

    def __init__(self, config: BaseRecipeConfig):
        self.config = config
        self.scenes: dict[int, object] = {}
        self.drawn = 0

    def draw(self, rng: random.Random):
        if self.config.scene_pool:
            i = rng.randrange(self.config.scene_pool)
            if i not in self.scenes:
                self.scenes[i] = self._make(i)
            return self.scenes[i]
        self.drawn += 1
        return self._make(self.drawn - 1)

    def _make(self, i: int):
        scene = make_scene(self.config.world, f"{self.config.seed}:base:{i}")
        return annotate(scene, self.config.box_grow, self.config.box_jitter)


def make_batch_examples(config: BaseRecipeConfig, rng: random.Random, pool: ScenePool, adapter, templates):
    """One batch of one task (referring expressions or region descriptions): a batch of a single task pads
    little, as the two differ much in length."""
    rec = rng.random() < config.rec_fraction
    out = []
    while len(out) < config.batch_size:
        scene = pool.draw(rng)
        if rec:
            ex = rec_example(scene, rng, adapter, config.expression_kinds)
        else:
            ex = description_example(scene, rng, adapter, templates)
        if ex is not None:
            out.append(ex)
    return out


# ------------------------------------------------------------------------------------- dense targets


def dense_targets(examples, grid_thw, labels: list[str]):
    """Per merged image token: the label index of the object whose centre lies in its cell (len(labels) for
    none; the largest object wins a shared cell) and that object's box in [0, 1] of the view."""
    import torch

    classes, boxes = [], []
    for ex, (_, gh, gw) in zip(examples, grid_thw.tolist()):
        rows, cols = gh // 2, gw // 2
        w, h = ex.image.size
        cls = torch.full((rows * cols,), len(labels), dtype=torch.long)
        bx = torch.zeros(rows * cols, 4)
        for label, box in sorted(ex.objects, key=lambda o: B.area([o[1]])[0]):
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            r, c = min(int(cy / h * rows), rows - 1), min(int(cx / w * cols), cols - 1)
            cls[r * cols + c] = labels.index(label)
            bx[r * cols + c] = torch.tensor([box[0] / w, box[1] / h, box[2] / w, box[3] / h])
        classes.append(cls)
        boxes.append(bx)
    return torch.cat(classes), torch.cat(boxes)


def dense_loss(head, features, classes, boxes, n_labels: int):
    import torch.nn.functional as F

    out = head(features)
    loss = F.cross_entropy(out[:, : n_labels + 1], classes)
    has_object = classes < n_labels
    if has_object.any():
        loss = loss + 5.0 * F.l1_loss(out[has_object, n_labels + 1 :].sigmoid(), boxes[has_object])
    return loss


# ----------------------------------------------------------------------------------------- batches


def collate(adapter, examples):
    """Model inputs with labels on the answer tokens only (prompt and padding are -100)."""
    images = [ex.image for ex in examples]
    prompts = [adapter.chat_text(ex.prompt) for ex in examples]
    eos = adapter.tokenizer.convert_ids_to_tokens(adapter.eos_token_id)
    full = [p + ex.answer + eos for p, ex in zip(prompts, examples)]
    processor = adapter.processor
    batch = processor(text=full, images=images, padding=True, return_tensors="pt")
    prompt_lengths = [len(ids) for ids in processor(text=prompts, images=images)["input_ids"]]
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    for row, n_prompt in enumerate(prompt_lengths):
        pad = int((batch["attention_mask"][row] == 0).sum())  # left padding
        labels[row, : pad + n_prompt] = -100
    batch["labels"] = labels
    return batch


# ---------------------------------------------------------------------------------------- evaluation


def eval_examples(adapter, config: BaseRecipeConfig, n_scenes: int, split: str) -> list[Example]:
    """One referring expression of each of ``n_scenes`` scenes of ``split``, with the scene's exact box (never the
    annotator's: the curve measures what the world is, not what the corpus said)."""
    rng = random.Random(f"{config.seed}:recipe-eval")
    items = []
    for i in range(n_scenes):
        scene = make_scene(config.world, f"{config.seed}:{split}:{i}")
        ex = rec_example(scene, rng, adapter, config.expression_kinds)
        if ex:
            items.append(ex)
    return items


def rec_accuracy(
    adapter, config: BaseRecipeConfig, n_scenes: int, split: str = "val", batch_size: int = 25
) -> dict:
    """Greedy REC accuracy of the model on ``n_scenes`` scenes of ``split`` (one expression each, of the kinds
    the recipe trains on), against the scenes' exact boxes. ``split`` "base" reads the recipe's own training
    scenes."""
    import torch

    items = eval_examples(adapter, config, n_scenes, split)
    ious = []
    adapter.model.eval()
    with torch.inference_mode():
        for k in range(0, len(items), batch_size):
            chunk = items[k : k + batch_size]
            inputs = adapter.build_inputs([ex.image for ex in chunk], [ex.prompt for ex in chunk])
            new = adapter.generate(inputs, max_new_tokens=40, do_sample=False)
            for ex, ids in zip(chunk, new):
                parsed = formats.parse(
                    adapter.decode(ids),
                    adapter.fmt,
                    image_size=ex.image.size,
                    **adapter.geometry(ex.image.size),
                )
                ious.append(float(B.iou([parsed[0].box], [ex.target])[0, 0]) if parsed else 0.0)
    adapter.model.train()
    a = np.array(ious)
    out = {f"acc@{t}": float((a >= t).mean()) for t in (0.5, 0.6, 0.7, 0.8, 0.9)}
    out["mean_iou"] = float(a.mean())
    return out


# ------------------------------------------------------------------------------------------ training


def train_base(config: BaseRecipeConfig, out_dir: str | Path, log=print) -> Path:
    """Train the base model and save it (a normal model directory plus recipe.json and curve.json)."""
    import torch
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(out_dir)
    rng = random.Random(config.seed)
    model, processor, adapter = build_model(config)
    model.train()
    labels = config.world.labels()
    head = torch.nn.Linear(config.hidden_size, len(labels) + 1 + 4)
    captured: dict = {}
    model.model.visual.register_forward_hook(lambda m, i, o: captured.__setitem__("tokens", o.pooler_output))
    templates = list(P.BUILTIN.values())
    curve: list[dict] = []
    started = time.time()
    pool = ScenePool(config)

    vision_params = list(model.model.visual.parameters()) + list(head.parameters())
    vision_opt = torch.optim.AdamW(vision_params, lr=config.vision_lr)
    for step in tqdm(range(config.vision_steps), desc="base: image tokens", unit="step"):
        examples = make_batch_examples(config, rng, pool, adapter, templates)
        batch = collate(adapter, examples)
        model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        classes, boxes = dense_targets(examples, batch["image_grid_thw"], labels)
        loss = dense_loss(head, captured["tokens"], classes, boxes, len(labels))
        vision_opt.zero_grad()
        loss.backward()
        vision_opt.step()
        if step % 100 == 0:
            curve.append(
                {"phase": "vision", "step": step, "dense_loss": loss.item(), "seconds": time.time() - started}
            )

    if config.freeze_vision:
        model.model.visual.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if config.aux_weight:
        params += list(head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)

    def lr_factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))
        return warm * (config.min_lr_fraction + (1 - config.min_lr_fraction) * cosine)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    bar = tqdm(range(config.steps), desc="base: joint", unit="step")
    for step in bar:
        examples = make_batch_examples(config, rng, pool, adapter, templates)
        batch = collate(adapter, examples)
        lm = model(**batch).loss
        dense = torch.zeros(())
        if config.aux_weight:
            classes, boxes = dense_targets(examples, batch["image_grid_thw"], labels)
            dense = dense_loss(head, captured["tokens"], classes, boxes, len(labels))
        loss = lm + config.aux_weight * dense
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(lm=f"{lm.item():.3f}", dense=f"{dense.item():.3f}")
        if step % 100 == 0:
            curve.append(
                {
                    "phase": "joint",
                    "step": step,
                    "lm_loss": lm.item(),
                    "dense_loss": dense.item(),
                    "seconds": time.time() - started,
                }
            )
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            metrics = rec_accuracy(adapter, config, config.eval_scenes)
            curve.append({"phase": "eval", "step": step + 1, **metrics, "seconds": time.time() - started})
            log(f"step {step + 1}: val " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    # Memorised or general? The same measure on scenes it trained on (exact boxes, not the annotator's).
    metrics = rec_accuracy(adapter, config, config.eval_scenes, split="base")
    curve.append(
        {"phase": "eval-train-scenes", "step": config.steps, **metrics, "seconds": time.time() - started}
    )
    log("training scenes: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    recipe = config.to_dict()
    # the chain of recipes that made the weights
    if config.init and (Path(config.init) / "recipe.json").exists():
        recipe["init_recipe"] = json.loads((Path(config.init) / "recipe.json").read_text())
    (out / "recipe.json").write_text(json.dumps(recipe, indent=1))
    (out / "curve.json").write_text(json.dumps(curve, indent=1))
    return out


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "Train the shapes world's base model (a tiny Qwen2-VL that grounds) with the dense-supervision recipe."


@dataclass
class TrainBaseConfig(BaseRecipeConfig, WorldPreset):
    """`spr toy train-base`: the recipe (BaseRecipeConfig) on a world preset, into ``out``."""

    out: str = opt(required, "model directory to write (the same command again: nothing to do)")
    overwrite: bool = opt(False, "replace what --out holds", output=False)


Config = TrainBaseConfig


def run(args: TrainBaseConfig) -> int:
    from ..data.guard import StageOutput
    from .world import PRESETS

    config = args.recipe()
    config.world = PRESETS[args.preset]
    out = Path(args.out)
    with StageOutput(out, "toy train-base", {"recipe": config.to_dict()}, args.overwrite, directory=True):
        if (out / "curve.json").exists():  # written last: a finished base of this recipe
            print(f"{out} holds a base trained with this recipe: nothing to do (--overwrite trains it again)")
            return 0
        train_base(config, out)
    print(f"base model written to {out} (recipe.json and curve.json beside the weights)")
    return 0
