"""Evaluation: referring expression comprehension, grounded region description, phrase grounding, region
captioning, and comparing runs. Each task reads its data layout, predicts (batched, greedy, resumable into
``predictions.jsonl``), then computes corpus metrics from the predictions alone into ``metrics.json``."""
