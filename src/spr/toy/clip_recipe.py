"""A tiny CLIP for the shapes world, trained contrastively on region crops and their captions.

The semantic score compares a description with two views of its region (spr.models.clip): the crop, and the
region seen in the context of the full image. Both are trained here, with the scorer's own preprocessing
(:class:`spr.models.clip.ClipEncoder`), so the saved model is used exactly as a released CLIP would be:

- views: single objects (box jittered a little, so imprecise boxes still read), small groups of 2-3
  neighbouring objects, and SPR regions of 5 objects; ``context_fraction`` of each batch are in-context views;
- texts: "a red circle" / "red circle" / "the red circle" for an object, "two red circles and a blue square" for
  a group (spr.toy.descriptions);
- loss: symmetric InfoNCE in which views with the same caption are all positives of that caption (a batch
  holds many red circles; treating them as negatives of each other would teach nonsense).

Training scenes are the world's training scenes (seeds ``<seed>:train:<i>``); the accuracy before and after is
measured on the validation scenes (``<seed>:val:<i>``): each object crop against every label of the world.

The model directory holds config.json, model.safetensors, the tokenizer, the processor settings, and
training.json (settings, loss curve, accuracies).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..config import opt, required
from ..errors import UserError
from ..models.tiny_clip import TinyClipConfig
from ..options import Progress
from . import descriptions as D
from .world import WorldConfig, WorldPreset, make_scene

log = logging.getLogger(__name__)


@dataclass
class TinyClipShape(TinyClipConfig):
    """Size of the world's tiny CLIP (both towers share the width). A region view is padded to a square and
    resized to ``image_size``; 16 px patches on a 64 px input make a 4 x 4 grid, four times cheaper than 8 px
    patches, and it learned the shapes better within the same minute (the in-context view of a small object is
    then coarse)."""

    hidden_size: int = 64
    heads: int = 4
    projection_dim: int = 64
    max_text_tokens: int = 48
    mlp_ratio: int = 4
    vocab_size: int = 800


@dataclass
class ClipRecipeConfig:
    """Everything that decides the trained CLIP (training.json records it); `spr toy train-clip` takes these
    options (the model's shape from Python)."""

    scenes: int = opt(
        400, "training scenes (each gives all its objects, a small group and an SPR region)", min=1
    )
    steps: int = opt(800, "optimizer steps", min=1)
    batch_size: int = opt(64, "views per batch", min=2)
    context_fraction: float = opt(
        0.25, "share of each batch that is region-in-context views (the rest are crops)", min=0, max=1
    )
    lr: float = opt(2e-3, "peak learning rate", above=0)
    weight_decay: float = opt(0.01, "AdamW weight decay", min=0)
    warmup: int = opt(20, "linear warm-up steps, then cosine decay to 10% of the rate", min=0)
    box_jitter: float = opt(
        0.1, "crops move each box edge by up to this fraction of the box side (the scorer sees imprecise boxes)",
        min=0, max=0.5,
    )  # fmt: skip
    eval_scenes: int = opt(100, "validation scenes for the zero-shot accuracy", min=1)
    seed: int = opt(0, "training seed")
    threads: int = opt(0, "torch CPU threads (0: torch's default)", min=0)
    model: TinyClipShape = field(default_factory=TinyClipShape)

    def recipe(self) -> ClipRecipeConfig:
        return ClipRecipeConfig(**{f.name: getattr(self, f.name) for f in fields(ClipRecipeConfig)})


# ------------------------------------------------------------------------------------------------ model

# What a model directory of this recipe holds before training.json marks it finished.
MODEL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
               "preprocessor_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"}  # fmt: skip


def world_corpus(world: WorldConfig) -> list[str]:
    """Every word the world's captions and expressions use, in sentences, for the tokenizer."""
    words = []
    for colour in world.colours:
        for shape in world.shapes:
            label = f"{colour} {shape}"
            words += [f"{D.article(label)} {label}", f"the small {label} left of the large {label}",
                      f"{D.NUMBERS[2]} {colour} {D.plural(shape)} and three {colour} {D.plural(shape)}"]  # fmt: skip
    words += [" ".join(D.NUMBERS), "right of above below the smallest largest shape object region"]
    return words


def build_clip(out_dir: str | Path, world: WorldConfig, shape: TinyClipShape, seed: int = 0) -> Path:
    """A random tiny transformers CLIPModel with a tokenizer trained on the world's words, saved to ``out_dir``."""
    from ..models.tiny_clip import TINY_CORPUS, build_tiny_clip

    return build_tiny_clip(out_dir, seed=seed, config=shape, corpus=[*TINY_CORPUS, *world_corpus(world)])


# ------------------------------------------------------------------------------------------------- data


@dataclass
class View:
    scene: int
    box: tuple[float, float, float, float]
    texts: list[str]  # interchangeable captions; the first is the key that decides positives
    kind: str  # object | group | region


