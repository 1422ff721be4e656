"""A description as the report shows it: each grounded phrase a chip in its box's colour (coordinates on
hover), the box markup of the model's format left out; everything HTML-escaped."""

from __future__ import annotations

import json
import re
from html import escape

from .cells import css
from .draw import box_colour, ink, valid_box

# Markup the box codecs wrap phrases and boxes in: removed from the readable text (the raw text keeps it).
_MARKUP = re.compile(
    r"<\|[A-Za-z_]{1,40}\|>"
    r"|</?(?:ref|box|quad|p|phrase|object|grounding|delim|answer|s)>"
    r"|<(?:patch_index_\d{1,6}|loc_?\d{1,6}|seg\d{1,9})>"
)


def _valid_span(span, n: int) -> bool:
    return (
        isinstance(span, (list, tuple))
        and len(span) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        and 0 <= span[0] <= span[1] <= n
    )


def box_entries(groundings) -> list[tuple[int, dict, tuple]]:
    """(colour index, grounding, box) for each grounding with a drawable box, in the groundings' order: the
    k-th box of a text wears ``box_colour(k)`` on the image and in the text."""
    out = []
    for g in groundings or []:
        box = valid_box(g.get("box")) if isinstance(g, dict) else None
        if box is not None:
            out.append((len(out), g, box))
    return out


def _coords(box) -> str:
    return "[" + ", ".join(f"{v:.1f}".rstrip("0").rstrip(".") for v in box) + "]"


def _box_title(k: int, g: dict, box, written: str | None) -> str:
    phrase = g.get("phrase") if isinstance(g.get("phrase"), str) else None
    out = f"box {k + 1}" + (f" ({phrase})" if phrase else "") + f": {_coords(box)} px in the image"
    written = " ".join(_MARKUP.sub(" ", written).split()) if written else None
    if written:
        out += f"; written as {written}"
    return out


def _spans(text: str, entries) -> list[tuple[int, int, int, dict, tuple]]:
    """(start, end, colour index, grounding, box) of the entries whose span is valid, in text order, without
    overlaps."""
    placed = sorted(
        (g["span"][0], g["span"][1], k, g, box)
        for k, g, box in entries
        if _valid_span(g.get("span"), len(text))
    )
    out, pos = [], 0
    for item in placed:
        if item[0] >= pos:
            out.append(item)
            pos = item[1]
    return out


def marked_text(text: str, groundings, coloured: bool = True) -> str:
    """``text`` escaped, whole, with each box's own text (its span) wrapped in ``<span class="box">``: underlined
    in its box's colour, its pixel coordinates in the tooltip (``coloured``). Never truncated."""
    if not isinstance(text, str) or not text.strip():
        return '<span class="muted">(empty text)</span>'
    entries = box_entries(groundings)
    placed = _spans(text, entries)
    # spans of groundings whose box is unusable are still marked, uncoloured
    good = {(s, e) for s, e, *_ in placed}
    for g in groundings or []:
        if isinstance(g, dict) and _valid_span(g.get("span"), len(text)) and valid_box(g.get("box")) is None:
            s, e = g["span"]
            if (s, e) not in good and all(e <= a or s >= b for a, b in good):
                placed.append((s, e, -1, g, None))
                good.add((s, e))
    out, pos = [], 0
    for start, end, k, g, box in sorted(placed, key=lambda t: t[:2]):
        if start < pos:
            continue
        out.append(escape(text[pos:start]))
        piece = escape(text[start:end])
        if coloured and k >= 0:
            title = escape(_box_title(k, g, box, None))
            out.append(
                f'<span class="box" style="border-bottom-color:{css(box_colour(k))}" title="{title}">{piece}</span>'
            )
        elif coloured:
            out.append(f'<span class="box" title="unusable box">{piece}</span>')
        else:
            out.append(f'<span class="box">{piece}</span>')
        pos = end
    out.append(escape(text[pos:]))
    return "".join(out)


