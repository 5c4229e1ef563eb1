// The 网格员's phone view: only the alarms assigned to them (the API filters for a gridworker), each with
// its position on a small map, links that open it in the phone's map app (geo: for Android's apps; AMap
// with GCJ-02 coordinates, which AMap expects) and a resolve form with a note. A new assignment rings.
import { api, explain } from "./api.js";
import { AlarmBell } from "./alarmbell.js";
import { alarmOrder, alarmStream, kindText, loadBoxNames, mapAppLinks, notice, placeText, STATE_BADGE, stateText } from "./alarmwords.js";
import { $, clear, h } from "./dom.js";
import { fmtAgo, fmtDateTime } from "./fmt.js";
import { wgs84ToGcj02 } from "./gcj02.js";
import { t } from "./i18n.js";
import { createMap } from "./map.js";
import { loaded, USER } from "./session.js";

const list = $("#grid-list");
const bell = new AlarmBell($("#alarm-sound"), $("#mute"), $("#notify"));
const alarms = new Map();
const maps = new Map();  // id -> the card's map handle (kept across re-renders)

function mine(a) {
  return a.assigned_to === USER && a.state === "assigned";
}

function card(a) {
  const pos = a.pos && typeof a.pos.lat === "number" ? a.pos : null;
  const links = pos ? mapAppLinks(pos.lat, pos.lon, `${kindText(a.kind)} ${placeText(a)}`, wgs84ToGcj02) : null;
  const note = h("textarea", {maxlength: "4000", "aria-label": t("Note (what was found and done)"),
    placeholder: t("Note (what was found and done)")});
  const button = h("button", {type: "button", class: "primary", "data-action": "resolve"}, t("Resolve"));
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const done = await api(`/api/v1/alarms/${encodeURIComponent(a.id)}/resolve`, {method: "POST", body: {note: note.value}});
      alarms.set(done.id, done);
      notice(t("Resolved. Thank you."));
      render();
    } catch (err) {
      notice(explain(err), "error");
      button.disabled = false;
    }
  });
  const mapEl = h("div", {class: "map", "data-map-for": a.id});
  return h("li", {class: `alarm card grid-card state-${a.state}`, dataset: {id: a.id, state: a.state}},
    h("div", {class: "alarm-head"},
      h("span", {class: `badge ${STATE_BADGE[a.state] || "off"}`}, stateText(a.state)),
      h("strong", {}, kindText(a.kind)),
      h("time", {title: fmtDateTime(a.ts)}, `${fmtDateTime(a.ts)} · ${fmtAgo(a.ts)}`)),
    h("div", {class: "alarm-where"}, h("span", {}, placeText(a)),
      a.wearer ? h("span", {class: "muted"}, t("Wearer {wearer}", {wearer: a.wearer})) : null),
    pos ? mapEl : h("p", {class: "muted"}, t("The alarm carried no position.")),
    links ? h("div", {class: "maplinks"},
      h("a", {class: "button primary", href: links.amap, "data-link": "amap", target: "_blank", rel: "noopener"}, t("Navigate with AMap")),
      h("a", {class: "button", href: links.geo, "data-link": "geo"}, t("Open in the phone's map app"))) : null,
    h("label", {class: "actions-form"}, note),
    button);
}

async function drawMaps() {
  for (const li of list.querySelectorAll("[data-map-for]")) {
    const a = alarms.get(li.dataset.mapFor);
    try {
      const m = await createMap(li);
      m.fit([m.point(a.pos.lat, a.pos.lon, {label: kindText(a.kind)})], 16);
      maps.set(a.id, m);
    } catch (err) {
      li.textContent = explain(err);
    }
  }
}

function render() {
  for (const m of maps.values()) m.map.remove();
  maps.clear();
  const shown = [...alarms.values()].filter(mine).sort(alarmOrder);
  clear(list);
  if (!shown.length) list.append(h("li", {class: "muted empty"}, t("Nothing assigned to you right now.")));
  for (const a of shown) list.append(card(a));
  $("#grid-count").textContent = t("{n} to handle", {n: shown.length});
  drawMaps();
}

async function reload() {
  try {
    const got = await api("/api/v1/alarms?state=open");
    alarms.clear();
    for (const a of got) alarms.set(a.id, a);
    render();
  } catch (err) {
    clear(list).append(h("li", {class: "error"}, explain(err)));
  }
}

alarmStream((a) => {
  const before = alarms.get(a.id);
  alarms.set(a.id, a);
  if (mine(a) && !(before && mine(before))) {
    bell.ring(`${kindText(a.kind)} · ${placeText(a)}`, t("Assigned to you"), "/grid");
  }
  render();
}, reload);
await loadBoxNames(api);
await reload();
loaded();
