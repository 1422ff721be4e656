"""Static HTML report of a run (see page.py): the results per IoU threshold, chosen vs rejected on their own
images, grounded texts as coloured chips, score histograms, what every counter counts. Open ``report.html`` in
the run directory with any browser; no network, no JavaScript."""

from .data import ReportData
from .page import render_report
from .text import marked_text, readable_text

__all__ = ["ReportData", "marked_text", "readable_text", "render_report"]
