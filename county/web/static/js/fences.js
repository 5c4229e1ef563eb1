// 电子围栏 Geofences: draw a polygon (click the corners, then "Finish") or a circle (click the centre, then a
// point of the edge) on the map, name it and save it (PUT /api/v1/fences/{id}); tick fences, name the
// wearers they apply to and the boxes, push them (POST /api/v1/fences/push) and watch each box's answer
// (applied / rejected with the reason) arrive over the event stream.
//
// The drawing is written here, not taken from a plugin: no Leaflet drawing plugin is packaged on PyPI as
// xstatic (the rule is: no third-party code copied in, nothing from a CDN), and two shapes with click-to-
// place vertices are ~100 lines. Fences are stored in WGS-84: on a GCJ-02 tile layer every clicked point is
// shifted back (map.js fromView) before it is saved, and stored fences are shifted to be drawn.
import { api, explain } from "./api.js";
import { notice } from "./alarmwords.js";
import { $, clear, h } from "./dom.js";
import { fmtDateTime } from "./fmt.js";
import { t } from "./i18n.js";
import { createMap } from "./map.js";
import { loaded, may, ROLE } from "./session.js";

const mapEl = $("#fence-map");
let m = null;
let fences = [];
const fenceLayers = new Map();   // fence id -> layer on the map
let pushId = null;

// ------------------------------------------------------------------------------------------ drawing
const draw = {mode: null, points: [], preview: null, vertices: [], shape: null};

function hint(text) { $("#draw-hint").textContent = text; }

function resetDrawing() {
  for (const v of draw.vertices) v.remove();
  if (draw.preview) draw.preview.remove();
  if (draw.shape && !draw.shape.saved) draw.shape.layer.remove();
  Object.assign(draw, {mode: null, points: [], preview: null, vertices: [], shape: null});
  mapEl.classList.remove("drawing");
  m.map.doubleClickZoom.enable();
  $("#draw-finish").disabled = true;
  $("#draw-cancel").disabled = true;
  $("#save-tools").hidden = true;
  mapEl.dataset.drawing = "";
  mapEl.dataset.vertices = "0";
  hint("");
}

function start(mode) {
  resetDrawing();
  draw.mode = mode;
  mapEl.classList.add("drawing");
  mapEl.dataset.drawing = mode;
  m.map.doubleClickZoom.disable();
  $("#draw-cancel").disabled = false;
  hint(mode === "polygon" ? t("Click each corner on the map, then Finish.") : t("Click the centre, then a point on the edge."));
}

function onClick(ev) {
  if (!draw.mode || draw.shape) return;
  const L = m.L;
  draw.points.push(ev.latlng);
  draw.vertices.push(L.circleMarker(ev.latlng, {radius: 4, color: "#b42318", weight: 2}).addTo(m.map));
  mapEl.dataset.vertices = String(draw.points.length);
  // what was clicked, as drawn (the tile layer's datum) and as it will be stored (WGS-84): tests compare them
  mapEl.dataset.viewPoints = JSON.stringify(draw.points.map((p) => [p.lat, p.lng]));
  mapEl.dataset.wgsPoints = JSON.stringify(draw.points.map((p) => m.wgs(p)));
  if (draw.mode === "polygon") {
    if (draw.preview) draw.preview.remove();
    draw.preview = L.polyline(draw.points, {color: "#b42318", dashArray: "4 4"}).addTo(m.map);
    $("#draw-finish").disabled = draw.points.length < 3;
  } else if (draw.points.length === 2) {
    finish();
  }
}

