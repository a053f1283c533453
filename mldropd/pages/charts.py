"""Server-rendered SVG charts: score histograms, DQ trends with thresholds, PSI sparklines.

A few lines of SVG of our own instead of a chart library: the pages stay free of JavaScript
charting, the output is small and readable, and every chart carries a text alternative. Styling
lives in web/static/style.css (classes .chart, .bar, .ref, .line, .thr-warn, .thr-alert...).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 520, 250
LEFT, RIGHT, TOP, BOTTOM = 54, 14, 40, 44


@dataclass(frozen=True)
class Series:
    """One line of a trend chart: (date, value) points; None values leave a gap."""

    name: str
    points: Sequence[tuple[dt.date, float | None]]
    css: str = "line"


@dataclass(frozen=True)
class Threshold:
    """A horizontal rule such as 'warn 0.1', drawn across the plot."""

    label: str
    value: float
    css: str = "thr-warn"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi], about `count` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def fmt_number(value: float) -> str:
    """Short axis text: 1,200 / 0.25 / 0.003."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _svg(
    title: str,
    body: list[str],
    width: int = WIDTH,
    height: int = HEIGHT,
    css: str = "chart",
    extra: str = "",
) -> Markup:
    text = escape(title)
    return Markup(
        f'<svg class="{css}" viewBox="0 0 {width} {height}" role="img" aria-label="{text}" '
        f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet"{extra}>'
        f"<title>{text}</title>{''.join(body)}</svg>"
    )


def empty_chart(title: str, message: str) -> Markup:
    """A framed placeholder saying why there is nothing to plot yet."""
    body = [
        f'<rect class="frame" x="1" y="1" width="{WIDTH - 2}" height="{HEIGHT - 2}" rx="6"/>',
        f'<text class="title" x="{LEFT}" y="20">{escape(title)}</text>',
        f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
        f"{escape(message)}</text>",
    ]
    return _svg(f"{title}: {message}", body)


class _Frame:
    """The plot area and the mapping of data to pixels."""

    def __init__(
        self, x0: float, x1: float, y0: float, y1: float, width: int = WIDTH, height: int = HEIGHT
    ) -> None:
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 + 1)
        self.y0, self.y1 = y0, (y1 if y1 > y0 else y0 + 1)
        self.left, self.right = LEFT, width - RIGHT
        self.top, self.bottom = TOP, height - BOTTOM
        self.width, self.height = width, height

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def axes(
        self,
        title: str,
        x_label: str,
        y_label: str,
        y_ticks: list[float],
        x_ticks: list[tuple[float, str]],
    ) -> list[str]:
        out = [f'<text class="title" x="{self.left}" y="18">{escape(title)}</text>']
        for t in y_ticks:
            y = self.y(t)
            out.append(
                f'<line class="grid" x1="{self.left}" x2="{self.right}" y1="{y:.1f}" '
                f'y2="{y:.1f}"/><text class="tick" x="{self.left - 6}" y="{y + 4:.1f}" '
                f'text-anchor="end">{fmt_number(t)}</text>'
            )
        for value, label in x_ticks:
            x = self.x(value)
            out.append(
                f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{self.bottom}" '
                f'y2="{self.bottom + 4}"/><text class="tick" x="{x:.1f}" '
                f'y="{self.bottom + 17}" text-anchor="middle">{escape(label)}</text>'
            )
        out.append(
            f'<line class="axis" x1="{self.left}" x2="{self.right}" y1="{self.bottom}" '
            f'y2="{self.bottom}"/><line class="axis" x1="{self.left}" x2="{self.left}" '
            f'y1="{self.top}" y2="{self.bottom}"/>'
        )
        mid_y = (self.top + self.bottom) / 2
        out.append(
            f'<text class="label" x="{(self.left + self.right) / 2:.1f}" '
            f'y="{self.height - 6}" text-anchor="middle">{escape(x_label)}</text>'
            f'<text class="label" x="14" y="{mid_y:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 14 {mid_y:.1f})">{escape(y_label)}</text>'
        )
        return out


def _x_ticks_numeric(lo: float, hi: float) -> list[tuple[float, str]]:
    return [(t, fmt_number(t)) for t in nice_ticks(lo, hi, 6) if lo - 1e-12 <= t <= hi + 1e-12]


