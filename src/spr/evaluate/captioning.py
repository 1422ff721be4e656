"""Region captioning: BLEU-4, METEOR, ROUGE-L and CIDEr with pycocoevalcap (no SPICE: it needs to download
Stanford models, which cannot happen offline).

The model sees the full image and the region written in its own box format (the family codec), and answers
with a short caption; any box text in the answer is removed before scoring. Captions are tokenized with
pycocoevalcap's PTB tokenizer (java). Without java the tokenization falls back to a Python approximation and
METEOR is left out; both are reported in ``problems`` so that numbers are never silently incomparable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
from dataclasses import dataclass

from spr import formats
from spr.config import opt, required

from . import readers
from .generation import parse_boxes
from .task import EvalConfig, Metric, Task, register_task

log = logging.getLogger(__name__)

METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
DEFAULT_PROMPT = "Describe the region {box} of the image in a few words."

# What the PTB tokenizer wrapper drops, for the Python fallback.
_PUNCT = {
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
}


def _python_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    out = {}
    for k, caps in captions.items():
        toks = []
        for c in caps:
            words = re.findall(r"[\w']+|[^\w\s]", c.lower().replace("\n", " "))
            toks.append(" ".join(w for w in words if w not in _PUNCT))
        out[k] = toks
    return out


def _ptb_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = {k: [{"caption": c} for c in caps] for k, caps in captions.items()}
    with contextlib.redirect_stderr(io.StringIO()):
        return PTBTokenizer().tokenize(data)


def caption_metrics(references: dict[str, list[str]], predictions: dict[str, str]) -> tuple[dict, list[str]]:
    """Corpus-level BLEU-4, METEOR, ROUGE-L and CIDEr of ``predictions`` (id -> caption) against
    ``references`` (id -> captions). Returns ``(metrics, problems)``; a metric that could not run is None."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    problems: list[str] = []
    ids = [k for k in references if k in predictions]
    out: dict = {"n": len(ids), **{m: None for m in METRICS}}
    if not ids:
        return out, problems
    refs = {k: list(references[k]) for k in ids}
    hyps = {k: [predictions[k] or ""] for k in ids}
    have_java = shutil.which("java") is not None
    if have_java:
        try:
            refs_t, hyps_t = _ptb_tokenize(refs), _ptb_tokenize(hyps)
        except Exception as e:
            problems.append(
                f"PTB tokenizer (java) failed ({type(e).__name__}: {e}); used the Python tokenizer"
            )
            refs_t, hyps_t = _python_tokenize(refs), _python_tokenize(hyps)
    else:
        problems.append("java not found: captions tokenized in Python (close to, not identical with, PTB)")
        refs_t, hyps_t = _python_tokenize(refs), _python_tokenize(hyps)

    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its length ratio
        bleu, _ = Bleu(4).compute_score(refs_t, hyps_t, verbose=0)
    out["BLEU-4"] = float(bleu[3])
    out["ROUGE-L"] = float(Rouge().compute_score(refs_t, hyps_t)[0])
    out["CIDEr"] = float(Cider().compute_score(refs_t, hyps_t)[0])
    if have_java:
        try:
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            try:
                out["METEOR"] = float(meteor.compute_score(refs_t, hyps_t)[0])
            finally:
                with contextlib.suppress(Exception):
                    meteor.meteor_p.kill()
        except Exception as e:
            problems.append(f"METEOR failed (it runs meteor-1.5.jar with java): {type(e).__name__}: {e}")
    else:
        problems.append("METEOR skipped: it needs java (apt-get install default-jre-headless)")
    return out, problems


def strip_boxes(adapter, text: str, image_size) -> str:
    """The caption without the box text the codec recognises."""
    parsed = parse_boxes(adapter, text, image_size)
    for g in sorted((g for g in parsed if g.span), key=lambda g: g.span[0], reverse=True):
        text = text[: g.span[0]] + text[g.span[1] :]
    return " ".join(text.split())


def region_prompt(adapter, box, image_size, template: str = DEFAULT_PROMPT) -> str:
    box_text = formats.format_box(box, adapter.fmt, image_size, **adapter.geometry(image_size))
    return template.format(box=box_text)


@dataclass
class CaptionConfig(EvalConfig):
    """`spr eval caption`: region captioning."""

    data: str = opt(required, "region caption JSONL: {id, image, box, captions, split} per line")
    prompt: str = opt(DEFAULT_PROMPT, "prompt template; {box} is the region in the model's box format")
    max_new_tokens: int = opt(32, "answer length limit, in tokens", min=1)


class CaptionTask(Task):
    name = "caption"
    HELP = "Region captioning: BLEU-4, METEOR, ROUGE-L and CIDEr (pycocoevalcap)."
    Config = CaptionConfig
    metrics = (*(Metric(m) for m in METRICS), Metric("image_fail", higher_is_better=False))
    caption = (
        "corpus-level scores against every reference caption of a region; box text is removed from answers"
    )

    def read(self, config, problems):
        return readers.read_captions(config.data, config.splits, problems)

    def prompt(self, adapter, config, sample, view_size):
        return region_prompt(adapter, sample.box, view_size, config.prompt)

    def record(self, adapter, config, s, text, image_size, error):
        return {
            "id": s.id,
            "split": s.split,
            "image": s.image,
            "box": list(s.box),
            "references": s.captions,
            "caption": "" if error else strip_boxes(adapter, text, image_size),
            "text": text,
            "status": "image_error" if error else "ok",
            "problems": [error] if error else [],
        }

    def group_metrics(self, preds):
        return self._scored(preds)[0]

    @staticmethod
    def _scored(preds) -> tuple[dict, list[str]]:
        refs = {p["id"]: p["references"] for p in preds}
        hyps = {p["id"]: p.get("caption") or "" for p in preds}
        metrics, problems = caption_metrics(refs, hyps)
        metrics["image_fail"] = (
            sum(p.get("status") == "image_error" for p in preds) / len(preds) if preds else None
        )
        return metrics, problems

    def aggregate(self, records, config):
        """As every task's, but each corpus is scored once (METEOR and the PTB tokenizer run java)."""
        overall, problems = self._scored(records)
        by_split: dict[str, list[dict]] = {}
        for r in records:
            by_split.setdefault(str(r.get("split", "all")), []).append(r)
        splits = {
            n: dict(overall) if len(by_split) == 1 else self._scored(g)[0]
            for n, g in sorted(by_split.items())
        }
        for name in [s for s in (config.splits or []) if s not in by_split]:
            splits[name] = {"n": 0, **{m: None for m in METRICS}, "missing": True}
        return {"task": self.name, **overall, "splits": splits, "problems": problems}


TASK = register_task(CaptionTask())
