"""The web page's HTML, rendered on the server from plain Python.

Every value that reaches the markup goes through `esc` (text and attribute
values alike): plates, camera names, known names and camera event kinds come
from cameras or from people, and must show as text whatever they hold. Only
markup written here is trusted. No inline script and no inline style: the
Content-Security-Policy forbids them.
"""

from __future__ import annotations

import html
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.ui.live import LiveItem

NAV = (("/", "Live"), ("/cameras", "Cameras"), ("/known", "Known plates"), ("/history", "History"),
       ("/health", "Health"))  # fmt: skip


def esc(value: object) -> str:
    """Text for HTML content or a quoted attribute value."""
    return html.escape("" if value is None else str(value), quote=True)


def layout(
    title: str,
    active: str,
    body: str,
    *,
    refresh_seconds: int | None = None,
    scripts: Sequence[str] = (),
) -> str:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if href == active else ""}>{esc(label)}</a>'
        for href, label in NAV
    )
    refresh = f'<meta http-equiv="refresh" content="{refresh_seconds}">' if refresh_seconds else ""
    script_tags = "".join(f'<script src="/static/{esc(s)}" defer></script>' for s in scripts)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"{refresh}<title>{esc(title)} · lpr-gateway</title>"
        '<link rel="stylesheet" href="/static/ui.css">'
        f'<link rel="icon" href="data:,">{script_tags}</head><body>'
        f'<header><span class="brand">lpr-gateway</span><nav>{nav}</nav></header>'
        f"<main><h1>{esc(title)}</h1>{body}</main>"
        '<dialog id="viewer"><form method="dialog"><button class="close" aria-label="close">'
        '×</button></form><img alt="" id="viewer-image"></dialog>'
        "</body></html>"
    )


