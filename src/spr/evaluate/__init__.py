"""Evaluation: referring expression comprehension, grounded region description, phrase grounding, region
captioning, and comparing runs (docs/evaluation.md lists every data layout: REC JSONL, the RefCOCO "refer"
pickles, lmms-lab's RefCOCO parquet files, Ref-L4, Flickr30k Entities). Each task (:mod:`spr.evaluate.task`) reads its data layout, predicts (batched,
greedy, resumable into ``predictions.jsonl``), then computes corpus metrics from the predictions alone into
``metrics.json``. Importing this package registers the built-in tasks in ``TASKS``."""

from . import captioning, description, phrase_grounding, rec  # noqa: F401  (each registers its task)
from .task import TASKS, EvalConfig, Metric, Task, evaluate, get_task, register_task

__all__ = ["TASKS", "EvalConfig", "Metric", "Task", "evaluate", "get_task", "register_task"]