function finish() {
  const L = m.L;
  let layer, feature;
  if (draw.mode === "polygon") {
    if (draw.points.length < 3) return;
    const ring = draw.points.map((p) => { const [lat, lon] = m.wgs(p); return [lon, lat]; });
    ring.push(ring[0]);
    feature = {type: "Feature", properties: {}, geometry: {type: "Polygon", coordinates: [ring]}};
    layer = L.polygon(draw.points, {color: "#b42318", weight: 2, fillOpacity: 0.15});
  } else {
    const [c, edge] = draw.points;
    const radius = Math.max(1, Math.round(m.map.distance(c, edge)));
    const [lat, lon] = m.wgs(c);
    feature = {type: "Feature", properties: {radius_m: radius}, geometry: {type: "Point", coordinates: [lon, lat]}};
    layer = L.circle(c, {radius, color: "#b42318", weight: 2, fillOpacity: 0.15});
  }
  for (const v of draw.vertices) v.remove();
  if (draw.preview) draw.preview.remove();
  draw.vertices = [];
  draw.preview = null;
  layer.addTo(m.map);
  draw.shape = {layer, feature, saved: false};
  mapEl.dataset.drawing = "done";
  $("#draw-finish").disabled = true;
  $("#save-tools").hidden = false;
  $("#fence-name").focus();
  hint(t("Name the fence and save it."));
}