def format_epoch(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def format_time_text(iso: str | None) -> str:
    """`2026-12-02T13:40:01.123Z` → `2026-12-02 13:40:01Z` (UTC, as stored)."""
    if not iso:
        return "–"
    return iso.replace("T", " ")[:19] + "Z"


def format_confidence(value: object) -> str:
    return f"{value:.0%}" if isinstance(value, int | float) else "–"


def csrf_input(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(token)}">'


def notice(message: str | None, kind: str = "info") -> str:
    return f'<p class="notice {esc(kind)}" role="status">{esc(message)}</p>' if message else ""


# -- Live ---------------------------------------------------------------------------------


def image_url(read_id: str, kind: str) -> str:
    return f"/image/{urllib.parse.quote(read_id, safe='')}/{kind}"


def live_row(summary: Mapping[str, Any]) -> str:
    """One item of the live list; `ui.js` builds the same structure with textContent."""
    camera, when = esc(summary.get("camera")), esc(format_time_text(summary.get("time")))
    data_id = f'data-id="{esc(summary.get("id"))}"'
    if summary.get("type") == "camera_event":
        return (
            f'<li class="item camera-event" {data_id}><div class="crop none">event</div>'
            f'<div class="what"><span class="badge event">camera event</span> '
            f'<span class="kind">{esc(summary.get("kind"))}</span>'
            f'<div class="meta"><span class="camera">{camera}</span> · <span>{when}</span></div>'
            "</div></li>"
        )
    read_id = str(summary.get("id", ""))
    crop = (
        f'<a class="crop" href="{image_url(read_id, "plate")}"><img class="zoom" loading="lazy"'
        f' src="{image_url(read_id, "plate")}" alt="plate crop"></a>'
        if summary.get("plate_image")
        else '<div class="crop none">no crop</div>'
    )
    scene = (
        f'<a class="scene" href="{image_url(read_id, "scene")}"><img class="zoom" loading="lazy"'
        f' src="{image_url(read_id, "thumb")}" alt="scene"></a>'
        if summary.get("scene_image")
        else ""
    )
    known = summary.get("known")
    known_badge = (
        f'<span class="badge known">{esc(known)} <small>{esc(summary.get("match"))}</small></span>'
        if known
        else ""
    )
    return (
        f'<li class="item read" {data_id}>{crop}<div class="what">'
        f'<span class="plate">{esc(summary.get("plate"))}</span> {known_badge}'
        f'<div class="meta"><span class="camera">{camera}</span> · <span>{when}</span> · '
        f'<span class="direction">{esc(summary.get("direction"))}</span> · '
        f"<span>{esc(format_confidence(summary.get('confidence')))}</span></div>"
        f"</div>{scene}</li>"
    )


def live_page(items: Iterable[LiveItem], image_budget_note: str, newest_seq: int) -> str:
    """`newest_seq`: the stream starts after it (what happens while the page loads is sent)."""
    rows = "".join(live_row(item.summary) for item in items)
    body = (
        '<p class="lead"><span id="live-state" class="dot">connecting…</span> '
        "Reads as they are published, newest first. Tap a picture for full size.</p>"
        f'<ul id="live" class="items" data-after="{newest_seq}">{rows}</ul>'
        f'<p class="fine">{esc(image_budget_note)}</p>'
    )
    return layout("Live", "/", body, scripts=("ui.js",))


# -- Cameras ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CameraRow:
    id: str
    name: str | None
    protocol: str
    address: str
    state: str  # online | offline | disabled | login refused
    last_read: float | None
    last_read_age: float | None
    reads_per_minute: int
    parse_errors: int
    reconnects: int
    enabled: bool


def cameras_page(
    rows: Sequence[CameraRow], csrf: str, message: str | None, can_switch: bool
) -> str:
    if not rows:
        return layout("Cameras", "/cameras", "<p>No cameras in the config.</p>")
    cards = []
    for row in rows:
        state_class = row.state.replace(" ", "-")
        action = "disable" if row.enabled else "enable"
        switch = (
            f'<form method="post" action="/cameras/{esc(urllib.parse.quote(row.id))}/{action}">'
            f'{csrf_input(csrf)}<button class="{"danger" if row.enabled else ""}">'
            f"{action.capitalize()}</button></form>"
            if can_switch
            else ""
        )
        cards.append(
            f'<section class="card camera" id="camera-{esc(row.id)}">'
            f'<div class="card-head"><h2>{esc(row.name or row.id)}</h2>'
            f'<span class="state {esc(state_class)}">{esc(row.state)}</span></div>'
            "<dl>"
            f"<dt>id</dt><dd><code>{esc(row.id)}</code></dd>"
            f"<dt>protocol</dt><dd>{esc(row.protocol)}</dd>"
            f"<dt>address</dt><dd><code>{esc(row.address)}</code></dd>"
            f'<dt>last read</dt><dd title="{esc(format_epoch(row.last_read))}">'
            f"{esc(format_age(row.last_read_age))}</dd>"
            f"<dt>reads/min</dt><dd>{row.reads_per_minute}</dd>"
            f"<dt>parse errors</dt><dd>{row.parse_errors}</dd>"
            f"<dt>reconnects</dt><dd>{row.reconnects}</dd>"
            f"</dl>{switch}</section>"
        )
    body = (
        notice(message)
        + '<p class="fine">Refreshes every 10 s. Last read: since this gateway started.</p>'
        + f'<div class="cards">{"".join(cards)}</div>'
    )
    return layout("Cameras", "/cameras", body, refresh_seconds=10)


# -- Known plates -------------------------------------------------------------------------


def known_page(
    items: Sequence[Mapping[str, Any]],
    camera_ids: Sequence[str],
    csrf: str,
    message: str | None,
    error: str | None,
) -> str:
    config_rows, runtime_rows = [], []
    for item in items:
        cameras = ", ".join(item.get("cameras") or []) or "all"
        if item["source"] == "config":
            config_rows.append(
                f"<tr><td>{esc(item['name'])}</td>"
                f"<td>{''.join(f'<code>{esc(p)}</code> ' for p in item['plates'])}</td></tr>"
            )
            continue
        plates = "".join(
            f'<form method="post" action="/known/remove" class="chip">{csrf_input(csrf)}'
            f'<input type="hidden" name="name" value="{esc(item["name"])}">'
            f'<input type="hidden" name="plate" value="{esc(plate)}">'
            f"<code>{esc(plate)}</code>"
            f'<button class="link" aria-label="remove {esc(plate)}">×</button></form>'
            for plate in item["plates"]
        )
        runtime_rows.append(
            f"<tr><td>{esc(item['name'])}</td><td>{plates}</td><td>{esc(cameras)}</td>"
            f"<td>{esc(item.get('valid_until') or '–')}</td>"
            f'<td><form method="post" action="/known/remove">{csrf_input(csrf)}'
            f'<input type="hidden" name="name" value="{esc(item["name"])}">'
            '<button class="danger">Remove all</button></form></td></tr>'
        )
    config_table = (
        "<table><thead><tr><th>name</th><th>plates</th></tr></thead>"
        f"<tbody>{''.join(config_rows)}</tbody></table>"
        if config_rows
        else "<p>None in the config file.</p>"
    )
    runtime_table = (
        "<table><thead><tr><th>name</th><th>plates</th><th>cameras</th><th>valid until</th>"
        f"<th></th></tr></thead><tbody>{''.join(runtime_rows)}</tbody></table>"
        if runtime_rows
        else "<p>None added at runtime.</p>"
    )
    camera_options = "".join(f'<option value="{esc(c)}">{esc(c)}</option>' for c in camera_ids)
    add_form = (
        f'<form method="post" action="/known/add" class="card form">{csrf_input(csrf)}'
        '<label>Name <input name="name" required maxlength="64" placeholder="Alice\'s car">'
        "</label>"
        '<label>Plates <input name="plates" required placeholder="AB123CD, AB 124 CD">'
        "<small>comma separated</small></label>"
        f'<label>Cameras <select name="cameras" multiple size="3">{camera_options}</select>'
        "<small>none chosen: all</small></label>"
        '<label>Valid for <input name="valid_hours" type="number" min="0" step="any" '
        'placeholder="hours; empty: no end"></label>'
        "<button>Add</button></form>"
    )
    body = (
        notice(message)
        + notice(error, "error")
        + "<h2>Added at runtime</h2>"
        + runtime_table
        + "<h2>Add plates</h2>"
        + add_form
        + "<h2>From the config file <small>(read-only)</small></h2>"
        + config_table
    )
    return layout("Known plates", "/known", body)


# -- History ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryForm:
    plate: str = ""
    fuzzy: bool = False
    camera: str = ""
    known: str = ""
    since: str = ""  # datetime-local text, UTC
    until: str = ""

    def query_string(self, **changes: object) -> str:
        values: dict[str, object] = {
            "plate": self.plate,
            "fuzzy": "1" if self.fuzzy else "",
            "camera": self.camera,
            "known": self.known,
            "since": self.since,
            "until": self.until,
            **changes,
        }
        return urllib.parse.urlencode({k: v for k, v in values.items() if v not in ("", None)})


def history_off_page() -> str:
    body = (
        '<p class="notice">The read history is off. Set <code>history.enabled: true</code> in '
        "the config to keep every read (searchable here, exportable as CSV).</p>"
    )
    return layout("History", "/history", body)


def history_page(
    form: HistoryForm,
    rows: Sequence[Any],
    total: int,
    page: int,
    page_size: int,
    camera_ids: Sequence[str],
    error: str | None,
) -> str:
    camera_options = '<option value="">any</option>' + "".join(
        f'<option value="{esc(c)}"{" selected" if c == form.camera else ""}>{esc(c)}</option>'
        for c in camera_ids
    )
    search = (
        '<form method="get" action="/history" class="card form search">'
        f'<label>Plate <input name="plate" value="{esc(form.plate)}" placeholder="fragment">'
        "</label>"
        f'<label class="check"><input type="checkbox" name="fuzzy" value="1"'
        f"{' checked' if form.fuzzy else ''}> within one character</label>"
        f'<label>Camera <select name="camera">{camera_options}</select></label>'
        f'<label>Known name <input name="known" value="{esc(form.known)}"></label>'
        f'<label>From (UTC) <input type="datetime-local" name="since" value="{esc(form.since)}">'
        "</label>"
        f'<label>Until (UTC) <input type="datetime-local" name="until" value="{esc(form.until)}">'
        "</label>"
        "<button>Search</button>"
        f'<a class="button secondary" href="/history.csv?{esc(form.query_string())}" download>'
        "CSV</a></form>"
    )
    lines = []
    for row in rows:
        event = row.event
        crop = (
            f'<a href="{image_url(row.id, "plate")}"><img class="zoom" loading="lazy" '
            f'src="{image_url(row.id, "plate")}" alt="plate crop"></a>'
            if row.has_plate_image
            else ""
        )
        scene = (
            f' <a href="{image_url(row.id, "scene")}" class="zoom-link">scene</a>'
            if row.has_scene_image
            else ""
        )
        lines.append(
            f'<tr><td class="crop-cell">{crop}</td>'
            f'<td><span class="plate">{esc(row.plate)}</span>{scene}</td>'
            f"<td>{esc(row.camera)}</td>"
            f"<td>{esc(format_time_text(event.get('time') or event.get('received')))}</td>"
            f"<td>{esc(event.get('direction'))}</td>"
            f"<td>{esc(format_confidence(event.get('confidence')))}</td>"
            f"<td>{esc(row.known or '')} <small>{esc(event.get('match') or '')}</small></td></tr>"
        )
    pages = max(1, -(-total // page_size))
    nav = []
    if page > 1:
        nav.append(f'<a href="/history?{esc(form.query_string(page=page - 1))}">← newer</a>')
    nav.append(f"<span>page {page} of {pages} · {total} reads</span>")
    if page < pages:
        nav.append(f'<a href="/history?{esc(form.query_string(page=page + 1))}">older →</a>')
    table = (
        '<div class="scroll"><table class="history"><thead><tr><th></th><th>plate</th>'
        "<th>camera</th><th>time (UTC)</th><th>direction</th><th>confidence</th><th>known</th>"
        f"</tr></thead><tbody>{''.join(lines)}</tbody></table></div>"
        if lines
        else "<p>No reads match.</p>"
    )
    body = (
        search
        + notice(error, "error")
        + table
        + f'<nav class="pager" aria-label="pages">{"".join(nav)}</nav>'
    )
    return layout("History", "/history", body, scripts=("ui.js",))


# -- Health -------------------------------------------------------------------------------


def health_page(report: Mapping[str, Any], outbox: Mapping[str, Any], ui: Mapping[str, Any]) -> str:
    status = str(report.get("status", "unknown"))
    problems = "".join(f"<li>{esc(p)}</li>" for p in report.get("problems", []))
    warnings = "".join(f"<li>{esc(w)}</li>" for w in report.get("warnings", []))
    oldest = outbox.get("oldest_age_seconds")
    facts = {
        "broker": "connected" if report.get("mqtt_connected") else "not connected",
        "outbox events": outbox.get("events"),
        "outbox bytes": f"{outbox.get('bytes')} of {outbox.get('max_bytes')}",
        "oldest waiting": "–" if oldest is None else format_age(float(oldest)),
        "dead letters": outbox.get("dead_letters"),
        "uptime": format_age(report.get("uptime_seconds")).removesuffix(" ago"),
        "live watchers": ui.get("watchers"),
        "live items dropped for slow watchers": ui.get("dropped"),
    }
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts.items())
    body = (
        f'<section class="card"><div class="card-head"><h2>Gateway</h2>'
        f'<span class="state {esc(status)}">{esc(status)}</span></div><dl>{rows}</dl>'
        + (f'<h3>Problems</h3><ul class="problems">{problems}</ul>' if problems else "")
        + (f'<h3>Warnings</h3><ul class="warnings">{warnings}</ul>' if warnings else "")
        + '<p class="fine">The same reasons as <code>/healthz</code>. Refreshes every 10 s.</p>'
        + "</section>"
    )
    return layout("Health", "/health", body, refresh_seconds=10)


def error_page(status_title: str, message: str, back: str) -> str:
    body = f'<p class="notice error">{esc(message)}</p><p><a href="{esc(back)}">back</a></p>'
    return layout(status_title, back, body)
