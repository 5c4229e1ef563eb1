// 告警 Alarms: the live list, newest unacknowledged first. New alarms arrive over the event stream, ring the
// bell (alarmbell.js: the generated sound, unless this user silenced it, and a desktop notification) and
// are marked so the eye finds them. A gridworker is sent to their own phone view (/grid).
import { api, explain } from "./api.js";
import { AlarmBell } from "./alarmbell.js";
import { alarmOrder, alarmStream, kindText, loadBoxNames, notice, placeText, STATE_BADGE, stateText } from "./alarmwords.js";
import { $, clear, h } from "./dom.js";
import { fmtAgo, fmtDateTime } from "./fmt.js";
import { t } from "./i18n.js";
import { loaded, may, ROLE } from "./session.js";

if (ROLE === "gridworker") location.replace("/grid");

const alarms = new Map();   // id -> alarm (what the list shows)
const firstShown = new Map();  // id -> Date.now() when its row first appeared (the benchmark reads it)
const list = $("#alarm-list");
const bell = new AlarmBell($("#alarm-sound"), $("#mute"), $("#notify"));
let filter = $("#filter-state").value;

function row(a) {
  const actions = [];
  if (a.state === "new" && may("alarm.ack")) {
    actions.push(h("button", {type: "button", class: "secondary", "data-action": "ack",
      onclick: () => ack(a.id)}, t("Acknowledge")));
  }
  actions.push(h("a", {class: "button", href: `/alarms/${encodeURIComponent(a.id)}`}, t("Details")));
  if (!firstShown.has(a.id)) firstShown.set(a.id, Date.now());
  return h("li", {class: `alarm card state-${a.state}`, dataset: {id: a.id, state: a.state, shownAt: String(firstShown.get(a.id))}},
    h("div", {class: "alarm-head"},
      h("span", {class: `badge ${STATE_BADGE[a.state] || "off"}`, "data-field": "state"}, stateText(a.state)),
      h("strong", {class: "alarm-kind"}, kindText(a.kind)),
      h("time", {datetime: new Date(a.ts).toISOString(), title: fmtDateTime(a.ts)}, fmtDateTime(a.ts))),
    h("div", {class: "alarm-where"},
      h("span", {title: a.box}, placeText(a)),
      a.wearer ? h("span", {class: "muted"}, t("Wearer {wearer}", {wearer: a.wearer})) : null,
      a.assigned_to ? h("span", {class: "muted"}, t("Assigned to {user}", {user: a.assigned_to})) : null,
      h("span", {class: "muted"}, fmtAgo(a.received || a.ts))),
    h("div", {class: "alarm-actions"}, actions));
}

function visible(a) {
  return filter === "all" || (filter === "open" ? a.state !== "resolved" : a.state === filter);
}

function counts() {
  const fresh = [...alarms.values()].filter((a) => visible(a) && a.state === "new").length;
  $("#alarm-count").textContent = t("{n} unacknowledged", {n: fresh});
  document.title = (fresh ? `(${fresh}) ` : "") + document.title.replace(/^\(\d+\) /, "");
}

function render() {
  const shown = [...alarms.values()].filter(visible).sort(alarmOrder);
  clear(list);
  if (!shown.length) list.append(h("li", {class: "muted empty"}, t("No alarms.")));
  for (const a of shown) list.append(row(a));
  counts();
}

// one alarm changed: its row alone is replaced or moved (the list may hold 500 rows; an SOS must not wait
// for all of them to be rebuilt)
function update(a) {
  const old = [...list.children].find((li) => li.dataset.id === a.id);
  if (old) old.remove();
  if (visible(a)) {
    const li = row(a);
    const after = [...list.children].find((el) => el.dataset.id && alarmOrder(a, alarms.get(el.dataset.id)) < 0);
    list.insertBefore(li, after || null);
    for (const empty of list.querySelectorAll("li.empty")) empty.remove();
  } else if (!list.querySelector("li[data-id]")) {
    render();
    return;
  }
  counts();
}

async function reload() {
  try {
    const got = await api(`/api/v1/alarms?state=${encodeURIComponent(filter)}&limit=500`);
    alarms.clear();
    for (const a of got) alarms.set(a.id, a);
    render();
  } catch (err) {
    clear(list).append(h("li", {class: "error"}, explain(err)));
  }
}

async function ack(id) {
  try {
    const a = await api(`/api/v1/alarms/${encodeURIComponent(id)}/ack`, {method: "POST", body: {}});
    alarms.set(a.id, a);
    update(a);
  } catch (err) {
    notice(explain(err), "error");
    reload();
  }
}

function onAlarm(a) {
  const known = alarms.has(a.id);
  alarms.set(a.id, a);
  update(a);
  if (!known && a.state === "new") {
    bell.ring(`${kindText(a.kind)} · ${placeText(a)}`, a.wearer ? t("Wearer {wearer}", {wearer: a.wearer}) : "",
      `/alarms/${encodeURIComponent(a.id)}`);
    const li = list.querySelector(`li[data-id="${CSS.escape(a.id)}"]`);
    if (li) li.classList.add("fresh");
  }
}

$("#filter-state").addEventListener("change", (ev) => { filter = ev.target.value; reload(); });
alarmStream(onAlarm, reload);
await loadBoxNames(api);
await reload();
document.body.dataset.renderedMs = String(Math.round(performance.now()));  // first render, for the benchmark
loaded();
