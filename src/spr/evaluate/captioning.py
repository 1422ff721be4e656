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
from pathlib import Path

from spr import formats

from . import common, readers
from .generation import load_adapter, parse_boxes, run_predictions

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


def caption_split_metrics(preds: list[dict], splits=None) -> tuple[dict, list[str]]:
    metrics, problems = _metrics_of(preds)
    result = {"task": "caption", **metrics, "splits": {}}
    by_split: dict[str, list[dict]] = {}
    for p in preds:
        by_split.setdefault(str(p.get("split", "all")), []).append(p)
    if len(by_split) > 1:
        for name in sorted(by_split):
            result["splits"][name], _ = _metrics_of(by_split[name])
    else:
        result["splits"] = {name: dict(metrics) for name in by_split}
    for name in common.missing_splits(splits, by_split):
        result["splits"][name] = {"n": 0, **{m: None for m in METRICS}, "missing": True}
    return result, problems


def _metrics_of(preds: list[dict]) -> tuple[dict, list[str]]:
    refs = {p["id"]: p["references"] for p in preds}
    hyps = {p["id"]: p.get("caption") or "" for p in preds}
    metrics, problems = caption_metrics(refs, hyps)
    metrics["image_fail"] = (
        sum(p.get("status") == "image_error" for p in preds) / len(preds) if preds else None
    )
    return metrics, problems


def predict(adapter, samples, writer, batch_size=8, max_new_tokens=32, template: str = DEFAULT_PROMPT) -> int:
    def record_of(s, text, image_size, error):
        status = "image_error" if error else "ok"
        caption = "" if error else strip_boxes(adapter, text, image_size)
        return {
            "id": s.id,
            "split": s.split,
            "image": s.image,
            "box": list(s.box),
            "references": s.captions,
            "caption": caption,
            "text": text,
            "status": status,
            "problems": [error] if error else [],
        }

    return run_predictions(
        adapter,
        samples,
        writer,
        lambda s, size: region_prompt(adapter, s.box, size, template),
        record_of,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc="caption",
    )


def evaluate(
    model: str | Path | None,
    data: str | Path,
    out: str | Path,
    *,
    splits=None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    limit: int | None = None,
    family: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    template: str = DEFAULT_PROMPT,
    adapter=None,
) -> dict:
    problems: list[str] = []
    samples = readers.read_captions(data, splits, problems)
    if limit is not None:
        samples = samples[:limit]
    meta = {"task": "caption", "model": str(model), "data": str(data)}
    with common.open_run(out, meta, overwrite) as writer:
        if samples and adapter is None and any(not writer.has(s.id) for s in samples):
            adapter = load_adapter(model, family=family, device=device)
        if samples:
            predict(adapter, samples, writer, batch_size, max_new_tokens, template)
    wanted = {s.id for s in samples}
    preds = [p for p in common.read_predictions(out) if p.get("id") in wanted]
    metrics, metric_problems = caption_split_metrics(preds, splits)
    problems += metric_problems
    problems += [f"{p['id']}: {m}" for p in preds if p.get("status") == "image_error" for m in p["problems"]]
    problems = common.missing_split_problems(metrics) + problems
    metrics.update(model=str(model), data=str(data), problems=problems)
    common.write_metrics(out, metrics)
    return metrics
