"""How every page and report writes a number: one rule, imported by the assessment and the card figures."""

from __future__ import annotations


def percent(p: float, digits: int = 1) -> str:
    """0.4567 -> '45.7%': one formatting rule for every page and report."""
    return f"{p * 100:.{digits}f}%"
