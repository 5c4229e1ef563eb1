// One alarm: what happened where, the wearer's position, the geofence and the last hour's track on the map,
// the raw frame as received, the actions acknowledge -> assign to a 网格员 -> resolve with a note, and the
// response times. Kept current by the event stream (another operator acting shows here at once).
import { api, explain } from "./api.js";
import { alarmStream, kindText, mapAppLinks, notice, placeText, STATE_BADGE, stateText } from "./alarmwords.js";
import { $, clear, h } from "./dom.js";
import { fmtDateTime, fmtDuration } from "./fmt.js";
import { wgs84ToGcj02 } from "./gcj02.js";
import { t } from "./i18n.js";
import { createMap } from "./map.js";
import { loaded, may } from "./session.js";

const id = $("#alarm").dataset.alarmId;
const path = `/api/v1/alarms/${encodeURIComponent(id)}`;
let alarm = null;
let assigneesLoaded = false;

function fact(label, value, title) {
  return [h("dt", {}, label), h("dd", title ? {title} : {}, value == null || value === "" ? "–" : value)];
}

function since(at) {
  return at == null || alarm.received == null ? null : (at - alarm.received) / 1000;
}

function show() {
  const a = alarm;
  $("#alarm-kind").textContent = kindText(a.kind);
  const st = $("#alarm-state");
  st.textContent = stateText(a.state);
  st.className = `badge ${STATE_BADGE[a.state] || "off"}`;
  st.dataset.state = a.state;
  const who = (name, at) => (name ? `${name} · ${fmtDateTime(at)}` : null);
  const pos = a.pos && typeof a.pos.lat === "number" ? a.pos : null;
  const links = pos ? mapAppLinks(pos.lat, pos.lon, placeText(a), wgs84ToGcj02) : null;
  clear($("#alarm-facts")).append(
    ...fact(t("When"), fmtDateTime(a.ts)),
    ...fact(t("Received"), fmtDateTime(a.received)),
    ...fact(t("Place"), placeText(a), a.box),
    ...fact(t("Wearer"), a.wearer),
    ...fact(t("Device"), a.device),
    ...fact(t("Position"), pos ? h("span", {}, `${pos.lat.toFixed(6)}, ${pos.lon.toFixed(6)} `,
      h("a", {href: links.amap, target: "_blank", rel: "noopener"}, t("Open in AMap"))) : t("No position")),
    ...fact(t("Acknowledged by"), who(a.acked_by, a.acked_at)),
    ...fact(t("Assigned to"), a.assigned_to ? `${a.assigned_to} (${t("by {user}", {user: a.assigned_by})}) · ${fmtDateTime(a.assigned_at)}` : null),
    ...fact(t("Resolved by"), who(a.resolved_by, a.resolved_at)),
    ...fact(t("Note"), a.note),
    ...fact(t("Escalations"), a.escalations ? String(a.escalations) : null),
  );
  clear($("#alarm-times")).append(
    h("span", {id: "time-ack"}, t("Acknowledged after {d}", {d: fmtDuration(since(a.acked_at))})),
    h("span", {id: "time-assign"}, t("Assigned after {d}", {d: fmtDuration(since(a.assigned_at))})),
    h("span", {id: "time-resolve"}, t("Resolved after {d}", {d: fmtDuration(since(a.resolved_at))})),
  );
  $("#ack").hidden = !(a.state === "new" && may("alarm.ack"));
  const canAssign = ["acknowledged", "assigned"].includes(a.state) && may("alarm.assign");
  $("#assign-row").hidden = !canAssign;
  if (canAssign && !assigneesLoaded) loadAssignees();
  $("#resolve-row").hidden = !(["acknowledged", "assigned"].includes(a.state) && may("alarm.resolve"));
  $("#actions-none").hidden = a.state !== "resolved";
}

async function loadAssignees() {
  assigneesLoaded = true;
  const sel = $("#assign-to");
  try {
    const people = await api(`${path}/assignees`);
    clear(sel);
    if (!people.length) sel.append(h("option", {value: ""}, t("No grid worker covers this village")));
    for (const p of people) {
      const label = p.display_name ? `${p.display_name} (${p.name})` : p.name;
      sel.append(h("option", {value: p.name, selected: p.name === alarm.assigned_to}, p.phone ? `${label} · ${p.phone}` : label));
    }
  } catch (err) {
    clear(sel).append(h("option", {value: ""}, explain(err)));
  }
}

async function act(action, body) {
  for (const b of document.querySelectorAll("#alarm-actions button")) b.disabled = true;
  try {
    const a = await api(`${path}/${action}`, {method: "POST", body});
    alarm = {...alarm, ...a};
    show();
    notice(t("Done."));
  } catch (err) {
    notice(explain(err), "error");
    await reload();
  } finally {
    for (const b of document.querySelectorAll("#alarm-actions button")) b.disabled = false;
  }
}

async function reload() {
  alarm = await api(path);
  show();
}

async function drawMap() {
  const m = await createMap($("#alarm-map"));
  const layers = [];
  for (const f of alarm.fences || []) layers.push(m.fence(f.feature, {label: f.name}));
  let track = {points: []};
  try {
    track = await api(`${path}/track?minutes=60`);
  } catch (err) {
    $("#map-note").textContent = explain(err);
  }
  if (track.points.length > 1) layers.push(m.track(track.points));
  const pos = alarm.pos && typeof alarm.pos.lat === "number" ? alarm.pos : null;
  if (pos) layers.push(m.point(pos.lat, pos.lon, {label: kindText(alarm.kind)}));
  $("#alarm-map").dataset.track = String(track.points.length);
  $("#alarm-map").dataset.fences = String((alarm.fences || []).length);
  if (!pos) $("#map-note").textContent = t("The alarm carried no position.");
  m.fit(layers);
}

async function main() {
  try {
    await reload();
  } catch (err) {
    clear($("#alarm")).append(h("p", {class: "error"}, explain(err)));
    loaded("error");
    return;
  }
  const raw = alarm.raw;
  let text = raw || t("The raw frame is not stored (it may have been removed by retention).");
  try { if (raw) text = JSON.stringify(JSON.parse(raw), null, 2); } catch (e) { /* shown as received */ }
  $("#alarm-raw").textContent = text;
  $("#ack").addEventListener("click", () => act("ack", {}));
  $("#assign").addEventListener("click", () => {
    const to = $("#assign-to").value;
    if (!to) { notice(t("Choose a grid worker first."), "error"); return; }
    act("assign", {to});
  });
  $("#resolve").addEventListener("click", () => act("resolve", {note: $("#resolve-note").value}));
  alarmStream((a) => { if (a.id === id) { alarm = {...alarm, ...a}; show(); } }, () => reload());
  try {
    await drawMap();
  } catch (err) {
    $("#map-note").textContent = explain(err);
  }
  loaded();
}

main();
