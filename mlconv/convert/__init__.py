"""Conversions between formats through the interchange model, planned by the graph."""

from .execute import (
                      Report,
                      convert,
                      convert_many,
                      fit,
                      parse_casts,
                      plan,
                      save,
                      select_entries,
                      total_bytes,
)
from .graph import Plan, Step

__all__ = ["Plan", "Report", "Step", "convert", "convert_many", "fit", "parse_casts", "plan",
           "save", "select_entries", "total_bytes"]
