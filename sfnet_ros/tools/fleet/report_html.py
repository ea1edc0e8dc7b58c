"""The fleet evaluation's HTML report: one self-contained page from the summary dict.

``render_html(summary)`` renders the summary ``sfnet-fleet-eval`` writes (the contract is
``summary_schema.md`` beside this module) as ONE file that works offline, years later, attached to
a ticket or mailed: no scripts, no external stylesheets, fonts or images. The CSS is inline, the
frame strips are ``data:image/png;base64`` URIs and the charts are inline SVG.

Every string from the summary is HTML-escaped (``_e``): bag names, class names, model paths and
failure reasons come from files and users. Numbers go through ``float``/``int`` before they reach
markup, colours through ``_rgb``, so nothing else from the summary is written raw.

One helper per section, each returning an HTML fragment ("" when it has nothing to show).
Fractions (IoU, accuracy) are shown as percentages, A/B deltas as percentage points (pp).
"""
from __future__ import annotations

import html
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["render_html"]

DASH = "–"  # null: class absent (no TP + FP + FN), no labels, never predicted
_MIOU_COLOR, _UNC_COLOR, _MARK_COLOR = "#1f5fa8", "#e07b00", "#c62828"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1d;
 margin:0 auto;max-width:1240px;padding:12px 20px 40px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:12px 0 4px}