def histogram_svg(
    counts: Sequence[int],
    edges: Sequence[float],
    title: str = "Scores",
    x_label: str = "score",
    y_label: str = "rows",
) -> Markup:
    """Bars of a histogram: len(edges) == len(counts) + 1."""
    if not counts or len(edges) != len(counts) + 1:
        return empty_chart(title, "no scores to plot")
    top = max(max(counts), 1)
    frame = _Frame(float(edges[0]), float(edges[-1]), 0.0, top * 1.1)
    ticks = nice_ticks(0, top * 1.05, 5)
    body = frame.axes(title, x_label, y_label, ticks, _x_ticks_numeric(frame.x0, frame.x1))
    for count, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True):
        x, x2, y = frame.x(lo), frame.x(hi), frame.y(count)
        body.append(
            f'<rect class="bar" x="{x + 0.5:.1f}" y="{y:.1f}" '
            f'width="{max(x2 - x - 1, 0.5):.1f}" height="{frame.bottom - y:.1f}">'
            f"<title>{fmt_number(lo)}–{fmt_number(hi)}: {count:,} rows</title></rect>"
        )
    total = sum(counts)
    return _svg(
        f"{title}: {total:,} {y_label} from {fmt_number(edges[0])} to {fmt_number(edges[-1])}", body
    )


def compare_histogram_svg(
    current: Sequence[int],
    reference: Sequence[int],
    edges: Sequence[float],
    title: str = "Current vs reference scores",
    current_label: str = "current",
    reference_label: str = "reference",
) -> Markup:
    """Current scores as bars, reference as an outline, both as shares so sizes may differ."""
    if not current or len(edges) != len(current) + 1 or len(reference) != len(current):
        return empty_chart(title, "no histogram for this date")
    cur_total, ref_total = max(sum(current), 1), max(sum(reference), 1)
    cur = [100 * c / cur_total for c in current]
    ref = [100 * r / ref_total for r in reference]
    top = max(max(cur), max(ref), 1e-9)
    frame = _Frame(float(edges[0]), float(edges[-1]), 0.0, top * 1.15)
    body = frame.axes(
        title,
        "score",
        "share of rows (%)",
        nice_ticks(0, top * 1.1, 5),
        _x_ticks_numeric(frame.x0, frame.x1),
    )
    for share, lo, hi in zip(cur, edges[:-1], edges[1:], strict=True):
        x, x2, y = frame.x(lo), frame.x(hi), frame.y(share)
        body.append(
            f'<rect class="bar" x="{x + 0.5:.1f}" y="{y:.1f}" '
            f'width="{max(x2 - x - 1, 0.5):.1f}" height="{frame.bottom - y:.1f}">'
            f"<title>{current_label} {fmt_number(lo)}–{fmt_number(hi)}: "
            f"{share:.1f}%</title></rect>"
        )
    steps = [f"{frame.x(edges[0]):.1f},{frame.bottom:.1f}"]
    for share, lo, hi in zip(ref, edges[:-1], edges[1:], strict=True):
        y = frame.y(share)
        steps += [f"{frame.x(lo):.1f},{y:.1f}", f"{frame.x(hi):.1f},{y:.1f}"]
    steps.append(f"{frame.x(edges[-1]):.1f},{frame.bottom:.1f}")
    body.append(f'<polyline class="ref" points="{" ".join(steps)}"/>')
    body += _legend(frame, [("bar", current_label), ("ref", reference_label)])
    return _svg(f"{title}: {current_label} as bars, {reference_label} as an outline", body)


def _legend(frame: _Frame, items: list[tuple[str, str]]) -> list[str]:
    """Keys in a row under the title, from the left edge of the plot."""
    out, x = [], float(frame.left)
    for css, label in items:
        out.append(
            f'<rect class="key {css}" x="{x:.0f}" y="24" width="10" height="10"/>'
            f'<text class="tick" x="{x + 14:.0f}" y="33">{escape(label)}</text>'
        )
        x += 26 + 6.5 * len(label)
    return out


