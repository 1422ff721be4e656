"""Static HTML report of a run (see page.py): images with boxes, chosen vs rejected texts, score histograms,
pair statistics. Open ``report.html`` in the run directory with any browser; no network, no JavaScript."""

from .page import ReportData, marked_text, render_report

__all__ = ["ReportData", "marked_text", "render_report"]
