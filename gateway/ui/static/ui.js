// The web page's only script (served by the gateway; no inline script, see the CSP).
// Camera data is only ever put on the page as text (textContent, attribute
// values set by the DOM), never parsed as HTML.
"use strict";

const MAX_LIVE_ROWS = 100;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function timeText(iso) {
  return iso ? iso.replace("T", " ").slice(0, 19) + "Z" : "–";
}

function confidenceText(value) {
  return typeof value === "number" ? Math.round(value * 100) + "%" : "–";
}

function imageUrl(id, kind) {
  return "/image/" + encodeURIComponent(id) + "/" + kind;
}

// A link to the full picture around an image of it (`shown`: the scene's thumbnail).
function picture(id, kind, shown, className, alt) {
  const link = el("a", className);
  link.href = imageUrl(id, kind);
  const img = el("img", "zoom");
  img.src = imageUrl(id, shown);
  img.alt = alt;
  link.append(img);
  return link;
}

function meta(parts) {
  const line = el("div", "meta");
  parts.forEach(([cls, text], index) => {
    if (index) line.append(" · ");
    line.append(el("span", cls, text));
  });
  return line;
}

// The same structure as pages.live_row renders on the server.
function liveRow(item) {
  const li = el("li", "item fresh " + (item.type === "camera_event" ? "camera-event" : "read"));
  li.dataset.id = item.id;
  const what = el("div", "what");
  if (item.type === "camera_event") {
    li.append(el("div", "crop none", "event"));
    what.append(el("span", "badge event", "camera event"), " ", el("span", "kind", item.kind));
    what.append(meta([["camera", item.camera], ["", timeText(item.time)]]));
    li.append(what);
    return li;
  }
  li.append(item.plate_image ? picture(item.id, "plate", "plate", "crop", "plate crop")
                             : el("div", "crop none", "no crop"));
  what.append(el("span", "plate", item.plate));
  if (item.known) {
    const badge = el("span", "badge known", item.known + " ");
    badge.append(el("small", "", item.match));
    what.append(" ", badge);
  }
  what.append(meta([["camera", item.camera], ["", timeText(item.time)],
                    ["direction", item.direction], ["", confidenceText(item.confidence)]]));
  li.append(what);
  if (item.scene_image) li.append(picture(item.id, "scene", "thumb", "scene", "scene"));
  return li;
}

function startLive(list) {
  const state = document.getElementById("live-state");
  // The stream starts after the newest item the server rendered: nothing published
  // while the page loaded is missed (reconnects say Last-Event-ID themselves).
  const after = encodeURIComponent(list.dataset.after || "0");
  const source = new EventSource("/live/events?after=" + after);
  source.onopen = () => { state.textContent = "live"; state.className = "dot on"; };
  source.onerror = () => { state.textContent = "reconnecting…"; state.className = "dot off"; };
  source.addEventListener("read", (message) => {
    let item;
    try { item = JSON.parse(message.data); } catch (_) { return; }
    if (list.querySelector('[data-id="' + CSS.escape(item.id) + '"]')) return;
    list.prepend(liveRow(item));
    while (list.children.length > MAX_LIVE_ROWS) list.lastElementChild.remove();
  });
}

function startViewer() {
  const viewer = document.getElementById("viewer");
  const image = document.getElementById("viewer-image");
  if (!viewer || typeof viewer.showModal !== "function") return;  // links still open it
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a");
    if (!link || !(link.querySelector("img.zoom") || link.classList.contains("zoom-link"))) return;
    event.preventDefault();
    image.src = link.href;
    viewer.showModal();
  });
  viewer.addEventListener("click", () => viewer.close());
}

// A picture no longer kept (memory budget, history off): say so instead of a broken image.
document.addEventListener("error", (event) => {
  const img = event.target;
  if (!(img instanceof HTMLImageElement) || !img.classList.contains("zoom")) return;
  const link = img.closest("a");
  const gone = el("div", "crop none", "no picture");
  (link || img).replaceWith(gone);
}, true);

document.addEventListener("DOMContentLoaded", () => {
  startViewer();
  const list = document.getElementById("live");
  if (list) startLive(list);
});
