"""A fixture region with hand-made candidate descriptions of known quality, written to disk as a run directory."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from spr import formats
from spr.data.jsonl import write_jsonl
from spr.data.records import Candidate, Region
from spr.scoring import register_semantic_scorer

SIZE = (640, 480)
OBJECTS = [
    ("person", (100.0, 120.0, 160.0, 300.0), (200, 60, 60)),
    ("bicycle", (170.0, 220.0, 290.0, 310.0), (60, 60, 200)),
    ("car", (310.0, 200.0, 470.0, 300.0), (60, 170, 60)),
    ("dog", (480.0, 250.0, 540.0, 300.0), (150, 100, 40)),
    ("traffic light", (400.0, 80.0, 430.0, 160.0), (230, 200, 40)),
]
REGION_BOX = [100.0, 80.0, 540.0, 310.0]
FMT = "qwen2_vl"
PROMPT = (
    "Describe the region <|box_start|>(156,167),(844,646)<|box_end|> in detail, with a box for every object."
)


def shifted(box, dx, dy=0.0):
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


def qwen_text(parts: list[tuple[str, tuple | None]], sentence_glue: str = ", ") -> str:
    """A description in Qwen2-VL's format: each (phrase, box) as a tagged phrase and its box."""
    out = []
    for phrase, box in parts:
        ref = f"<|object_ref_start|>{phrase}<|object_ref_end|>"
        out.append(ref + (formats.format_box(box, FMT, image_size=SIZE) if box is not None else ""))
    return "In this region there is " + sentence_glue.join(out) + "."


def hand_made_texts() -> dict[str, str]:
    """Descriptions of known quality for the fixture region, best first (as a person would rank them)."""
    precise = qwen_text([(label, box) for label, box, _ in OBJECTS])
    # Same objects, every box a few pixels off (IoU 0.6-0.85): refinement must snap them exactly.
    near = qwen_text([(label, shifted(box, 8, 5)) for label, box, _ in OBJECTS])
    # Right objects named, boxes far from them.
    misplaced = qwen_text(
        [
            (label, shifted(box, 0, 170) if box[1] < 200 else shifted(box, 0, -190))
            for label, box, _ in OBJECTS
        ]
    )
    # Names two real objects with good boxes and invents three that are not there.
    invented = qwen_text(
        [
            ("person", OBJECTS[0][1]),
            ("a giraffe", (560.0, 20.0, 630.0, 200.0)),
            ("a spaceship", (10.0, 10.0, 90.0, 60.0)),
            ("an elephant", (200.0, 350.0, 400.0, 470.0)),
            ("car", OBJECTS[2][1]),
        ]
    )
    vague = qwen_text([("some things", tuple(REGION_BOX))])
    return {"precise": precise, "near": near, "misplaced": misplaced, "invented": invented, "vague": vague}


def fixture_region(image_path: Path) -> Region:
    return Region(
        id="img1/r0",
        image=str(image_path),
        image_size=list(SIZE),
        region_box=list(REGION_BOX),
        objects=[{"label": label, "box": list(box)} for label, box, _ in OBJECTS],
        source="fixture",
    )


def draw_image(path: Path) -> Path:
    im = Image.new("RGB", SIZE, (225, 225, 225))
    draw = ImageDraw.Draw(im)
    for _, box, colour in OBJECTS:
        draw.rectangle(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def candidate(
    region: Region, name: str, text: str, sample: int, prompt_id: str = "p0", parse: bool = True, **kw
):
    groundings, problems = [], []
    if parse:
        parsed = formats.parse(text, FMT, image_size=SIZE)
        groundings = [g.to_dict() for g in parsed]
        problems = list(parsed.problems)
    return Candidate(
        id=f"{region.id}/{prompt_id}/{sample}",
        region_id=region.id,
        prompt_id=prompt_id,
        prompt=PROMPT,
        sample=sample,
        text=text,
        groundings=kw.pop("groundings", groundings),
        problems=problems,
        fmt=FMT,
        image=region.image,
        **kw,
    )


def write_run(root: Path, extra: list[tuple[str, str]] = (), names=None) -> tuple[Path, dict[str, str]]:
    """regions.jsonl, candidates.jsonl and the image under ``root``: the hand-made descriptions (those in
    ``names``, default all) and ``extra``; returns the dir and {name: candidate id}."""
    region = fixture_region(draw_image(root / "images" / "scene.png"))
    texts = [(n, t) for n, t in hand_made_texts().items() if names is None or n in names]
    cands, ids = [], {}
    for i, (name, text) in enumerate([*texts, *extra]):
        c = candidate(region, name, text, i)
        cands.append(c)
        ids[name] = c.id
    write_jsonl(root / "regions.jsonl", [region])
    write_jsonl(root / "candidates.jsonl", cands)
    return root, ids


_TINY_CACHE: dict[str, Path] = {}


def tiny_clip_dir(tmp_path_factory, family: str = "clip") -> Path:
    """A tiny random CLIP (or SigLIP) built once per test session."""
    if family not in _TINY_CACHE:
        from spr.models.tiny_clip import build_tiny_clip

        _TINY_CACHE[family] = build_tiny_clip(tmp_path_factory.mktemp(f"tiny_{family}"), family=family)
    return _TINY_CACHE[family]


def tiny_owlv2_dir(tmp_path_factory) -> Path:
    """A tiny random Owlv2ForObjectDetection with its processor, saved as a model directory."""
    if "owlv2" not in _TINY_CACHE:
        import torch
        from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
        from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

        from spr.models.tiny_clip import train_clip_tokenizer

        out = tmp_path_factory.mktemp("tiny_owlv2")
        tok = train_clip_tokenizer()
        width = 32  # OWLv2's class head needs the projection as wide as both towers
        text = dict(
            vocab_size=len(tok),
            hidden_size=width,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        vision = dict(
            hidden_size=width,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
        )
        torch.manual_seed(0)
        model = Owlv2ForObjectDetection(
            Owlv2Config(text_config=text, vision_config=vision, projection_dim=width)
        )
        model.save_pretrained(out)
        Owlv2Processor(
            image_processor=Owlv2ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tok
        ).save_pretrained(out)
        _TINY_CACHE["owlv2"] = out
    return _TINY_CACHE["owlv2"]


class KeywordScorer:
    """A stand-in semantic scorer with known behaviour: the fraction of the region's labels named in the text."""

    name = "keywords"
    needs_image = False

    def __init__(self):
        self.prepared = 0

    def prepare(self, region, image, references):
        self.prepared += 1
        return [label.lower() for label in references.labels]

    def score(self, labels, items):
        return [sum(label in it.text.lower() for label in labels) / max(len(labels), 1) for it in items]


# once for every test that names the "keywords" scorer: the registry refuses a second entry under a name
register_semantic_scorer("keywords", lambda **_: KeywordScorer())


class FakeDetector:
    """Returns fixed detections, whatever the phrases; records what it was asked."""

    def __init__(self, detections):
        self.detections = detections
        self.calls = []

    def detect(self, image, phrases):
        self.calls.append(list(phrases))
        return list(self.detections)
