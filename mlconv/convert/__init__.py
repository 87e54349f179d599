"""Conversions between formats through the interchange model, planned by the graph."""

from .execute import Report, convert, decide, fit, plan, save, total_bytes
from .graph import Plan, Step
from .many import FileResult, convert_many, iter_convert_many
from .select import parse_casts, select_entries

__all__ = ["FileResult", "Plan", "Report", "Step", "convert", "convert_many", "decide", "fit",
           "iter_convert_many", "parse_casts", "plan", "save", "select_entries",
           "total_bytes"]
