"""An owner's report of one batch run: subject, plain text and HTML, several models per message."""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from typing import Any

from mldropd.text import duration

# Longest error text put in a report; beyond it the head and the tail are kept.
MAX_ERROR_CHARS = 3000


@dataclass
class ReportItem:
    """One model's outcome for one date, as the owner's report shows it."""

    model_id: int
    model_name: str
    model_version: int
    date: dt.date
    status: str  # "succeeded" | "failed" | "skipped"
    attempt: int
    max_attempts: int
    rows: int | None
    seconds: float | None
    error: str | None  # plain words, may be multi-line (traceback tail)
    retry_at: dt.datetime | None  # when a retry is scheduled, else None
    dq: dict[str, Any] | None  # status, reason, psi, psi_noise, auc, ks, reference_date
    recovered: bool = False  # succeeded after earlier failed attempts
    note: str | None = None  # e.g. scores held back by the DQ gate, or a slow run
    stale_slice: str | None = (
        None  # "scored from the 2026-11-29 slice: 2026-11-30 not present; ..."
    )
    keys: str | None = None  # what the key policies did (null / duplicated entity keys)


def _one_line(value: str) -> str:
    return " ".join(value.split())


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _dq_status(item: ReportItem) -> str | None:
    if not item.dq:
        return None
    return str(item.dq.get("status") or "") or None


def _severity(item: ReportItem) -> int:
    # Problems first: the owner reads what needs action before what went fine.
    if item.status == "failed":
        return 0
    dq = _dq_status(item)
    if dq == "alert":
        return 1
    if dq == "warn":
        return 2
    if item.status != "succeeded":
        return 3
    return 4


def _fmt_time(value: dt.datetime) -> str:
    return f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def _fmt_rows(rows: int | None) -> str | None:
    return None if rows is None else f"{rows:,}"


def _fmt_seconds(seconds: float | None) -> str | None:
    return None if seconds is None else duration(seconds)


def _fmt_num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _status_words(item: ReportItem) -> str:
    attempt = f"attempt {item.attempt} of {item.max_attempts}"
    if item.status == "succeeded" and item.recovered:
        return f"succeeded on {attempt}, after an earlier failure"
    return f"{item.status} ({attempt})"


def _retry_words(item: ReportItem) -> str | None:
    words = None
    if item.retry_at is not None and item.status != "succeeded":
        words = f"A retry is scheduled at {_fmt_time(item.retry_at)}."
    elif item.status == "failed":
        words = "No more retries: fix the model and upload a new version."
    if item.note:
        words = f"{words} {item.note}" if words else item.note
    return words


def _dq_figures(dq: dict[str, Any]) -> str:
    """'warn — PSI 0.132 (noise level 0.004), AUC 0.612, KS 0.081, compared with 2026-11-26'."""
    parts = []
    if dq.get("psi") is not None:
        noise = dq.get("psi_noise")
        parts.append(
            f"PSI {_fmt_num(dq['psi'])}"
            + (f" (noise level {_fmt_num(noise)})" if noise is not None else "")
        )
    for key in ("auc", "ks"):
        if dq.get(key) is not None:
            parts.append(f"{key.upper()} {_fmt_num(dq[key])}")
    if dq.get("reference_date"):
        parts.append(f"compared with {dq['reference_date']}")
    status = str(dq.get("status") or "unknown")
    return f"{status} — {', '.join(parts)}" if parts else status