def scene_views(scene, index: int, rng: random.Random) -> list[View]:
    from ..regions import grow

    views = []
    for o in scene.objects:
        label = D.label_of(o)
        views.append(View(index, o.box, [f"{D.article(label)} {label}", label, f"the {label}"], "object"))
    boxes = np.array([o.box for o in scene.objects])
    for n, kind in ((rng.choice((2, 3)), "group"), (5, "region")):
        if len(boxes) < n:
            continue
        _, box, members = grow(boxes, rng.randrange(len(boxes)), n)
        inside = [scene.objects[i] for i in members]
        views.append(View(index, tuple(float(v) for v in box), [D.group_caption(inside)], kind))
    return views


def jitter(box, size: tuple[int, int], amount: float, rng: random.Random) -> tuple[int, int, int, int]:
    """Integer crop box with each edge moved by up to ``amount`` of the box side, kept inside the image."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    x1, x2 = x1 + rng.uniform(-amount, amount) * w, x2 + rng.uniform(-amount, amount) * w
    y1, y2 = y1 + rng.uniform(-amount, amount) * h, y2 + rng.uniform(-amount, amount) * h
    x1, y1 = max(0, math.floor(x1)), max(0, math.floor(y1))
    x2, y2 = min(size[0], max(math.ceil(x2), x1 + 2)), min(size[1], max(math.ceil(y2), y1 + 2))
    return x1, y1, x2, y2


def exact_crop(box) -> tuple[int, int, int, int]:
    """The crop the semantic scorer takes of a box."""
    return (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))


# ----------------------------------------------------------------------------------------------- training


def _features(out):
    return out if hasattr(out, "shape") else out.pooler_output


def contrastive_loss(image_emb, text_emb, targets, logit_scale):
    """Symmetric InfoNCE; ``targets[i]`` is the index of view i's caption among the batch's distinct captions.
    A caption's positives are all views with that caption."""
    import torch
    import torch.nn.functional as F

    logits = (
        logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    )  # (views, captions)
    image_loss = F.cross_entropy(logits, targets)
    positives = torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0).T  # (captions, views)
    text_loss = -(positives / positives.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (image_loss + text_loss) / 2


def zero_shot_accuracy(encoder, scenes, labels: list[str]) -> dict[str, float]:
    """Top-1 accuracy of each object's exact crop (and its in-context view) against every label of the world."""
    import torch

    prompts = [f"{D.article(label)} {label}" for label in labels]
    text = encoder.encode_texts(prompts)
    crops, context, truth = [], [], []
    for scene in scenes:
        crops += [scene.image.crop(exact_crop(o.box)) for o in scene.objects]
        context.append(encoder.encode_regions_in_context(scene.image, [o.box for o in scene.objects]))
        truth += [labels.index(D.label_of(o)) for o in scene.objects]
    crop_emb = torch.cat([encoder.encode_images(crops[i : i + 256]) for i in range(0, len(crops), 256)])
    truth_t = torch.tensor(truth)
    guess_crop = (crop_emb @ text.T).argmax(1)
    guess_context = (torch.cat(context) @ text.T).argmax(1)
    colour = lambda i: labels[i].split(" ")[0]  # noqa: E731
    shape = lambda i: labels[i].split(" ")[1]  # noqa: E731
    return {
        "crop": float((guess_crop == truth_t).float().mean()),
        "context": float((guess_context == truth_t).float().mean()),
        "crop colour": float(np.mean([colour(g) == colour(t) for g, t in zip(guess_crop.tolist(), truth)])),
        "crop shape": float(np.mean([shape(g) == shape(t) for g, t in zip(guess_crop.tolist(), truth)])),
        "chance": 1.0 / len(labels),
        "objects": len(truth),
    }


def train_clip(
    out_dir: str | Path, world: WorldConfig | None = None, world_seed: int = 0, config: ClipRecipeConfig | None = None,
    progress: bool = True,
) -> dict:  # fmt: skip
    """Build, train and save the tiny CLIP in ``out_dir`` (under the output guard: a finished one of these settings
    is reused, other settings are refused); returns what training.json records."""
    from ..data.guard import NOT_RECORDS, StageOutput

    world, config = world or WorldConfig(), config or ClipRecipeConfig()
    out = Path(out_dir)
    settings = {"world": world.to_dict(), "world_seed": world_seed, "recipe": asdict(config)}
    with StageOutput(out, "toy train-clip", settings, directory=True):
        done = out / "training.json"
        if done.exists():
            return json.loads(done.read_text())
        present = {p.name for p in out.iterdir()} - set(NOT_RECORDS)
        if present - MODEL_FILES:
            raise UserError(
                f"{out}: holds files that are not a CLIP's ({', '.join(sorted(present - MODEL_FILES))})"
            )
        for name in present:  # an interrupted training: start clean
            (out / name).unlink()
        return _train(out, world, world_seed, config, settings, progress)


def _train(
    out: Path, world: WorldConfig, world_seed: int, config: ClipRecipeConfig, settings: dict, progress: bool
):
    import torch
    from tqdm import tqdm

    from ..models.clip import load_clip

    start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(f"clip:{config.seed}")
    build_clip(out, world, config.model, seed=config.seed)
    encoder = load_clip(out)
    model = encoder.model
    labels = world.labels()
    train_scenes = [make_scene(world, f"{world_seed}:train:{i}") for i in range(config.scenes)]
    eval_scenes = [make_scene(world, f"{world_seed}:val:{i}") for i in range(config.eval_scenes)]
    views = [v for i, s in enumerate(train_scenes) for v in scene_views(s, i, rng)]
    context_cache: dict[int, tuple] = {}  # scene index -> (pixels, offset, scale)

    before = zero_shot_accuracy(encoder, eval_scenes, labels)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        t = (step - config.warmup) / max(config.steps - config.warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    n_context = round(config.batch_size * config.context_fraction)
    curve = []
    bar = tqdm(range(config.steps), desc="tiny CLIP", unit="step", disable=not progress)
    for step in bar:
        batch = rng.sample(views, config.batch_size)
        crop_views, context_views = batch[n_context:], batch[:n_context]
        keys = list(dict.fromkeys(v.texts[0] for v in batch))
        texts = [rng.choice(next(v.texts for v in batch if v.texts[0] == k)) for k in keys]
        targets = torch.tensor([keys.index(v.texts[0]) for v in crop_views + context_views])
        pixels = torch.cat(
            [encoder.preprocess(train_scenes[v.scene].image.crop(jitter(v.box, train_scenes[v.scene].size,
                                                                        config.box_jitter, rng)))[0]
             for v in crop_views]
        )  # fmt: skip
        image_emb = [_features(model.get_image_features(pixel_values=pixels))]
        if context_views:
            full, masks = [], []
            for v in context_views:
                if v.scene not in context_cache:
                    context_cache[v.scene] = encoder.preprocess(train_scenes[v.scene].image)
                px, offset, scale = context_cache[v.scene]
                full.append(px)
                masks.append(encoder.patch_mask([v.box], offset, scale))
            # the scorer's in-context pooling (spr.models.clip), here with gradients
            image_emb.append(encoder._clip_context(torch.cat(full), torch.from_numpy(np.concatenate(masks))))
        enc = encoder.tokenizer(texts, padding=True, truncation=True, max_length=encoder.max_text_tokens,
                                return_tensors="pt")  # fmt: skip
        text_emb = _features(
            model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        )
        loss = contrastive_loss(
            torch.cat(image_emb), text_emb, targets, model.logit_scale.exp().clamp(max=100)
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        curve.append(round(loss.item(), 4))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{curve[-1]:.3f}")
    model.eval()
    train_seconds = time.perf_counter() - start
    after = zero_shot_accuracy(encoder, eval_scenes, labels)
    model.save_pretrained(out)
    record = {
        **settings,
        "labels": labels,
        "accuracy_before": before,
        "accuracy_after": after,
        "train_views": len(views),
        "seconds": round(train_seconds, 1),
        "loss_curve": curve,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1))  # last: marks the CLIP finished
    return record


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "Train the tiny CLIP of the shapes world (for the CLIP semantic scorer) and report its zero-shot accuracy."


@dataclass
class TrainClipConfig(ClipRecipeConfig, WorldPreset, Progress):
    """`spr toy train-clip`: the recipe (ClipRecipeConfig) on a world, into ``out``."""

    out: str = opt(required, "model directory to write (an existing finished one is reused)")
    world: str | None = opt(None, "a world directory (spr toy world): train on its settings and seed")
    world_seed: int = opt(0, "world seed when --world is not given")


Config = TrainClipConfig


def run(args: TrainClipConfig) -> int:
    from ..table import markdown_table
    from .world import PRESETS

    if args.world:
        manifest_path = Path(args.world) / "world.json"
        if not manifest_path.exists():
            raise UserError(f"{args.world}: no world.json; give a directory written by 'spr toy world'")
        manifest = json.loads(manifest_path.read_text())
        world, world_seed = WorldConfig.from_dict(manifest["world"]), int(manifest["seed"])
    else:
        world, world_seed = PRESETS[args.preset], args.world_seed
    record = train_clip(args.out, world, world_seed, args.recipe(), progress=not args.quiet)
    before, after = record["accuracy_before"], record["accuracy_after"]
    keys = ["crop", "context", "crop colour", "crop shape"]
    print(markdown_table(["zero-shot accuracy", "before", "after"], [[k, before[k], after[k]] for k in keys]))
    print(f"{after['objects']} validation objects, {len(record['labels'])} labels (chance {after['chance']:.3f}); "
          f"trained in {record['seconds']} s; saved to {args.out}")  # fmt: skip
    return 0
