"""Text helpers shared by the codecs: numbers, phrases, and grouping of consecutive boxes of one phrase.

Phrase rules (documented in docs/formats.md):

- Formats with phrase tags (qwen2_vl, internvl, kosmos2, minigpt_v2): a box's phrase is the last tagged phrase
  between the previous box (or box group) and this one.
- Formats without phrase delimiters (ferret, cogvlm, shikra, plain_norm, plain_pixel): the phrase is the words
  just before the box, since the previous box or the last clause punctuation (``. ! ? ; : ,`` followed by a
  space, or a line break), at most ``MAX_WORDS`` words, with markup and surrounding punctuation removed and a
  leading "and"/"or" dropped. Empty means None.
- Both: when only separators (spaces, commas, semicolons, "and", "or", or tags such as ``<delim>``) stand
  between a box and the previous one, the box belongs to the previous box's phrase (several boxes per phrase).
"""

from __future__ import annotations

import re

# A number as models write them; bounded digit runs keep a pathological output from costing much.
NUM = r"[-+]?(?:\d{1,40}(?:\.\d{0,40})?|\.\d{1,40})"
NUMBER = re.compile(NUM)
MAX_WORDS = 8

_TAG = re.compile(r"<[^<>\n]{0,64}>")
_SEPARATORS = re.compile(r"[\s,;&/|+]*(?:(?:and|or)\b[\s,;&/|+]*)?", re.I)
_CLAUSE_END = re.compile(r"[.!?;:,](?=\s|$)|\n")
_EDGE = " \t\r\n,;:.!?()[]{}\"'`*#~_=|<>-\u2013\u2014"
_LEADING_CONJUNCTION = re.compile(r"^(?:and|or)\s+", re.I)


def numbers(s: str) -> list[float]:
    """Every number in ``s`` as floats."""
    return [float(m) for m in NUMBER.findall(s)]


def number_list(s: str) -> list[float] | None:
    """The numbers of a comma-separated list such as ``" 1, 2.5 ,3"``; None when ``s`` is anything else."""
    parts = s.split(",")
    out = []
    for p in parts:
        p = p.strip()
        if not NUMBER.fullmatch(p):
            return None
        out.append(float(p))
    return out


def strip_tags(s: str) -> str:
    return _TAG.sub(" ", s)


def is_separator(gap: str) -> bool:
    """Only separators between two boxes: the second box continues the first one's phrase."""
    return bool(_SEPARATORS.fullmatch(strip_tags(gap)))


def clean_phrase(s: str | None) -> str | None:
    if s is None:
        return None
    s = " ".join(strip_tags(s).split())
    return s or None


def words_before(gap: str) -> str | None:
    """The few words at the end of ``gap`` (see the module docstring), or None."""
    s = strip_tags(gap).rstrip(_EDGE)
    s = _CLAUSE_END.split(s)[-1].strip(_EDGE)
    s = _LEADING_CONJUNCTION.sub("", s)
    words = s.split()
    return " ".join(words[-MAX_WORDS:]) or None


# ``previous`` below is the phrase of the previous box (None when it had none), or FIRST for the first box.
FIRST = object()


def plain_phrase(gap: str, previous) -> str | None:
    """Phrase of a box in a format without phrase delimiters; ``gap`` is the text since the previous box."""
    if previous is not FIRST and is_separator(gap):
        return previous
    return words_before(gap)


def tagged_phrase(gap: str, tag: re.Pattern, previous) -> str | None:
    """Phrase of a box in a format with phrase tags: the last ``tag`` match (group 1) in ``gap``."""
    found = None
    for found in tag.finditer(gap):  # noqa: B007  (the last one counts)
        pass
    if found is not None:
        return clean_phrase(found.group(1))
    if previous is not FIRST and is_separator(gap):
        return previous
    return None


def runs(groundings) -> list[tuple[str | None, list]]:
    """Consecutive groundings of one phrase grouped: ``[(phrase, [box, ...]), ...]``."""
    out: list[tuple[str | None, list]] = []
    for g in groundings:
        if out and out[-1][0] == g.phrase and g.phrase is not None:
            out[-1][1].append(g.box)
        else:
            out.append((g.phrase, [g.box]))
    return out


def join_inline(pieces: list[tuple[str | None, str]]) -> str:
    """Join ``(phrase, text)`` pieces of a delimiter-less format so that each phrase reads back: a space before
    a piece with a phrase, ``". "`` before one without (so it does not inherit the previous phrase)."""
    out = ""
    for i, (phrase, piece) in enumerate(pieces):
        if i:
            out += " " if phrase else ". "
        out += piece
    return out


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
UNFINISHED_THINKING = "thinking block never closed (truncated output?): no answer to read"


def answer_start(text: str) -> tuple[int, str | None]:
    """Where the answer of a thinking model begins, and a problem when there is none.

    Models that think (Qwen3.5, Qwen3-VL-Thinking, GLM-4.1V-Thinking, GLM-4.5V/4.6V) write ``<think>...</think>``
    before the answer; the chat template may have opened the block already, so a lone ``</think>`` counts too.
    The answer is what follows the last ``</think>`` (coordinates quoted while thinking are not the answer); a
    ``<think>`` never closed means the output stopped while thinking."""
    end = text.rfind(THINK_CLOSE)
    if end >= 0:
        return end + len(THINK_CLOSE), None
    if THINK_OPEN in text:
        return len(text), UNFINISHED_THINKING
    return 0, None
