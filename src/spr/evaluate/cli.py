"""`spr eval <task>`: rec, description, grounding, caption, compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = (
    "evaluate a model: referring expressions, grounded descriptions, phrase grounding, captions; compare runs"
)


def _model_args(p: argparse.ArgumentParser, batch_size: int, max_new_tokens: int) -> None:
    p.add_argument(
        "--model", required=True, help="model directory (base, merged, or any from_pretrained dir)"
    )
    p.add_argument("--out", required=True, help="run directory: predictions.jsonl, metrics.json (resumable)")
    p.add_argument("--family", help="model family, when config.model_type does not tell")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"prompts per batch (default: {batch_size})"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        help=f"answer length limit (default: {max_new_tokens})",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N samples")
    p.add_argument("--overwrite", action="store_true", help="discard earlier predictions in --out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", metavar="<task>", required=True)

    p = sub.add_parser("rec", help="referring expression comprehension (acc@0.5..0.9, mean IoU)")
    p.add_argument(
        "--data", required=True, help="REC JSONL file, or a RefCOCO 'refer' directory (refs(unc).p)"
    )
    p.add_argument("--images", help="image directory for the refer layout (default: DATA/images)")
    p.add_argument("--split-by", help="refer layout: which refs(<split-by>).p (unc, umd, google)")
    p.add_argument("--splits", nargs="+", help="evaluate these splits only (e.g. val testA testB)")
    _model_args(p, batch_size=8, max_new_tokens=64)

    p = sub.add_parser("description", help="grounded region description: box P/R/F1 at IoU 0.5 and 0.75")
    p.add_argument("--data", required=True, help="regions.jsonl of held-out regions (spr regions)")
    p.add_argument(
        "--semantic", help="also score the text with this spr.scoring semantic scorer (e.g. labels, clip)"
    )
    p.add_argument("--clip-model", help="CLIP model directory for --semantic clip")
    p.add_argument("--label-model", help="sentence-embedding model directory for --semantic labels")
    p.add_argument("--prompt", help="spr.prompts template id or file (default: region_box)")
    _model_args(p, batch_size=4, max_new_tokens=256)

    p = sub.add_parser(
        "grounding", help="phrase grounding, Flickr30k Entities layout (recall@1 ANY/MERGED-BOX)"
    )
    p.add_argument("--data", required=True, help="Flickr30k Entities root (Sentences/, Annotations/)")
    p.add_argument("--images", help="image directory (default: DATA/flickr30k-images or DATA/images)")
    p.add_argument("--splits", nargs="+", help="splits from DATA/<split>.txt (e.g. val test)")
    _model_args(p, batch_size=8, max_new_tokens=64)

    p = sub.add_parser("caption", help="region captioning (BLEU-4, METEOR, ROUGE-L, CIDEr)")
    p.add_argument("--data", required=True, help="region caption JSONL (id, image, box, captions, split)")
    p.add_argument("--splits", nargs="+", help="evaluate these splits only")
    p.add_argument("--prompt", help="prompt template with {box} (default: a short region caption request)")
    _model_args(p, batch_size=8, max_new_tokens=32)

    p = sub.add_parser("compare", help="two runs side by side with deltas (markdown)")
    p.add_argument("a", help="metrics.json or run directory (baseline)")
    p.add_argument("b", help="metrics.json or run directory (compared)")
    p.add_argument("--out", help="also write the table to this file")


def _common(args) -> dict:
    return dict(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        family=args.family,
        device=args.device,
        overwrite=args.overwrite,
    )


def run(args) -> int:
    from . import common

    if args.task == "compare":
        from .compare import compare_paths

        table = compare_paths(args.a, args.b)
        print(table)
        if args.out:
            Path(args.out).write_text(table + "\n", encoding="utf-8")
        return 0

    if args.task == "rec":
        from . import rec

        m = rec.evaluate(
            args.model,
            args.data,
            args.out,
            images=args.images,
            split_by=args.split_by,
            splits=args.splits,
            **_common(args),
        )
        columns = [
            *(f"acc@{t}" for t in rec.THRESHOLDS),
            "mean_iou",
            "center_acc",
            "parse_fail",
            "image_fail",
            "n",
        ]
    elif args.task == "description":
        from . import description

        options = {k: v for k, v in (("clip_model", args.clip_model), ("label_model", args.label_model)) if v}
        m = description.evaluate(
            args.model,
            args.data,
            args.out,
            semantic=args.semantic,
            semantic_options=options,
            prompt=args.prompt,
            **_common(args),
        )
        columns = ["precision@0.5", "recall@0.5", "f1@0.5", "f1@0.75", "mean_boxes", "semantic", "n"]
    elif args.task == "grounding":
        from . import phrase_grounding

        m = phrase_grounding.evaluate(
            args.model, args.data, args.out, images=args.images, splits=args.splits, **_common(args)
        )
        columns = ["recall@1_any", "recall@1_merged", "parse_fail", "n"]
    elif args.task == "caption":
        from . import captioning

        extra = {"template": args.prompt} if args.prompt else {}
        m = captioning.evaluate(args.model, args.data, args.out, splits=args.splits, **extra, **_common(args))
        columns = [*captioning.METRICS, "n"]
    else:  # argparse keeps us from here
        raise AssertionError(args.task)

    print(common.split_table(m, columns))
    for msg in m.get("problems", [])[:20]:
        print(f"  problem: {msg}", file=sys.stderr)
    if len(m.get("problems", [])) > 20:
        print(
            f"  ... {len(m['problems']) - 20} more problems in {Path(args.out) / common.METRICS_FILE}",
            file=sys.stderr,
        )
    print(f"metrics: {Path(args.out) / common.METRICS_FILE}")
    return 0


def main(argv=None) -> int:  # `python -m spr.evaluate.cli rec ...`
    parser = argparse.ArgumentParser(prog="spr eval", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
