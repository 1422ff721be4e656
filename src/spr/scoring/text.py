"""The description text the semantic scorers read: box strings removed, long texts split to fit an encoder.

``description_text`` removes every box's own text (its ``Grounding.span``), then markup tags that some formats
wrap phrases in (``<|object_ref_start|>``, ``<ref>``, ``<p>``, ``<loc_12>`` ...), and collapses white space.
A format that writes a JSON list (qwen2_5_vl) leaves no sentence to read: the description is then the objects'
labels joined by commas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

_TAG = re.compile(r"<\|?/?[A-Za-z_][A-Za-z0-9_]{0,40}\|?>")
_FENCE = re.compile(r"```(?:json)?", re.I)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")
_CLAUSE = re.compile(r"(?<=[,:])\s+|\s+(?=(?:and|with|while|which|where)\b)", re.I)


def description_text(text: str, groundings: Sequence[dict] = ()) -> str:
    """``text`` without its box strings and markup, as plain words (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        return ""
    labels = _json_labels(text)
    if labels is not None:
        return ", ".join(labels)
    spans = sorted(
        (
            tuple(g["span"])
            for g in groundings
            if isinstance(g, dict) and _valid_span(g.get("span"), len(text))
        ),
        reverse=True,
    )
    out, last_start = text, len(text) + 1
    for start, end in spans:  # right to left, so earlier spans stay valid; overlapping spans are skipped
        if end <= last_start:
            out = out[:start] + " " + out[end:]
            last_start = start
    out = _TAG.sub(" ", out)
    out = " ".join(out.split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", out)


def _valid_span(span, n: int) -> bool:
    return (
        isinstance(span, (list, tuple))
        and len(span) == 2
        and all(isinstance(v, int) for v in span)
        and 0 <= span[0] <= span[1] <= n
    )


def _json_labels(text: str) -> list[str] | None:
    """Labels of a JSON list of objects (qwen2_5_vl style), or None when ``text`` is not one."""
    body = _FENCE.sub("", text).strip()
    if not body.startswith(("[", "{")):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(x, dict) for x in items):
        return None
    return [str(x["label"]).strip() for x in items if str(x.get("label", "")).strip()]


def split_to_fit(text: str, count_tokens: Callable[[str], int], limit: int) -> list[str]:
    """Pieces of ``text`` that each fit ``limit`` tokens: the whole text when it fits, else its sentences,
    sentences too long cut at clause boundaries, and pieces still too long cut into word windows."""
    text = text.strip()
    if not text:
        return []
    if count_tokens(text) <= limit:
        return [text]
    pieces: list[str] = []
    for sentence in filter(None, (s.strip() for s in _SENTENCE.split(text))):
        if count_tokens(sentence) <= limit:
            pieces.append(sentence)
            continue
        for clause in filter(None, (c.strip() for c in _CLAUSE.split(sentence))):
            if count_tokens(clause) <= limit:
                pieces.append(clause)
            else:
                pieces.extend(_word_windows(clause, count_tokens, limit))
    return pieces


def _word_windows(text: str, count_tokens, limit: int) -> list[str]:
    out, current = [], []
    for word in text.split():
        if current and count_tokens(" ".join([*current, word])) > limit:
            out.append(" ".join(current))
            current = []
        current.append(word)
    if current:
        out.append(" ".join(current))
    return out  # a single word longer than the limit stays whole; the encoder truncates it


def clauses(text: str) -> list[str]:
    """Sentences and clauses of ``text`` (the label scorer's mentions when a description grounds nothing)."""
    out = []
    for sentence in _SENTENCE.split(text or ""):
        out.extend(c.strip(" ,.;:!?") for c in _CLAUSE.split(sentence))
    return [c for c in out if c]
