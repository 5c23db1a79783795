"""matplotlib for the figures qgnn writes (`qgnn sweep`, `qgnn compare`): optional, headless."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed), or None when matplotlib is not
    installed: the commands then skip their figure with a note instead of failing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