def _error_text(error: str) -> str:
    error = error.strip("\n")
    if len(error) <= MAX_ERROR_CHARS:
        return error
    head, tail = error[: MAX_ERROR_CHARS // 3], error[-(2 * MAX_ERROR_CHARS) // 3 :]
    return f"{head}\n[… {len(error) - len(head) - len(tail)} characters left out …]\n{tail}"


def model_url(base_url: str, model_id: int) -> str:
    """Link to a model's page on the daemon."""
    return f"{base_url.rstrip('/')}/models/{model_id}"


def _date_words(items: list[ReportItem]) -> str:
    dates = sorted({item.date for item in items})
    return dates[0].isoformat() if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def _outcome(items: list[ReportItem]) -> str:
    """The subject's tail: 'ok', 'failed, retry scheduled', '1 failed, 2 DQ alerts', ..."""
    failed = [i for i in items if i.status == "failed"]
    skipped = [i for i in items if i.status == "skipped"]
    alerts = [i for i in items if i.status == "succeeded" and _dq_status(i) == "alert"]
    warns = [i for i in items if i.status == "succeeded" and _dq_status(i) == "warn"]
    if len(items) == 1:
        item = items[0]
        if failed:
            return "failed, retry scheduled" if item.retry_at else "failed, no more retries"
        if skipped:
            return "skipped"
        if alerts:
            return "DQ alert"
        if warns:
            return "DQ warning"
        return "ok after a retry" if item.recovered else "ok"
    parts = []
    if failed:
        parts.append(f"{len(failed)} failed")
    if skipped:
        parts.append(f"{len(skipped)} skipped")
    if alerts:
        parts.append("DQ alert" if len(alerts) == 1 else f"{len(alerts)} DQ alerts")
    if warns:
        parts.append("DQ warning" if len(warns) == 1 else f"{len(warns)} DQ warnings")
    return ", ".join(parts) or "all ok"


def _subject(items: list[ReportItem]) -> str:
    what = items[0].model_name if len(items) == 1 else f"{len(items)} models"
    stale = sorted({str(i.stale_slice).split(":")[0] for i in items if i.stale_slice})
    source = f" ({', '.join(stale)})" if stale else ""  # "(scored from the 2026-11-29 slice)"
    return _one_line(f"mldropd: {what} scored {_date_words(items)}{source} — {_outcome(items)}")


def _counts(items: list[ReportItem]) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.status] = counts.get(item.status, 0) + 1
    order = ["succeeded", "failed", "skipped"]
    keys = order + sorted(k for k in counts if k not in order)
    return ", ".join(f"{counts[k]} {k}" for k in keys if k in counts)


def _fields(item: ReportItem) -> list[tuple[str, str]]:
    """The labelled facts of one model in the text part."""
    fields = [("Date", item.date.isoformat()), ("Status", _status_words(item))]
    rows, seconds = _fmt_rows(item.rows), _fmt_seconds(item.seconds)
    if rows is not None:
        fields.append(("Rows", rows))
    if seconds is not None:
        fields.append(("Time", seconds))
    if item.stale_slice:
        fields.append(("Slice", item.stale_slice))
    if item.keys:
        fields.append(("Keys", item.keys))
    if item.dq:
        fields.append(("DQ", _dq_figures(item.dq)))
        if item.dq.get("reason"):
            fields.append(("DQ reason", str(item.dq["reason"])))
    elif item.status == "succeeded":
        fields.append(("DQ", "not checked"))
    return fields


def _title(item: ReportItem) -> str:
    return f"{item.model_name} (v{item.model_version})"


def _text(owner_email: str, items: list[ReportItem], base_url: str) -> str:
    lines = [
        f"mldropd report for {owner_email}, {_date_words(items)}",
        f"{_plural(len(items), 'model')}: {_counts(items)}.",
        "",
    ]
    for item in items:
        lines += [_title(item), "-" * len(_title(item))]
        for label, value in _fields(item):
            lines.append(f"{label + ':':<12}{value}")
        if item.error:
            label = "Error" if item.status == "failed" else "Reason"
            lines.append(f"{label}:")
            lines += ["    " + line for line in _error_text(item.error).splitlines()]
        retry = _retry_words(item)
        if retry:
            lines.append(retry)
        lines += [f"{'Model page:':<12}{model_url(base_url, item.model_id)}", ""]
    lines.append(f"You get this message because you own these models on {base_url.rstrip('/')}.")
    return "\n".join(lines) + "\n"


