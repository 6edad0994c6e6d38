"""Plotly figure builders: pure functions from data to ``go.Figure`` (AppTest cannot inspect
charts, so they are tested here, apart from the pages)."""

from __future__ import annotations

# --- Training (loss curves, throughput) ------------------------------------------------------


# --- Evaluation (per-class bars, confusion heatmap, comparisons) ------------------------------
