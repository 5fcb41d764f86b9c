"""The report as one self-contained HTML page: inline CSS and SVG, no script, no font, no
link to anything outside the page (it opens from ``file://`` with no network)."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from typing import Any

from job import registry
from job.report.volume import InputPoint, Snapshot

#: Zones listed in "the zones that contribute most to the error", per side.
WORST_ZONES = 10

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0;color:#1d1d1f;background:#fafafa;line-height:1.45}
main{max-width:960px;margin:0 auto;padding:16px}
h1{font-size:1.5rem;margin:.2em 0}h2{font-size:1.2rem;margin:.6em 0 .4em;
 border-bottom:2px solid #1f5fa8;padding-bottom:.2em}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:4px 14px 12px;
 margin:14px 0}
.chart{display:block;width:100%;height:auto;max-width:900px}
figure{margin:8px 0}.scroll{overflow-x:auto;max-width:100%}figcaption{font-size:.9rem;color:#444}
.table{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.85rem;margin:6px 0}
th,td{border-bottom:1px solid #e5e5e5;padding:3px 8px;text-align:left;vertical-align:top}
td{overflow-wrap:break-word}td.w{white-space:nowrap}td.id{word-break:break-all;min-width:9em}
th{background:#f2f4f7}
td.n{text-align:right;font-variant-numeric:tabular-nums}
dl.status{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}
dl.status dt{font-weight:600}dl.status dd{margin:0;overflow-wrap:anywhere}
.bad{color:#c0392b;font-weight:600}.ok{color:#1e7b34;font-weight:600}
.muted{color:#666}details{margin:6px 0}summary{cursor:pointer;color:#1f5fa8}
@media (max-width:600px){.chart{min-width:540px}dl.status{grid-template-columns:1fr}
 dl.status dd{margin-bottom:6px}
 main{padding:8px}section{padding:4px 8px 10px}}
"""