_COLOURS = {"failed": "#b00020", "alert": "#b00020", "warn": "#a15c00", "skipped": "#555555"}
_CELL = "padding:4px 8px;border:1px solid #ccc;vertical-align:top;text-align:left"


def _cell(content: str, *, header: bool = False, extra: str = "") -> str:
    tag = "th" if header else "td"
    return f'<{tag} style="{_CELL}{extra}">{content}</{tag}>'


def _html_status(item: ReportItem) -> str:
    colour = _COLOURS.get(item.status, "#1b5e20")
    return f'<b style="color:{colour}">{html.escape(_status_words(item))}</b>'


def _html_dq(item: ReportItem) -> str:
    if not item.dq:
        return "not checked" if item.status == "succeeded" else ""
    colour = _COLOURS.get(str(item.dq.get("status")), "#1b5e20")
    text = f'<span style="color:{colour}">{html.escape(_dq_figures(item.dq))}</span>'
    if item.dq.get("reason"):
        text += f"<br>{html.escape(str(item.dq['reason']))}"
    return text


def _html_row(item: ReportItem, base_url: str) -> list[str]:
    url = html.escape(model_url(base_url, item.model_id), quote=True)
    cells = [
        f'<a href="{url}">{html.escape(_title(item))}</a>',
        html.escape(item.date.isoformat()),
        _html_status(item),
        html.escape(_fmt_rows(item.rows) or ""),
        html.escape(_fmt_seconds(item.seconds) or ""),
        _html_dq(item),
        f'<a href="{url}">{url}</a>',
    ]
    rows = ["<tr>" + "".join(_cell(c) for c in cells) + "</tr>"]
    notes = []
    if item.error:
        label = "Error" if item.status == "failed" else "Reason"
        notes.append(
            f'{label}:<pre style="margin:4px 0;white-space:pre-wrap">'
            f"{html.escape(_error_text(item.error))}</pre>"
        )
    retry = _retry_words(item)
    if retry:
        notes.append(f"<b>{html.escape(retry)}</b>")
    for label, fact in (("Slice", item.stale_slice), ("Keys", item.keys)):
        if fact:
            notes.append(f"<div>{label}: {html.escape(fact)}</div>")
    if notes:
        notes_cell = f'<td colspan="{len(cells)}" style="{_CELL}">' + "".join(notes) + "</td>"
        rows.append(f"<tr>{notes_cell}</tr>")
    return rows


def _html(owner_email: str, items: list[ReportItem], base_url: str) -> str:
    heads = ["Model", "Date", "Status", "Rows", "Time", "Data quality", "Model page"]
    body = [row for item in items for row in _html_row(item, base_url)]
    base = html.escape(base_url.rstrip("/"))
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html><head><meta charset="utf-8">'
            f"<title>{html.escape(_subject(items))}</title></head>",
            '<body style="font-family:sans-serif;font-size:14px">',
            f"<p>mldropd report for {html.escape(owner_email)}, {_date_words(items)}<br>",
            f"{_plural(len(items), 'model')}: {html.escape(_counts(items))}.</p>",
            '<table style="border-collapse:collapse">',
            "<tr>" + "".join(_cell(h, header=True) for h in heads) + "</tr>",
            *body,
            "</table>",
            f"<p>You get this message because you own these models on {base}.</p>",
            "</body></html>",
            "",
        ]
    )


def build_report(owner_email: str, items: list[ReportItem], base_url: str) -> tuple[str, str, str]:
    """One owner's report of a batch run as (subject, text body, HTML body)."""
    if not items:
        raise ValueError("a report needs at least one model")
    ordered = sorted(items, key=lambda i: (_severity(i), i.model_name.lower(), i.model_id))
    text = _text(owner_email, ordered, base_url)
    return _subject(ordered), text, _html(owner_email, ordered, base_url)
