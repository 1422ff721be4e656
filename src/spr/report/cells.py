"""Small pieces the report's sections share: model colours, CSS colours, numbers as shown, explained tables."""

from __future__ import annotations

from html import escape

MODEL_COLOURS = ["#7a7a7a", "#1e6fd9", "#e6550d", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#17becf"]


def css(rgb) -> str:
    r, g, b = rgb
    return f"#{r:02x}{g:02x}{b:02x}"


def fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def explained(
    title: str, rows: list[tuple[str, object, str]], headers=("", "value", "what it counts")
) -> str:
    """A table of (name, value, explanation) rows, all escaped."""
    body = "".join(
        f'<tr><td>{escape(n)}</td><td class="num">{escape(fmt(v))}</td><td class="what">{escape(w)}</td></tr>'
        for n, v, w in rows
    )
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<div><h2>{escape(title)}</h2><table><tr>{head}</tr>{body}</table></div>"