_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?Z$")


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, str) and _ISO.match(value):
        return value.replace("T", " ")[:16] + " UTC"
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _age(when: dt.datetime | None, now: dt.datetime) -> str:
    if when is None:
        return "unknown age"
    seconds = max((now - when).total_seconds(), 0)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    numeric: Sequence[int] = (),
    caption: str | None = None,
    ids: Sequence[int] = (),
) -> str:
    """An HTML table; ``numeric`` columns right-aligned, ``ids`` (version names, files)
    broken anywhere on a narrow screen."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{_kind(i, v, numeric, ids)}">{escape(_fmt(v))}</td>'
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return (
        f'<div class="table"><table>{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _kind(column: int, value: Any, numeric: Sequence[int], ids: Sequence[int]) -> str:
    if isinstance(value, dt.datetime) or (isinstance(value, str) and _ISO.match(value)):
        return "w"  # a time: on one line
    return "n" if column in numeric else "id" if column in ids else "t"


def section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2>{body}</section>'


def figure(svg: str, caption: str, numbers: str, open_: bool = False) -> str:
    """A chart, its caption, and its numbers as a table under a disclosure."""
    return (
        f'<figure><div class="scroll">{svg}</div>'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
        f"<details{' open' if open_ else ''}><summary>The numbers</summary>{numbers}</details>"
    )


def render(snapshot: Snapshot, draw: Callable[..., str]) -> str:
    """The page. ``draw(name, *args, title=...)`` turns a chart of :mod:`job.report.charts`
    into inline SVG (a parameter, so that this module never imports matplotlib)."""
    parts = [
        _status(snapshot),
        _history(snapshot, draw),
        _live(snapshot, draw),
        _current(snapshot, draw),
        _drift(snapshot, draw),
        _runs(snapshot),
    ]
    title = "taxi-job model report"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # The page loads nothing: say so to the browser as well.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{title}</title><style>{CSS}</style></head><body><main>"
        f'<h1>{title}</h1><p class="muted">{escape(snapshot.artifacts)} · generated '
        f"{_fmt(snapshot.generated)}</p>" + "".join(parts) + "</main></body></html>\n"
    )


def _last_ok(snapshot: Snapshot, command: str) -> dict[str, Any] | None:
    last = snapshot.last_runs.get(command)
    if last is not None and last.get("exit_code") == 0:
        return last
    for run in snapshot.runs:  # newest first
        if run.get("command") == command and run.get("exit_code") == 0:
            return run
    return None


def _status(s: Snapshot) -> str:
    from job.report.volume import parse_time

    current = next((v for v in s.versions if v.version == s.current), None)
    items: list[tuple[str, str, str]] = []
    if s.current is None:
        items.append(("current-version", "Current model", '<span class="bad">none yet</span>'))
    else:
        created = current.created if current else None
        items.append(("current-version", "Current model", escape(s.current)))
        items.append(
            ("current-age", "Created", f"{escape(_fmt(created))} ({_age(created, s.generated)})")
        )
        items.append(
            (
                "current-rmse",
                "Evaluation RMSE",
                escape(_fmt(current.rmse_eval if current else None)) + " min",
            )
        )
    items.append(("versions", "Model versions", str(len(s.versions))))
    for command in ("train", "infer"):
        run = _last_ok(s, command)
        when = parse_time(run.get("finished")) if run else None
        text = f"{escape(_fmt(when))} ({_age(when, s.generated)})" if run else "never"
        items.append((f"last-{command}", f"Last successful {command}", text))
        last = s.last_runs.get(command)
        if last is not None and last.get("exit_code") not in (0, None):
            items.append(
                (
                    f"failed-{command}",
                    f"Last {command} failed",
                    f'<span class="bad">exit {escape(str(last.get("exit_code")))}: '
                    f"{escape(str(last.get('error')))}</span>",
                )
            )
    infer = (s.last_runs.get("infer") or {}).get("summary") or {}
    waiting = infer.get("inputs_waiting")
    items.append(
        (
            "inputs-waiting",
            "Inputs waiting",
            "unknown"
            if waiting is None
            else escape(str(waiting))
            + (
                f" (oldest {_fmt(infer.get('oldest_waiting_seconds'), 0)} s)"
                if infer.get("oldest_waiting_seconds") is not None
                else ""
            ),
        )
    )
    rejected = (
        f'<span class="bad">{len(s.rejected)}</span>' if s.rejected else '<span class="ok">0</span>'
    )
    items.append(("rejected", "Rejected inputs", rejected))
    dl = "".join(
        f'<dt>{escape(label)}</dt><dd data-key="{key}">{value}</dd>' for key, label, value in items
    )
    extra = ""
    if s.rejected:
        extra = table(
            ("REJECTED AT", "INPUT", "ERROR"),
            (
                (
                    n.get("rejected_at"),
                    n.get("moved_to") or n.get("input") or n["note"],
                    n.get("error"),
                )
                for n in s.rejected
            ),
            caption="Inputs set aside (newest first), with why",
            ids=(1,),
        )
    problems = "".join(f'<p class="bad">{escape(p)}</p>' for p in s.problems)
    return section("status", "Status", f'{problems}<dl class="status">{dl}</dl>{extra}')


def _history(s: Snapshot, draw: Callable[..., str]) -> str:
    if not s.versions:
        return '<section id="history"><h2>Model history</h2><p>No model version yet.</p></section>'
    svg = draw("history", s.versions, s.history, title="Evaluation RMSE of each model version")
    rows = [(v.version, v.status, v.created, v.rmse_eval, v.rmse_train, v.rows) for v in s.versions]
    numbers = table(
        ("VERSION", "STATUS", "CREATED", "RMSE EVAL (min)", "RMSE TRAIN (min)", "ROWS"),
        rows,
        numeric=(3, 4, 5),
        ids=(0,),
    )
    changes = table(
        ("TIME", "CAUSE", "VERSION", "PREVIOUS", "BY", "REASON"),
        (registry.history_row(e) for e in reversed(s.history[-30:])),
        ids=(2, 3),
    )
    caption = (
        "Each version's RMSE on its own evaluation month, newest on the right; the big "
        "outlined dot is the current model; red crosses were rejected by the promotion gate; "
        "dotted amber lines are rollbacks."
    )
    changes = (
        f"<details><summary>Changes of the current version (newest first)</summary>"
        f"{changes}</details>"
    )
    return section("history", "Model history", figure(svg, caption, numbers) + changes)


def _eval_rmse(s: Snapshot) -> float | None:
    current = next((v for v in s.versions if v.version == s.current), None)
    return current.rmse_eval if current else None


def _points_table(points: Sequence[InputPoint], key: str) -> str:
    return (
        f'<div id="{key}">'
        + table(
            (
                "PREDICTED AT",
                "INPUT",
                "ROWS",
                "ROWS SCORED",
                "RMSE (min)",
                "PSI PICKUP",
                "PSI DROP-OFF",
                "MEAN PREDICTED (min)",
                "MODEL",
            ),
            (
                (
                    p.time,
                    p.label,
                    p.rows,
                    p.rows_scored,
                    p.rmse_live,
                    p.psi_pickup,
                    p.psi_dropoff,
                    p.mean_predicted,
                    p.model_version,
                )
                for p in reversed(points)
            ),
            numeric=(2, 3, 4, 5, 6, 7),
            ids=(1, 8),
        )
        + "</div>"
    )


def _no_inputs(section: str, title: str, s: Snapshot) -> str | None:
    if s.inputs:
        return None
    return (
        f'<section id="{section}"><h2>{title}</h2><p>No predicted input carries records yet '
        "(inputs predicted by a version without them are not shown).</p></section>"
    )


def _live(s: Snapshot, draw: Callable[..., str]) -> str:
    empty = _no_inputs("live", "Live error", s)
    if empty:
        return empty
    eval_rmse = _eval_rmse(s)
    svg = draw("live_error", s.inputs, s.current, eval_rmse, title="Live error per input over time")
    caption = (
        f"RMSE of the predictions of each input whose trips carry a drop-off time "
        f"({_count(s.inputs_total, 'input')}; older ones one point per day). Above the dashed "
        "line the model does worse on new trips than on its evaluation month."
    )
    numbers = _points_table(s.inputs, key="live-numbers")
    return section("live", "Live error", figure(svg, caption, numbers))


def _current(s: Snapshot, draw: Callable[..., str]) -> str:
    head = '<section id="current"><h2>The current model up close</h2>'
    records = (s.current_metadata or {}).get("evaluation_records")
    if s.current is None:
        return head + "<p>No current model.</p></section>"
    if not isinstance(records, Mapping):
        return (
            head + f"<p>No records for this version ({escape(s.current)}): it was trained before "
            "the evaluation records were kept.</p></section>"
        )
    out = [
        head,
        f'<p class="muted">{escape(s.current)}: {_fmt(records.get("rows"))} evaluation trips.</p>',
    ]
    hist = records.get("residual_histogram")
    if isinstance(hist, Mapping):
        svg = draw("residuals", hist, title="Residual distribution on the evaluation month")
        edges, counts = list(hist["edges"]), list(hist["counts"])
        numbers = table(
            ("FROM (min)", "TO (min)", "TRIPS"),
            zip(edges[:-1], edges[1:], counts, strict=True),
            numeric=(0, 1, 2),
        )
        out.append(
            figure(
                svg,
                "How far off the predictions are, in minutes; a narrow peak at 0 is good.",
                numbers,
            )
        )
    pva = records.get("predicted_vs_actual")
    if isinstance(pva, Mapping):
        svg = draw(
            "predicted_vs_actual", pva, title="Predicted against actual duration, 2-D histogram"
        )
        pe, ae, counts2 = pva["predicted_edges"], pva["actual_edges"], pva["counts"]
        cells = (
            (pe[i], pe[i + 1], ae[j], ae[j + 1], c)
            for i, row in enumerate(counts2)
            for j, c in enumerate(row)
            if c
        )
        numbers = table(
            ("PREDICTED FROM", "TO", "ACTUAL FROM", "TO", "TRIPS"), cells, numeric=(0, 1, 2, 3, 4)
        )
        out.append(
            figure(
                svg,
                "Trips by predicted and actual duration (minutes); on the red line the "
                "prediction is exact.",
                numbers,
            )
        )
    zones = records.get("zones")
    if isinstance(zones, Mapping):
        worst = worst_zones(zones)
        svg = draw("worst_zones", worst, title="Zones that contribute most to the error")
        numbers = "".join(
            table(
                (f"{side.upper()} ZONE", "SHARE OF SQUARED ERROR (%)", "RMSE (min)"),
                ((z, share * 100, zrmse) for z, share, zrmse in worst[side]),
                numeric=(1, 2),
            )
            for side in ("pickup", "dropoff")
        )
        out.append(
            figure(
                svg,
                f"The {WORST_ZONES} zones whose trips add most squared error: fix or watch "
                "these first.",
                numbers,
            )
        )
    return "".join(out) + "</section>"


def worst_zones(
    zones: Mapping[str, Any], n: int = WORST_ZONES
) -> dict[str, list[tuple[str, float, float]]]:
    """Per side, the ``n`` zones with the largest share of the squared error: (zone,
    share, RMSE)."""
    result: dict[str, list[tuple[str, float, float]]] = {}
    for side in ("pickup", "dropoff"):
        table_ = zones.get(side) or {}
        total = sum(float(z.get("sse") or 0.0) for z in table_.values())
        ranked = sorted(table_.items(), key=lambda kv: float(kv[1].get("sse") or 0.0), reverse=True)
        result[side] = [
            (
                str(zone),
                float(z.get("sse") or 0.0) / total if total else 0.0,
                math.sqrt(float(z.get("sse") or 0.0) / z["rows"]) if z.get("rows") else math.nan,
            )
            for zone, z in ranked[:n]
        ]
    return result


def training_mean(metadata: Mapping[str, Any] | None) -> float | None:
    """The mean predicted minutes on the training rows, from the histogram's bin centres
    (to within half a bin)."""
    hist = (metadata or {}).get("training_predicted_histogram")
    if not isinstance(hist, Mapping):
        return None
    edges, counts = list(hist.get("edges") or []), list(hist.get("counts") or [])
    if len(edges) != len(counts) + 1 or not sum(counts):
        return None
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return float(sum(c * n for c, n in zip(centres, counts, strict=True)) / sum(counts))


def _drift(s: Snapshot, draw: Callable[..., str]) -> str:
    empty = _no_inputs("drift", "Drift", s)
    if empty:
        return empty
    svg = draw(
        "drift", s.inputs, training_mean(s.current_metadata), title="Drift per input over time"
    )
    caption = (
        "Population stability index of each input's pickup and drop-off zone mix against "
        "the current model's training month (below 0.1: no real change; above 0.25: the "
        "inputs differ from what the model learned from), and the mean predicted duration "
        "of each input beside the training month's."
    )
    # The same points as the live error's: their table is there, once.
    numbers = '<p><a href="#live-numbers">The table under "Live error"</a> has them.</p>'
    return section("drift", "Drift", figure(svg, caption, numbers))


def _did(run: Mapping[str, Any]) -> str:
    summary = run.get("summary") or {}
    command = run.get("command")
    if run.get("exit_code") not in (0, None) and not summary:
        return str(run.get("error") or "failed")
    if command == "train":
        promoted = "promoted" if summary.get("promoted") else "not promoted"
        rmse = _fmt(summary.get("rmse_eval"))
        return f"published {summary.get('model_version')} ({promoted}; rmse_eval {rmse})"
    if command == "infer":
        inputs, rows = summary.get("inputs_predicted", 0), summary.get("rows_predicted", 0)
        text = f"{_count(inputs, 'input')}, {rows} rows predicted"
        if summary.get("inputs_rejected"):
            text += f"; {summary['inputs_rejected']} rejected"
        return text
    if command == "models promote":
        return f"{summary.get('cause', 'promote')} to {summary.get('version')}"
    if command == "models prune":
        return f"pruned {len(summary.get('pruned') or [])} versions"
    return ""


def _runs(s: Snapshot) -> str:
    if not s.runs:
        return '<section id="runs"><h2>Recent runs</h2><p>No run recorded yet.</p></section>'
    rows = (
        (
            r.get("finished"),
            r.get("command"),
            r.get("exit_code"),
            _did(r),
            r.get("job") or r.get("host"),
        )
        for r in s.runs
    )
    return (
        '<section id="runs"><h2>Recent runs</h2>'
        + table(
            ("FINISHED", "COMMAND", "EXIT", "WHAT IT DID", "WHERE"), rows, numeric=(2,), ids=(4,)
        )
        + "</section>"
    )


def _count(value: object, noun: str) -> str:
    """``1 input``, ``2 inputs``."""
    return f"{value} {noun}" if value == 1 else f"{value} {noun}s"
