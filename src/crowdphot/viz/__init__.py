"""Figures and reports (matplotlib, the ``plot`` extra)."""
