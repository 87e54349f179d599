"""Conversions between formats through the interchange model."""

from .execute import Report, convert, fit, parse_casts, save, select_entries

__all__ = ["Report", "convert", "fit", "parse_casts", "save", "select_entries"]
