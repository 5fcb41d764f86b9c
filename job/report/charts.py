"""The report's charts, drawn by matplotlib into inline SVG (text kept as text, ids made
unique per chart so that several can share one HTML page).

matplotlib is imported here only, and this module only by ``taxi-job report`` and the
page refresh at the end of a training: ``train``'s start and ``infer`` never load it.

One palette for every chart (:data:`COLORS`): the current model is always the same blue,
pickup always orange, drop-off always purple.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec

import matplotlib

matplotlib.use("svg")  # no GUI toolkit, whatever the environment says

import matplotlib.dates as mdates  # noqa: E402 - after the backend is chosen
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from job.report.volume import InputPoint, Version  # noqa: E402

COLORS = {
    "current": "#1f5fa8",
    "previous": "#7fa7d6",
    "rejected": "#c0392b",
    "candidate": "#8c8c8c",
    "rollback": "#e08e0b",
    "earlier": "#b5b5b5",
    "pickup": "#d95f02",
    "dropoff": "#7570b3",
    "bars": "#1f5fa8",
}
WIDTH_IN = 8.0
P = ParamSpec("P")
STYLE: dict[Any, Any] = {
    "svg.fonttype": "none",  # text as <text>: smaller, selectable, the page's font
    "svg.hashsalt": "taxi-job",  # the same page twice is the same bytes
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    # Left: on a phone the chart scrolls sideways in its box, and its start shows first.
    "axes.titlelocation": "left",
    "axes.grid": True,
    "grid.color": "#e5e5e5",
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def styled(chart: Callable[P, Figure]) -> Callable[P, Figure]:
    """Draw ``chart`` under the report's style (titles, fonts, grid)."""

    @functools.wraps(chart)
    def draw(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            return chart(*args, **kwargs)

    return draw


def _figure(height: float, ncols: int = 1, nrows: int = 1, **kw: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=(WIDTH_IN, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


_ID = re.compile(r'\bid="([^"]+)"')


def to_svg(fig: Figure, prefix: str, title: str) -> str:
    """The figure as an ``<svg>`` element to inline: ids prefixed, a fixed size replaced by
    the viewBox (the page's CSS sizes it), a role and a title for assistive technology."""
    buffer = io.StringIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    text = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', text)
    text = text.replace("url(#", f"url(#{prefix}-").replace('href="#', f'href="#{prefix}-')
    text = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", text, count=1)
    from html import escape

    return text.replace(
        "<svg",
        f'<svg role="img" aria-label="{escape(title)}" class="chart" ',
        1,
    )


def _window(ax: Any, times: Sequence[dt.datetime]) -> None:
    """Points all within a day (one version, one run): a few days around them, not the
    years a date axis would otherwise spread over."""
    if times and max(times) - min(times) < dt.timedelta(days=1):
        middle = min(times) + (max(times) - min(times)) / 2
        ax.set_xlim(middle - dt.timedelta(days=2), middle + dt.timedelta(days=2))


def _dates(ax: Any) -> None:
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


@styled
def history(versions: Sequence[Version], history: Sequence[Mapping[str, Any]]) -> Figure:
    """Evaluation RMSE of every version over time, by status; rollbacks as dotted lines."""
    fig, axes = _figure(3.4)
    ax = axes[0][0]
    styles = {
        "previous": ("o", "was current"),
        "candidate": ("s", "candidate (never current)"),
        "rejected": ("X", "rejected by the gate"),
        "current": ("o", "current"),
    }
    timed = [v for v in versions if v.created is not None and v.rmse_eval is not None]
    line = sorted(timed, key=lambda v: v.created or dt.datetime.min)
    if line:
        ax.plot([v.created for v in line], [v.rmse_eval for v in line], color="#d0d0d0", zorder=1)
    for status, (marker, label) in styles.items():
        chosen = [v for v in timed if v.status == status]
        if not chosen:
            continue
        ax.scatter(
            [v.created for v in chosen],
            [v.rmse_eval for v in chosen],
            marker=marker,
            s=140 if status == "current" else 36,
            color=COLORS[status],
            edgecolors="black" if status == "current" else "none",
            linewidths=1.2,
            label=label,
            zorder=3 if status == "current" else 2,
        )
    rollbacks = [t for e in history if e.get("cause") == "rollback" if (t := _time(e)) is not None]
    for n, when in enumerate(rollbacks):
        ax.axvline(
            when,
            color=COLORS["rollback"],
            linestyle=":",
            linewidth=1.5,
            label="rollback" if n == 0 else None,
        )
    _window(ax, [v.created for v in timed if v.created is not None])
    ax.set_title("Evaluation RMSE of each model version")
    ax.set_xlabel("version created (UTC)")
    ax.set_ylabel("RMSE on its evaluation month (min)")
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    _dates(ax)
    return fig


def _time(entry: Mapping[str, Any]) -> dt.datetime | None:
    from job.report.volume import parse_time

    return parse_time(entry.get("time"))


@styled
def live_error(
    points: Sequence[InputPoint], current: str | None, eval_rmse: float | None
) -> Figure:
    """RMSE on each input over time, beside the current model's evaluation RMSE."""
    fig, axes = _figure(3.2)
    ax = axes[0][0]
    scored = [p for p in points if p.rmse_live is not None]
    days = [p for p in scored if p.inputs > 1]
    single = [p for p in scored if p.inputs == 1]
    mine = [p for p in single if p.model_version == current]
    others = [p for p in single if p.model_version != current]
    if days:
        ax.plot(
            [p.time for p in days],
            [p.rmse_live for p in days],
            color=COLORS["previous"],
            linewidth=1.5,
            label="older inputs, one RMSE a day",
        )
    if others:
        ax.scatter(
            [p.time for p in others],
            [p.rmse_live for p in others],
            s=14,
            color=COLORS["earlier"],
            label="by earlier models",
        )
    if mine:
        ax.scatter(
            [p.time for p in mine],
            [p.rmse_live for p in mine],
            s=14,
            color=COLORS["current"],
            label="by the current model",
        )
    if eval_rmse is not None:
        ax.axhline(
            eval_rmse,
            color=COLORS["current"],
            linestyle="--",
            linewidth=1.2,
            label=f"current model's evaluation RMSE ({eval_rmse:.2f})",
        )
    ax.set_title("Live error: RMSE on each predicted input")
    ax.set_xlabel("predicted at (UTC)")
    ax.set_ylabel("RMSE (min)")
    highest = max([p.rmse_live or 0.0 for p in scored] + [eval_rmse or 0.0])
    ax.set_ylim(0, highest * 1.15 or 1.0)  # room above the highest point and the line
    _window(ax, [p.time for p in points])
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    _dates(ax)
    return fig


@styled
def residuals(histogram: Mapping[str, Sequence[float]]) -> Figure:
    """The residual distribution on the evaluation month."""
    edges, counts = list(histogram["edges"]), list(histogram["counts"])
    fig, axes = _figure(3.0)
    ax = axes[0][0]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color=COLORS["bars"], linewidth=0)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_title("Residuals on the evaluation month (actual − predicted)")
    ax.set_xlabel("residual (min): right of 0 the trip took longer than predicted")
    ax.set_ylabel("trips")
    return fig


@styled
def predicted_vs_actual(pva: Mapping[str, Any]) -> Figure:
    """A 2-D histogram of predicted against actual duration, log colour scale."""
    import numpy as np

    pe, ae = np.asarray(pva["predicted_edges"]), np.asarray(pva["actual_edges"])
    counts = np.asarray(pva["counts"], dtype=float)
    fig, axes = _figure(4.2)
    ax = axes[0][0]
    masked = np.ma.masked_less_equal(counts.T, 0)
    vmax = max(float(counts.max()), 1.0)
    mesh = ax.pcolormesh(pe, ae, masked, cmap="Blues", norm=LogNorm(vmin=1, vmax=vmax))
    low, high = max(pe[0], ae[0]), min(pe[-1], ae[-1])
    ax.plot(
        [low, high], [low, high], color=COLORS["rejected"], linewidth=1, label="predicted = actual"
    )
    ax.set_title("Predicted against actual duration (evaluation month)")
    ax.set_xlabel("predicted duration (min)")
    ax.set_ylabel("actual duration (min)")
    ax.legend(loc="upper left", fontsize=8)
    fig.colorbar(mesh, ax=ax, label="trips (log scale)")
    return fig


@styled
def worst_zones(zones: Mapping[str, Sequence[tuple[str, float, float]]]) -> Figure:
    """Share of the squared error per zone, the worst first, pickup and drop-off."""
    fig, axes = _figure(3.6, ncols=2)
    for ax, side in zip(axes[0], ("pickup", "dropoff"), strict=True):
        rows = list(zones.get(side) or [])[::-1]
        ax.barh(
            [f"zone {z}" for z, _, _ in rows],
            [share * 100 for _, share, _ in rows],
            color=COLORS[side],
        )
        ax.set_title(f"{'Pickup' if side == 'pickup' else 'Drop-off'} zones, worst")
        ax.set_xlabel("share of squared error (%)")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", visible=False)
    return fig


@styled
def drift(points: Sequence[InputPoint], training_mean: float | None) -> Figure:
    """PSI of the zone mixes and the mean predicted duration per input, over time."""
    fig, axes = _figure(5.0, nrows=2, sharex=True)
    top, bottom = axes[0][0], axes[1][0]
    psi = [p for p in points if p.psi_pickup is not None or p.psi_dropoff is not None]
    for key, side in (("psi_pickup", "pickup"), ("psi_dropoff", "dropoff")):
        chosen = [p for p in psi if getattr(p, key) is not None]
        top.scatter(
            [p.time for p in chosen],
            [getattr(p, key) for p in chosen],
            s=10,
            color=COLORS[side],
            label=f"{'pickup' if side == 'pickup' else 'drop-off'} zones",
        )
    # Behind the points (zorder), so that the points in the band keep their colour.
    top.axhspan(0.1, 0.25, color="#fbf1cf", linewidth=0, zorder=0, label="0.1–0.25: shifted")
    top.axhline(0.25, color=COLORS["rejected"], linewidth=1, linestyle="--", label="0.25: drifted")
    top.set_title("Drift: zone mix of each input against the training month")
    top.set_ylabel("PSI")
    highest = max(
        (v for p in psi for v in (p.psi_pickup, p.psi_dropoff) if v is not None), default=0
    )
    upper = max(0.3, highest * 1.1)  # the 0.25 line always in sight
    top.set_ylim(-0.02 * upper, upper)  # room below 0: no drift is a dot above the axis, not on it
    top.legend(loc="upper left", fontsize=8, ncols=2, framealpha=0.9)
    means = [p for p in points if p.mean_predicted is not None]
    bottom.scatter(
        [p.time for p in means],
        [p.mean_predicted for p in means],
        s=10,
        color=COLORS["current"],
        label="mean predicted, per input",
    )
    if training_mean is not None:
        bottom.axhline(
            training_mean,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"on the training month ({training_mean:.1f})",
        )
    bottom.set_title("Predicted durations")
    bottom.set_ylabel("mean predicted (min)")
    bottom.set_xlabel("predicted at (UTC)")
    values = [p.mean_predicted for p in means if p.mean_predicted is not None]
    values += [training_mean] if training_mean is not None else []
    if values:  # at least ±10 % around the data: a few seconds' noise must look small
        low, high = min(values), max(values)
        pad = max((high - low) * 0.15, 0.1 * abs(high), 0.5)
        bottom.set_ylim(max(low - pad, 0), high + pad)
    bottom.legend(loc="best", fontsize=8, framealpha=0.9)
    _window(bottom, [p.time for p in points])
    _dates(bottom)
    return fig
