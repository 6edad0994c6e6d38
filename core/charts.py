"""Plotly figure builders: pure functions from data to ``go.Figure`` (AppTest cannot inspect
charts, so they are tested here, apart from the pages)."""

from __future__ import annotations

# --- Training (loss curves, throughput) ------------------------------------------------------


# --- Evaluation (per-class bars, confusion heatmap, comparisons) ------------------------------

#: Colours of precision / recall / F1 bars, and of the runs compared side by side.
EVAL_METRIC_COLOURS = {"precision": "#8ecae6", "recall": "#ffb703", "f1": "#219ebc"}
COMPARE_COLOURS = ("#219ebc", "#fb8500", "#8338ec", "#2a9d8f")


def per_class_bars(metrics: dict):
    """Grouped bars of precision, recall and F1 per entity type (support in the hover text)."""
    import plotly.graph_objects as go

    per_class = metrics.get("per_class", {})
    names = list(per_class)
    fig = go.Figure()
    for key, colour in EVAL_METRIC_COLOURS.items():
        fig.add_bar(
            name=key if key != "f1" else "F1",
            x=names,
            y=[per_class[n][key] for n in names],
            marker_color=colour,
            customdata=[[per_class[n]["support"], per_class[n]["predicted"]] for n in names],
            hovertemplate="%{x}: %{y:.3f}<br>support %{customdata[0]}, predicted "
            "%{customdata[1]}<extra>" + key + "</extra>",
        )
    fig.update_layout(barmode="group", yaxis={"range": [0, 1], "title": "score"},
                      height=340, margin={"l": 40, "r": 10, "t": 30, "b": 40},
                      legend={"orientation": "h", "y": 1.12})
    return fig


def confusion_heatmap(confusion: dict):
    """The span-level confusion matrix: gold types (+ spurious) × predicted types (+ boundary,
    missed); the diagonal is correct, everything else an error."""
    import plotly.graph_objects as go

    rows, cols, z = confusion["rows"], confusion["cols"], confusion["matrix"]
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=rows, colorscale="Blues", text=z, texttemplate="%{text}",
        hovertemplate="gold %{y} → predicted %{x}: %{z}<extra></extra>", showscale=False,
    ))
    fig.update_layout(
        xaxis={"title": "predicted", "side": "top"}, yaxis={"title": "gold", "autorange": "reversed"},
        height=120 + 45 * len(rows), margin={"l": 90, "r": 10, "t": 60, "b": 20},
    )
    return fig


def compare_per_class(runs: dict[str, dict], metric: str = "f1"):
    """Grouped bars of one metric per entity type, one bar per run (plus micro and macro)."""
    import plotly.graph_objects as go

    names: list[str] = []
    for m in runs.values():
        names.extend(n for n in m.get("per_class", {}) if n not in names)
    x = [*names, "micro", "macro"]
    fig = go.Figure()
    for k, (run_name, m) in enumerate(runs.items()):
        per_class = m.get("per_class", {})
        y = [per_class.get(n, {}).get(metric, 0.0) for n in names]
        y += [m["micro"][metric], m["macro"][metric]]
        fig.add_bar(name=run_name, x=x, y=y, marker_color=COMPARE_COLOURS[k % len(COMPARE_COLOURS)],
                    hovertemplate="%{x}: %{y:.3f}<extra>" + run_name + "</extra>")
    fig.update_layout(barmode="group", yaxis={"range": [0, 1], "title": metric},
                      height=360, margin={"l": 40, "r": 10, "t": 30, "b": 40},
                      legend={"orientation": "h", "y": 1.12})
    return fig