def trend_svg(
    series: Sequence[Series],
    thresholds: Sequence[Threshold],
    title: str,
    y_label: str,
    *,
    y_min: float = 0.0,
    y_floor_max: float = 0.0,
) -> Markup:
    """Values over dates, one line per series (the first is the main one), with labelled
    threshold rules."""
    points = [(d, v) for s in series for d, v in s.points if v is not None]
    if not points:
        return empty_chart(title, "no values yet: they appear after the second scored date")
    dates = [d for s in series for d, _ in s.points]  # dates without a value keep their place
    first, last = min(dates), max(dates)
    span = (last - first).days
    pad = 0.5 if span == 0 else span * 0.08
    top = max([v for _, v in points] + [t.value for t in thresholds] + [y_floor_max])
    frame = _Frame(-pad, span + pad, y_min, y_min + (top - y_min) * 1.12)
    body = frame.axes(
        title, "date", y_label, nice_ticks(y_min, frame.y1, 5), _date_ticks(first, last)
    )
    for t in thresholds:
        y = frame.y(t.value)
        body.append(
            f'<line class="{t.css}" x1="{frame.left}" x2="{frame.right}" y1="{y:.1f}" '
            f'y2="{y:.1f}"/><text class="thr-label {t.css}" x="{frame.right - 4}" '
            f'y="{y - 4:.1f}" text-anchor="end">{escape(t.label)} '
            f"{fmt_number(t.value)}</text>"
        )
    for s in reversed(series):  # the first series is the main one: drawn last, on top
        body += _line(frame, s, first)
    if len(series) > 1:
        body += _legend(frame, [(s.css, s.name) for s in series])
    last_value = next((v for d, v in sorted(series[0].points, reverse=True) if v is not None), None)
    summary = f"latest {fmt_number(last_value)}" if last_value is not None else "no latest value"
    return _svg(f"{title} from {first} to {last}, {summary}", body)


def _date_ticks(first: dt.date, last: dt.date) -> list[tuple[float, str]]:
    span = (last - first).days
    if span == 0:
        return [(0.0, first.isoformat())]
    step = max(1, math.ceil(span / 4))
    return [
        (float(i), (first + dt.timedelta(days=i)).isoformat()) for i in range(0, span + 1, step)
    ]


def _line(frame: _Frame, s: Series, first: dt.date) -> list[str]:
    out: list[str] = []
    run: list[str] = []
    for day, value in sorted(s.points):
        if value is None:
            if len(run) > 1:
                out.append(f'<polyline class="{s.css}" points="{" ".join(run)}"/>')
            run = []
            continue
        x, y = frame.x((day - first).days), frame.y(value)
        run.append(f"{x:.1f},{y:.1f}")
        out.append(
            f'<circle class="dot {s.css}" cx="{x:.1f}" cy="{y:.1f}" r="3.5">'
            f"<title>{day}: {escape(s.name)} {value:.4g}</title></circle>"
        )
    if len(run) > 1:
        out.insert(0, f'<polyline class="{s.css}" points="{" ".join(run)}"/>')
    return out


def sparkline_svg(
    values: Sequence[float | None], status: str = "", warn: float | None = None, label: str = "PSI"
) -> Markup:
    """A small line of the last values (None skipped); the last point coloured by status."""
    width, height, pad = 120, 30, 4
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    if not known:
        return Markup('<span class="spark-empty">no PSI yet</span>')
    top = max([v for _, v in known] + ([warn] if warn is not None else []))
    top = top if top > 0 else 1.0
    n = max(len(values) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + i / n * (width - 2 * pad), height - pad - v / top * (height - 2 * pad)

    body = []
    if warn is not None:
        wy = xy(0, warn)[1]
        body.append(f'<line class="thr-warn" x1="0" x2="{width}" y1="{wy:.1f}" y2="{wy:.1f}"/>')
    # Inline arithmetic: a dashboard draws a thousand of these (30k points) per request.
    sx, sy, base = (width - 2 * pad) / n, (height - 2 * pad) / top, height - pad
    pts = " ".join([f"{pad + i * sx:.1f},{base - v * sy:.1f}" for i, v in known])
    body.append(f'<polyline class="line" points="{pts}"/>')
    lx, ly = xy(*known[-1])
    body.append(f'<circle class="dot last {escape(status)}" cx="{lx:.1f}" cy="{ly:.1f}" r="3"/>')
    text = ", ".join(f"{v:.3f}" for _, v in known[-8:])
    return _svg(
        f"{label} over the last {len(known)} dates: {text}", body, width, height, css="spark"
    )