async function save() {
  const name = $("#fence-name").value.trim();
  if (!name) { notice(t("Give the fence a name first."), "error"); return; }
  const id = `f-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  try {
    await api(`/api/v1/fences/${encodeURIComponent(id)}`, {method: "PUT", body: {name, feature: draw.shape.feature, crs: "WGS84"}});
    draw.shape.layer.remove();
    draw.shape = null;
    $("#fence-name").value = "";
    resetDrawing();
    await loadFences(id);
    notice(t("Fence “{name}” saved.", {name}));
  } catch (err) {
    notice(explain(err), "error");
  }
}

// ------------------------------------------------------------------------------------------ stored fences
function shapeText(f) {
  const g = f.feature.geometry;
  if (g.type === "Point") return t("Circle, {r} m", {r: f.feature.properties.radius_m});
  return g.type === "Polygon" ? t("Polygon, {n} corners", {n: g.coordinates[0].length - 1}) : t("Several polygons");
}

function drawStored() {
  for (const layer of fenceLayers.values()) layer.remove();
  fenceLayers.clear();
  for (const f of fences) fenceLayers.set(f.id, m.fence(f.feature, {color: "#1f7a3a", label: f.name}));
}

async function loadFences(tick) {
  fences = await api("/api/v1/fences");
  const list = clear($("#fence-list"));
  if (!fences.length) list.append(h("li", {class: "muted"}, t("No fences yet: draw one on the map.")));
  for (const f of fences) {
    const del = may("fence.edit") ? h("button", {type: "button", class: "secondary", "data-action": "delete"}, t("Delete")) : null;
    if (del) {
      del.addEventListener("click", async () => {
        if (!confirm(t("Delete the fence “{name}”? Boxes keep it until the next push.", {name: f.name}))) return;
        try { await api(`/api/v1/fences/${encodeURIComponent(f.id)}`, {method: "DELETE"}); await loadFences(); }
        catch (err) { notice(explain(err), "error"); }
      });
    }
    list.append(h("li", {dataset: {fence: f.id}},
      may("fence.push") ? h("input", {type: "checkbox", class: "pick-fence", value: f.id, checked: f.id === tick,
        "aria-label": f.name}) : null,
      h("span", {class: "grow", title: f.id}, h("strong", {}, f.name), " ", h("span", {class: "muted"}, shapeText(f))),
      h("span", {class: "muted"}, fmtDateTime(f.updated_at)), del));
  }
  drawStored();
}

// ------------------------------------------------------------------------------------------ push and board
async function loadBoxes() {
  const boxes = await api("/api/v1/boxes");
  const pick = clear($("#push-boxes"));
  for (const b of boxes) {
    const label = b.registered === false ? t("Unregistered box {box}", {box: b.id}) : `${b.name} · ${b.village_name || ""}`;
    pick.append(h("label", {title: b.id}, h("input", {type: "checkbox", class: "pick-box", value: b.id}), " ", label));
  }
}

const ANSWERS = {
  applied: () => t("Applied"),
  rejected: () => t("Rejected"),
  failed: () => t("Failed"),
  received: () => t("Received"),
  expired: () => t("Expired before it arrived"),
  no_answer: () => t("No answer yet"),
};
const BADGE = {applied: "ok", rejected: "bad", failed: "bad", expired: "bad", received: "warn", no_answer: "off"};

function boardRow(r) {
  const words = ANSWERS[r.state] ? ANSWERS[r.state]() : r.state;
  return h("tr", {dataset: {box: r.box, state: r.state}},
    h("td", {title: r.box}, r.name || r.box),
    h("td", {}, h("span", {class: `badge ${BADGE[r.state] || "off"}`}, words), r.reason ? ` ${r.reason}` : ""),
    h("td", {}, fmtDateTime(r.ts)));
}

async function loadBoard() {
  if (!pushId) return;
  const got = await api(`/api/v1/fences/push/${encodeURIComponent(pushId)}`);
  $("#board-card").hidden = false;
  $("#board-id").textContent = fmtDateTime(got.created_at);
  $("#board-id").title = got.id;
  clear($("#board")).append(...got.receipts.map(boardRow));
}

async function push() {
  const ids = [...document.querySelectorAll(".pick-fence:checked")].map((c) => c.value);
  const boxes = [...document.querySelectorAll(".pick-box:checked")].map((c) => c.value);
  if (!ids.length) { notice(t("Tick at least one fence."), "error"); return; }
  if (!boxes.length) { notice(t("Tick at least one box."), "error"); return; }
  const wearers = $("#push-wearers").value.split(/[,，\s]+/).map((w) => w.trim()).filter(Boolean);
  const assign = Object.fromEntries(wearers.map((w) => [w, ids]));
  try {
    const got = await api("/api/v1/fences/push", {method: "POST", body: {fences: ids, to: boxes.map((b) => `box:${b}`), assign}});
    pushId = got.id;
    await loadBoard();
    notice(t("Pushed to {n} boxes.", {n: got.boxes.length}));
  } catch (err) {
    if (err.body && err.body.id) { pushId = err.body.id; await loadBoard(); }
    notice(explain(err), "error");
  }
}

function stream() {
  const es = new EventSource("/api/v1/events?kinds=receipt");
  let opened = 0;
  es.addEventListener("open", () => { opened += 1; if (opened > 1) loadBoard(); });
  es.addEventListener("receipt", (ev) => {
    const r = JSON.parse(ev.data);
    if (r.cmd === pushId) loadBoard();  // the board names boxes and keeps the latest answer of each
  });
  es.addEventListener("lost", () => loadBoard());
}

// ------------------------------------------------------------------------------------------ page
async function main() {
  try {
    m = await createMap(mapEl);
  } catch (err) {
    mapEl.textContent = explain(err);
  }
  if (m) {
    m.map.on("click", onClick);
    if (ROLE !== "gridworker") {
      api("/api/v1/positions").then((ps) => {
        for (const p of ps) m.point(p.lat, p.lon, {label: t("Wearer {wearer}", {wearer: p.wearer}), color: "#0b5cad", radius: 5});
      }, () => {});
    }
  }
  if (may("fence.edit") && m) {
    $("#draw-tools").hidden = false;
    $("#draw-polygon").addEventListener("click", () => start("polygon"));
    $("#draw-circle").addEventListener("click", () => start("circle"));
    $("#draw-finish").addEventListener("click", finish);
    $("#draw-cancel").addEventListener("click", resetDrawing);
    $("#fence-save").addEventListener("click", save);
  }
  try {
    await loadFences();
    if (may("fence.push")) {
      $("#push-card").hidden = false;
      await loadBoxes();
      $("#push").addEventListener("click", push);
      stream();
    }
  } catch (err) {
    clear($("#fence-list")).append(h("li", {class: "error"}, explain(err)));
  }
  loaded();
}

main();
