"""Plotly figure builders: pure functions from data to ``go.Figure`` (AppTest cannot inspect
charts, so they are tested here, apart from the pages)."""

from __future__ import annotations

#: Colours of the training charts.
TRAIN_COLOURS = {"loss": "#219ebc", "eval_loss": "#fb8500", "tokens_per_s": "#2a9d8f",
                 "gpu_mem_mb": "#8338ec", "lr": "#6c757d"}


def _rows(metrics) -> list[dict]:
    """Metric rows as dicts, from a list of dicts or a DataFrame."""
    if hasattr(metrics, "to_dict"):
        return list(metrics.to_dict("records"))
    return [dict(r) for r in metrics or []]


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def loss_curves(metrics, title: str = ""):
    """Train loss per optimiser step (line) and dev loss after each epoch (markers) against step.

    Args:
        metrics: ``run_metrics`` rows (``step``, ``loss``, ``eval_loss``...) as dicts or a DataFrame.
    """
    import plotly.graph_objects as go

    rows = _rows(metrics)
    fig = go.Figure()
    x, y = _series(rows, "loss")
    fig.add_scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines", name="train loss",
                    line={"color": TRAIN_COLOURS["loss"]},
                    hovertemplate="step %{x}: train loss %{y:.4f}<extra></extra>")
    x, y = _series(rows, "eval_loss")
    if x:
        fig.add_scatter(x=x, y=y, mode="lines+markers", name="dev loss",
                        line={"color": TRAIN_COLOURS["eval_loss"], "dash": "dot"},
                        marker={"size": 9},
                        hovertemplate="step %{x}: dev loss %{y:.4f}<extra></extra>")
    total = max((r.get("total_steps") or 0 for r in rows), default=0)
    fig.update_layout(
        title=title or None, height=320, margin={"l": 40, "r": 10, "t": 30 if title else 10, "b": 40},
        xaxis={"title": "step", "range": [0, max(total, 1) * 1.02] if total else None},
        yaxis={"title": "loss (answer tokens)", "rangemode": "tozero"},
        legend={"orientation": "h", "y": 1.12},
    )
    return fig


def throughput_chart(metrics):
    """Tokens per second per step, with GPU memory (MB) on a second axis when it was recorded."""
    import plotly.graph_objects as go

    rows = _rows(metrics)
    fig = go.Figure()
    x, y = _series(rows, "tokens_per_s")
    fig.add_scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines", name="tokens/s",
                    line={"color": TRAIN_COLOURS["tokens_per_s"]},
                    hovertemplate="step %{x}: %{y:.0f} tokens/s<extra></extra>")
    gx, gy = _series(rows, "gpu_mem_mb")
    layout = {"height": 260, "margin": {"l": 40, "r": 40, "t": 10, "b": 40},
              "xaxis": {"title": "step"}, "yaxis": {"title": "tokens/s", "rangemode": "tozero"},
              "legend": {"orientation": "h", "y": 1.15}}
    if gx:
        fig.add_scatter(x=gx, y=[v / 1024 for v in gy], mode="lines", name="peak GPU memory (GB)",
                        yaxis="y2", line={"color": TRAIN_COLOURS["gpu_mem_mb"], "dash": "dash"},
                        hovertemplate="step %{x}: %{y:.1f} GB<extra></extra>")
        layout["yaxis2"] = {"title": "GB", "overlaying": "y", "side": "right", "rangemode": "tozero"}
    fig.update_layout(**layout)
    return fig


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