def _plain(s: str) -> str:
    return escape(_MARKUP.sub("", s))


def _chip(k: int, g: dict, box, written: str | None, label: str | None) -> str:
    rgb = box_colour(k)
    title = escape(_box_title(k, g, box, written))
    body = f'<span class="num">{k + 1}</span>' + (escape(label) if label else "")
    return f'<span class="chip" style="background:{css(rgb)};color:{css(ink(rgb))}" title="{title}">{body}</span>'


def _json_list(text: str) -> bool:
    body = re.sub(r"```(?:json)?", "", text).strip()
    if not body.startswith(("[", "{")):
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, (list, dict))


_OPENERS = re.compile(r"(?:" + _MARKUP.pattern + r"|[\[({])*$")
_CLOSERS = {"[": "]", "(": ")", "{": "}"}


def _eat_closers(text: str, pos: int, opened: str, limit: int) -> int:
    """Past the markup and the closing brackets of ``opened`` (innermost first) that follow ``pos``."""
    want = [_CLOSERS[c] for c in reversed(opened)]
    while pos < limit:
        m = _MARKUP.match(text, pos)
        if m:
            pos = m.end()
        elif want and text[pos] == want[0]:
            want.pop(0)
            pos += 1
        else:
            break
    return pos


def readable_text(text: str, groundings) -> str:
    """The text as a reader would want it: codec markup and the brackets around box strings removed, each
    grounded phrase a chip in its box's colour (numbered like the box on the image; coordinates and the box as
    written on hover). A box right after another of the same phrase is a chip with its number only. Boxes
    without a place in the text are listed after it."""
    if not isinstance(text, str) or not text.strip():
        return '<span class="muted">(empty text)</span>'
    entries = box_entries(groundings)
    out: list[str] = []
    if _json_list(text):  # a JSON list of objects (qwen2_5_vl): its labels as chips
        loose = entries
    else:
        placed = _spans(text, entries)
        placed_ids = {id(g) for _, _, _, g, _ in placed}
        loose = [e for e in entries if id(e[1]) not in placed_ids]
        starts = [p[0] for p in placed[1:]] + [len(text)]
        pos, last_phrase = 0, None
        for (start, end, k, g, box), limit in zip(placed, starts):
            seg = text[pos:start]
            tail = _OPENERS.search(seg)  # brackets some formats keep outside the box string: "[[" ... "]]"
            opened = re.sub(r"[^\[({]", "", _MARKUP.sub("", tail.group(0)))
            seg = seg[: tail.start()]
            phrase = g.get("phrase") if isinstance(g.get("phrase"), str) and g.get("phrase").strip() else None
            label = phrase
            i = seg.rfind(phrase) if phrase else -1
            if i >= 0 and not _MARKUP.sub("", seg[i + len(phrase) :]).strip():
                out.append(_plain(seg[:i]))  # the phrase itself becomes the chip
                after = _eat_closers(text, end, opened, limit)
            else:
                out.append(_plain(seg))
                after = _eat_closers(text, end, opened, limit)
                m = re.compile(r"\s*" + re.escape(phrase)).match(text, after) if phrase else None
                if m and m.end() <= limit:  # the phrase after its box (paligemma)
                    after = m.end()
                elif not _MARKUP.sub("", seg).strip() and phrase == last_phrase:
                    label = None  # a second box of the phrase just before
            out.append(_chip(k, g, box, text[start:end], label))
            pos, last_phrase = after, phrase
        out.append(_plain(text[pos:]))
    if loose:
        chips = " ".join(_chip(k, g, box, None, g.get("phrase") if isinstance(g.get("phrase"), str) else None)
                         for k, g, box in loose)  # fmt: skip
        prefix = "" if not out else "\n"
        out.append(f'{prefix}<span class="muted">boxes: </span>{chips}')
    return "".join(out)