nav a{margin-right:12px}.meta{color:#555}.muted{color:#777}
table{border-collapse:collapse;margin:6px 0}th,td{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #444;margin-right:6px;vertical-align:-2px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;padding:6px 14px}
.card b{display:block;font-size:20px}
.bar{display:inline-block;height:10px;background:#1f5fa8;vertical-align:middle}
.failed{border:2px solid #c62828;background:#fdecea;color:#8e0000;padding:8px 14px;border-radius:6px}
.note{border:1px solid #d8a200;background:#fff8e1;padding:8px 14px;border-radius:6px}
.failed h2{color:#c62828;border:0;margin-top:4px}
.worse td{background:#fdecea;color:#8e0000}.better td{background:#e8f5e9;color:#1b5e20}
.gate{font-size:16px;font-weight:bold;padding:6px 12px;border-radius:6px;display:inline-block}
.gate.passed{background:#e8f5e9;color:#1b5e20;border:2px solid #2e7d32}
.gate.fail{background:#fdecea;color:#8e0000;border:2px solid #c62828}
table.cm td{width:30px;height:22px;padding:0;text-align:center;font-size:11px;border:1px solid #fff}
table.cm td.diag{outline:1px solid #333}table.cm th.v{writing-mode:vertical-rl;transform:rotate(180deg);
 font-weight:normal;font-size:12px;padding:4px 0;text-align:left}
figure{margin:10px 0 18px}figure img{max-width:100%;border:1px solid #ccc;display:block}
figcaption{margin-top:3px}.legend span.item{margin-right:14px;white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:6px 18px}
"""


def _e(value: Any) -> str:
    """Escaped text of a summary value (quotes too: it also goes into attributes)."""
    return html.escape(str(value), quote=True)


def _pct(value: Any) -> str:
    """A fraction as a percentage, a dash for null."""
    return DASH if value is None else f"{100 * float(value):.1f} %"


def _pp(value: Any) -> str:
    """A signed difference of fractions in percentage points, a dash for null."""
    return DASH if value is None else f"{100 * float(value):+.1f} pp"


def _num(value: Any, fmt: str = ".3f") -> str:
    return DASH if value is None else format(float(value), fmt)


def _count(value: Any) -> str:
    return DASH if value is None else f"{int(value):,}"


def _rgb(color: Sequence[Any]) -> str:
    """A CSS colour from the summary's [r, g, b] (ints forced: this goes into a style attribute)."""
    r, g, b = (max(0, min(255, int(c))) for c in list(color)[:3])
    return f"rgb({r},{g},{b})"


def _swatch(color: Sequence[Any] | None) -> str:
    return "" if color is None else f'<span class="sw" style="background:{_rgb(color)}"></span>'


def _colors(summary: Mapping[str, Any]) -> dict[str, Sequence[Any]]:
    return {c["name"]: c["color"] for c in summary.get("classes") or []}


def _class_cell(name: str, colors: Mapping[str, Sequence[Any]]) -> str:
    return _swatch(colors.get(name)) + _e(name)


def _where(item: Mapping[str, Any]) -> str:
    """'bag · camera · t = 1.23 s' of a frame record."""
    time_s = item.get("time_s")
    when = "" if time_s is None else f" · t = {float(time_s):.2f} s"
    return f"{_e(item.get('bag'))} · {_e(item.get('camera'))}{when}"


def _tr(cells: Iterable[str], cls: str = "", num: Container[int] = ()) -> str:
    """A table row of HTML cells (already escaped); the columns in ``num`` are numbers, right-aligned."""
    tds = "".join(f'<td class="n">{c}</td>' if i in num else f"<td>{c}</td>" for i, c in enumerate(cells))
    return f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>"


def _table(head: Sequence[str], rows: Iterable[str], cls: str = "", num: Container[int] = ()) -> str:
    ths = "".join(f'<th class="n">{_e(h)}</th>' if i in num else f"<th>{_e(h)}</th>"
                  for i, h in enumerate(head))
    return f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _bar(fraction: Any, width: int = 120, color: str = "#1f5fa8") -> str:
    if fraction is None:
        return ""
    px = round(max(0.0, min(1.0, float(fraction))) * width)
    return f'<span class="bar" style="width:{px}px;background:{color}"></span>'


def _card(label: str, value: str, note: str = "") -> str:
    return f'<div class="card">{_e(label)}<b>{value}</b><span class="muted">{note}</span></div>'


def _strip(item: Mapping[str, Any], title: str) -> str:
    """A frame strip (a PNG of side-by-side panels) as an inline image with its caption."""
    caption = _e(item.get("strip_caption") or "")
    png = item.get("strip_png")
    img = (f'<img src="data:image/png;base64,{_e(png)}" alt="{caption}">' if png
           else '<p class="muted">(no picture)</p>')
    return f"<figure>{img}<figcaption>{title}<br><small>{caption}</small></figcaption></figure>"


def _header(s: Mapping[str, Any]) -> str:
    model = s.get("model") or {}
    classes = s.get("classes") or []
    names = ", ".join(_e(c["name"]) for c in classes)
    return (f"<h1>Fleet evaluation: {_e(model.get('name'))}</h1>"
            f'<p class="meta">model <code>{_e(model.get("path"))}</code> · backend {_e(model.get("backend"))}'
            f" · created {_e(s.get('created'))} · {_e(s.get('tool', 'sfnet-fleet-eval'))} v{_e(s.get('version'))}"
            f"<br>{len(classes)} classes: {names}</p>")


def _failed(s: Mapping[str, Any]) -> str:
    failed = s.get("failed") or []
    if not failed:
        return ""
    items = "".join(f"<li><b>{_e(f.get('bag'))}</b>: {_e(f.get('reason'))}</li>" for f in failed)
    return (f'<section id="failed" class="failed"><h2>{len(failed)} bag(s) failed</h2>'
            f"<p>These bags are in none of the figures below.</p><ul>{items}</ul></section>")


def _overall(s: Mapping[str, Any]) -> str:
    o = s.get("overall") or {}
    cards = []
    if s.get("labelled"):
        cards += [_card("mIoU", _pct(o.get("miou"))), _card("pixel accuracy", _pct(o.get("pixel_accuracy"))),
                  _card("mean class accuracy", _pct(o.get("mean_accuracy")))]
    cards += [_card("frames", _count(o.get("frames")), f"{_count(o.get('labelled_frames'))} labelled"),
              _card("mean uncertainty", _num(o.get("uncertainty")), "1 − margin (top-1 − top-2 probability)"),
              _card("failed bags", str(len(s.get("failed") or [])))]
    note = "" if s.get("labelled") else (
        '<p class="note">No labels: no camera had a label topic, so there is no IoU, accuracy or '
        "confusion matrix. Frames are ranked by the model's uncertainty instead.</p>")
    return f'<div class="cards">{"".join(cards)}</div>{note}'


def _class_iou(s: Mapping[str, Any]) -> str:
    per_class = (s.get("overall") or {}).get("per_class_iou") or {}
    colors = _colors(s)
    rows = (_tr([_class_cell(name, colors), _pct(per_class.get(name)), _bar(per_class.get(name))], num=(1,))
            for name in colors)
    return _table(["class", "IoU", ""], rows, num=(1,))


def _groups(s: Mapping[str, Any]) -> str:
    labelled = bool(s.get("labelled"))
    head = ["bag", "camera", "frames", "labelled frames"] + (["mIoU", "pixel accuracy"] if labelled else [])
    out = []
    for kind, title in (("bag_camera", "Per bag × camera"), ("bag", "Per bag"), ("camera", "Per camera")):
        rows = []
        for g in (g for g in s.get("groups") or [] if g.get("kind") == kind):
            cells = [_e(g.get("bag") or "all"), _e(g.get("camera") or "all"), _count(g.get("frames")),
                     _count(g.get("labelled_frames"))]
            cells += [_pct(g.get("miou")), _pct(g.get("pixel_accuracy"))] if labelled else []
            rows.append(_tr(cells + [_num(g.get("uncertainty"))], num=range(2, 99)))
        if rows:
            out.append(f"<h3>{title}</h3>" + _table(head + ["uncertainty"], rows, num=range(2, 99)))
    return "".join(out)


def _confusion(s: Mapping[str, Any]) -> str:
    """Heat map, rows = ground truth, each row normalised (the cell is the share of that class's
    pixels predicted as the column's class), so rare classes are as readable as road."""
    matrix = s.get("confusion") or []
    colors = _colors(s)
    names = list(colors)
    head = ('<tr><th>ground truth ↓ prediction →</th>'
            + "".join(f'<th class="v">{_e(n)}</th>' for n in names) + '<th class="n">pixels</th></tr>')
    rows = []
    for i, row in enumerate(matrix):
        total = sum(int(v) for v in row)
        cells = []
        for j, v in enumerate(row):
            frac = int(v) / total if total else 0.0
            ink = "#fff" if frac > 0.55 else "#1d1d1d"
            title = _e(f"{names[i]} → {names[j]}: {int(v):,} px ({100 * frac:.1f} %)")
            text = f"{100 * frac:.0f}" if frac >= 0.005 else ""
            cells.append(f'<td class="{"diag" if i == j else ""}" title="{title}" '
                         f'style="background:rgba(31,95,168,{frac:.3f});color:{ink}">{text}</td>')
        rows.append(f"<tr><th>{_class_cell(names[i], colors)}</th>{''.join(cells)}"
                    f'<td class="n">{total:,}</td></tr>')
    return (f'<p class="muted">Row-normalised: each cell is the percentage of the row\'s ground-truth pixels '
            f"predicted as the column's class; the diagonal is outlined.</p>"
            f'<table class="cm"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>')


def _runs(times: Sequence[Any], values: Sequence[Any]) -> list[list[tuple[float, float]]]:
    """Consecutive non-null (t, v) points: null values are gaps in the line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for t, v in zip(times, values):
        if v is None:
            runs.append([])
        else:
            runs[-1].append((float(t), max(0.0, min(1.0, float(v)))))
    return [r for r in runs if r]


def _chart(entry: Mapping[str, Any], marks: Sequence[float], width: int = 560, height: int = 150) -> str:
    """One drive as an inline SVG: frame mIoU and uncertainty (both 0..1) against time, worst
    frames as red ticks."""
    times = [float(t) for t in entry.get("time_s") or []]
    if not times:
        return '<p class="muted">no frames</p>'
    left, right, top, bottom = 34, 10, 8, 22
    t0, span = min(times), (max(times) - min(times)) or 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(t: float) -> float:
        return left + (t - t0) / span * plot_w

    def y(v: float) -> float:
        return top + (1.0 - v) * plot_h

    parts = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#999"/>']
    for v in (0.0, 0.5, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="10">{v:g}</text>')
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="10">{t0:.1f} s</text>'
                 f'<text x="{left + plot_w}" y="{height - 6}" font-size="10" text-anchor="end">'
                 f"{t0 + span:.1f} s</text>")
    for t in marks:
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top + plot_h}" '
                     f'stroke="{_MARK_COLOR}" stroke-dasharray="3,2"><title>worst frame, t = {t:.2f} s</title></line>')
    for key, color in (("miou", _MIOU_COLOR), ("uncertainty", _UNC_COLOR)):
        for run in _runs(times, entry.get(key) or []):
            if len(run) == 1:
                parts.append(f'<circle cx="{x(run[0][0]):.1f}" cy="{y(run[0][1]):.1f}" r="2" fill="{color}"/>')
            else:
                points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
                parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    label = _e(f"{entry.get('bag')} · {entry.get('camera')}")
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{label}"><title>{label}</title>{"".join(parts)}</svg>')


def _timelines(s: Mapping[str, Any]) -> str:
    worst = s.get("worst_frames") or []
    charts = []
    for entry in s.get("timeline") or []:
        marks = [float(w["time_s"]) for w in worst if w.get("time_s") is not None
                 and (w.get("bag"), w.get("camera")) == (entry.get("bag"), entry.get("camera"))]
        charts.append(f"<div><h3>{_e(entry.get('bag'))} · {_e(entry.get('camera'))}</h3>{_chart(entry, marks)}</div>")
    miou = (f'<span style="color:{_MIOU_COLOR}">━ frame mIoU</span> (gaps: no label) · ' if s.get("labelled")
            else "")
    key = (f'<p class="muted">{miou}<span style="color:{_UNC_COLOR}">━ uncertainty</span> · '
           f'<span style="color:{_MARK_COLOR}">┆ worst frames</span></p>')
    return key + f'<div class="charts">{"".join(charts)}</div>' if charts else ""


def _legend(s: Mapping[str, Any]) -> str:
    items = "".join(f'<span class="item">{_class_cell(name, _colors(s))}</span>' for name in _colors(s))
    return f'<p class="legend">{items}</p>'


def _worst(s: Mapping[str, Any]) -> str:
    worst = s.get("worst_frames") or []
    if not worst:
        return ""
    order = "lowest frame mIoU" if s.get("labelled") else "highest uncertainty (no labels)"
    figures = [_strip(w, f"<b>#{i}</b> {_where(w)} · mIoU {_pct(w.get('miou'))} · "
                         f"uncertainty {_num(w.get('uncertainty'))}") for i, w in enumerate(worst, 1)]
    return f'<p class="muted">Worst first, by {order}.</p>{_legend(s)}{"".join(figures)}'


def _uncertain(s: Mapping[str, Any]) -> str:
    frames = s.get("uncertain_frames") or []
    rows = (_tr([str(i), _e(f.get("bag")), _e(f.get("camera")), _num(f.get("time_s"), ".2f"),
                 _e(f.get("stamp_ns")), _num(f.get("uncertainty"))], num=range(3, 99))
            for i, f in enumerate(frames, 1))
    head = ["#", "bag", "camera", "time (s)", "stamp (ns)", "uncertainty"]
    return _table(head, rows, num=range(3, 99)) if frames else ""


def _class_uncertainty(s: Mapping[str, Any]) -> str:
    values = s.get("class_uncertainty") or {}
    colors = _colors(s)
    rows = (_tr([_class_cell(n, colors), _num(values.get(n)), _bar(values.get(n), color=_UNC_COLOR)], num=(1,))
            for n in colors)
    return ('<p class="muted">Mean (1 − margin) over the pixels predicted as the class; '
            f"{DASH}: never predicted.</p>" + _table(["class", "uncertainty", ""], rows, num=(1,)))


_SPEED = (("frames", "frames", "{:,}"), ("wall_s", "wall time", "{:.1f} s"), ("fps", "throughput", "{:.1f} frames/s"),
          ("model_ms_p50", "model time p50", "{:.1f} ms"), ("model_ms_p99", "model time p99", "{:.1f} ms"),
          ("workers", "workers", "{}"), ("device", "device", "{}"), ("backend", "backend", "{}"), ("cpu", "CPU", "{}"))


def _speed(s: Mapping[str, Any]) -> str:
    speed = s.get("speed") or {}
    rows = (_tr([_e(label), _e(fmt.format(speed[key]))]) for key, label, fmt in _SPEED if speed.get(key) is not None)
    return _table(["", ""], rows) if speed else ""


def _interval_class(d: Mapping[str, Any] | None) -> str:
    """'worse' when the whole 95 % interval is below 0, 'better' when above, else ''."""
    if not d or d.get("low") is None or d.get("high") is None:
        return ""
    return "worse" if float(d["high"]) < 0 else "better" if float(d["low"]) > 0 else ""


def _interval(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("value") is None:
        return DASH
    return f"{_pp(d['value'])} [{_pp(d.get('low'))}, {_pp(d.get('high'))}]"


def _gate(gate: Mapping[str, Any] | None) -> str:
    if not gate:
        return '<p class="muted">No gate was set.</p>'
    gated = ", ".join(_e(c) for c in gate.get("classes") or [])
    drop = _pp(gate.get("max_drop")).lstrip("+")
    if gate.get("passed"):
        return f'<p class="gate passed">Gate PASSED: no gated class ({gated}) dropped by more than {drop}.</p>'
    failed = ", ".join(_e(c) for c in gate.get("failed") or [])
    return (f'<p class="gate fail">Gate FAILED: {failed} dropped by more than {drop} '
            f"(gated classes: {gated}).</p>")


def _delta(a: Any, b: Any, fmt: Callable[[float], str] = _pp) -> str:
    return DASH if a is None or b is None else fmt(float(b) - float(a))


def _ab_overall(s: Mapping[str, Any], c: Mapping[str, Any]) -> str:
    """Baseline and candidate side by side, with the delta mIoU and its bootstrap interval."""
    base, cand = c.get("baseline_overall") or {}, s.get("overall") or {}
    rows = [_tr(["mIoU", _pct(base.get("miou")), _pct(cand.get("miou")), _delta(base.get("miou"), cand.get("miou"))],
                num=range(1, 99)),
            _tr(["pixel accuracy", _pct(base.get("pixel_accuracy")), _pct(cand.get("pixel_accuracy")),
                 _delta(base.get("pixel_accuracy"), cand.get("pixel_accuracy"))], num=range(1, 99)),
            _tr(["frames", _count(base.get("frames")), _count(cand.get("frames")), ""], num=range(1, 99)),
            _tr(["mean uncertainty", _num(base.get("uncertainty")), _num(cand.get("uncertainty")),
                 _delta(base.get("uncertainty"), cand.get("uncertainty"), lambda v: f"{v:+.3f}")], num=range(1, 99))]
    head = ["", f"baseline: {(c.get('baseline') or {}).get('name')}",
            f"candidate: {(s.get('model') or {}).get('name')}", "candidate − baseline"]
    delta = c.get("delta_miou")
    verdict = {"worse": "worse", "better": "better", "": "no significant change"}[_interval_class(delta)]
    headline = (f'<p class="{_interval_class(delta)}"><b>Δ mIoU {_interval(delta)}</b> ({verdict}; 95 % bootstrap '
                f"interval, {_count(c.get('resamples'))} resamples of {_e(c.get('resampled'))})</p>")
    return headline + _table(head, rows, num=range(1, 99))


def _ab_classes(s: Mapping[str, Any], c: Mapping[str, Any]) -> str:
    """Per-class IoU of both models and the delta with its interval, coloured where the interval
    excludes 0."""
    base_iou = (c.get("baseline_overall") or {}).get("per_class_iou") or {}
    cand_iou = (s.get("overall") or {}).get("per_class_iou") or {}
    deltas = c.get("delta_per_class") or {}
    colors = _colors(s)
    rows = (_tr([_class_cell(n, colors), _pct(base_iou.get(n)), _pct(cand_iou.get(n)), _interval(deltas.get(n))],
                _interval_class(deltas.get(n)), num=range(1, 99)) for n in colors)
    return ("<h3>Per class (red: the whole interval below 0, green: the whole interval above 0)</h3>"
            + _table(["class", "baseline IoU", "candidate IoU", "Δ IoU [95 % interval]"], rows, num=range(1, 99)))


def _compare(s: Mapping[str, Any]) -> str:
    c = s["compare"]
    base_model = c.get("baseline") or {}
    strips = [_strip(d, f"<b>#{i}</b> {_where(d)} · {_pct(d.get('disagree_fraction'))} of pixels differ")
              for i, d in enumerate(c.get("disagreements") or [], 1)]
    meta = (f'<p class="meta">baseline <code>{_e(base_model.get("path"))}</code> ({_e(base_model.get("backend"))})'
            f' · candidate <code>{_e((s.get("model") or {}).get("path"))}</code></p>')
    return (meta + _gate(c.get("gate")) + _ab_overall(s, c) + _ab_classes(s, c)
            + ("<h3>Where the two models disagree most</h3>" + "".join(strips) if strips else ""))


def render_html(summary: dict[str, Any]) -> str:
    """The whole report page for a fleet summary (see ``summary_schema.md``)."""
    s = summary
    labelled = bool(s.get("labelled"))
    sections = [
        ("overall", "Overall", _overall(s)),
        ("compare", "A/B comparison", _compare(s) if s.get("compare") else ""),
        ("groups", "Per bag and camera", _groups(s)),
        ("class-iou", "Per-class IoU", _class_iou(s) if labelled else ""),
        ("confusion", "Confusion matrix", _confusion(s) if labelled and s.get("confusion") else ""),
        ("timeline", "Along each drive", _timelines(s)),
        ("worst", "Worst frames", _worst(s)),
        ("uncertain", "Most uncertain frames (for review and labelling)", _uncertain(s)),
        ("class-uncertainty", "Per-class uncertainty", _class_uncertainty(s)),
        ("speed", "Speed", _speed(s)),
    ]
    shown = [(sid, title, body) for sid, title, body in sections if body]
    nav = " ".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in shown)
    body = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{content}</section>' for sid, title, content in shown)
    title = _e(f"Fleet evaluation: {(s.get('model') or {}).get('name')}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>'
            f"<style>{_CSS}</style></head><body>{_header(s)}<nav>{nav}</nav>{_failed(s)}{body}</body></html>\n")
