// 广播 one broadcast: what it says and when, its state, and one row per box with that box's latest receipt in
// words (received, scheduled with the local time it will play, playing, finished, rejected/failed with the
// reason), kept live by the event stream (receipt events of this broadcast re-read the board). Approve
// (review on), cancel, and resend to the boxes that have not answered.
import { api, explain } from "./api.js";
import {
  broadcastStateText, classText, reasonText, repeatText, STATE_BADGE, stateText,
} from "./broadcastwords.js";
import { $, clear, h } from "./dom.js";
import { fmtDateTime, fmtDuration, fmtNumber } from "./fmt.js";
import { t } from "./i18n.js";
import { loaded, may, USER } from "./session.js";

const id = $("#bc-summary").dataset.id;
const LIVE = ["publishing", "sent", "publish_failed"];
const places = new Map();  // box id -> "乡镇 · 村"
let current = null;
let timer = null;

function fact(dl, label, value) {
  if (value === null || value === undefined || value === "") return;
  dl.append(h("dt", {}, label), h("dd", {}, value));
}

function secs(s) {
  return s == null ? null : fmtDateTime(s * 1000);
}

function renderSummary(b) {
  $("#bc-title").textContent = b.title || t("Broadcast");
  document.title = `${b.title || t("Broadcast")} · ${document.title.split(" · ").slice(-1)[0]}`;
  const dl = clear($("#bc-facts"));
  fact(dl, t("State"), h("span", {class: "badge", id: "bc-state", dataset: {state: b.state}}, broadcastStateText(b.state)));
  fact(dl, t("Class"), `${classText(b.class)} · ${t("level {n}", {n: b.level})}`);
  fact(dl, t("Volume"), b.volume == null ? t("box default") : fmtNumber(b.volume));
  fact(dl, t("Start"), b.start == null ? t("at once") : secs(b.start));
  fact(dl, t("End"), secs(b.end));
  fact(dl, t("Repeat"), repeatText(b.repeat));
  fact(dl, t("Content"), b.audio_mime ? t("audio file ({mime})", {mime: b.audio_mime}) : t("text, spoken by the boxes"));
  fact(dl, t("Created"), `${fmtDateTime(b.created_at)} · ${b.created_by}`);
  if (b.approved_by) fact(dl, t("Approved"), `${fmtDateTime(b.approved_at)} · ${b.approved_by}`);
  if (b.cancelled_by) fact(dl, t("Cancelled"), `${fmtDateTime(b.cancelled_at)} · ${b.cancelled_by}`);
  fact(dl, t("Valid until"), secs(b.exp));
  $("#bc-text").textContent = b.text || "";

  const approve = $("#bc-approve");
  if (approve) approve.hidden = !(b.state === "awaiting_review" && b.created_by !== USER);
  const cancel = $("#bc-cancel");
  if (cancel) cancel.hidden = ![...LIVE, "awaiting_review"].includes(b.state);
  const resend = $("#bc-resend");
  const silent = b.receipts.filter((r) => r.state === "no_answer").length;
  if (resend) {
    resend.hidden = !(LIVE.includes(b.state) && silent > 0);
    resend.textContent = t("Resend to the {n} boxes that did not answer", {n: fmtNumber(silent)});
  }
}

function details(r) {
  const out = [];
  const x = r.extra || {};
  if (r.reason) out.push(h("span", {title: r.reason, "data-field": "reason"}, reasonText(r.reason)));
  if (r.state === "scheduled" && x.at && !r.reason) out.push(t("plays at {time}", {time: secs(x.at)}));
  if (x.until) out.push(t("until {time}", {time: secs(x.until)}));
  if (x.late_s) out.push(t("{len} late", {len: fmtDuration(x.late_s)}));
  if (x.missed) out.push(t("{n} times missed", {n: fmtNumber(x.missed)}));
  if (x.detail) out.push(h("span", {class: "muted"}, x.detail));
  return out.flatMap((part, i) => (i ? [" · ", part] : [part]));
}

function renderBoard(b) {
  const body = clear($("#bc-board tbody"));
  const tally = new Map();
  for (const r of b.receipts) {
    tally.set(r.state, (tally.get(r.state) || 0) + 1);
    body.append(h("tr", {dataset: {box: r.box, state: r.state}},
      h("td", {title: r.box}, r.name || r.box, places.get(r.box) ? h("span", {class: "where"}, places.get(r.box)) : null),
      h("td", {}, h("span", {class: `badge ${STATE_BADGE[r.state] || "off"}`, "data-field": "state"}, stateText(r.state))),
      h("td", {}, details(r)),
      h("td", {}, r.ts == null ? "" : h("time", {datetime: new Date(r.ts).toISOString()}, fmtDateTime(r.ts)))));
  }
  $("#bc-tally").textContent = [...tally.entries()].map(([s, n]) => `${stateText(s)} ${fmtNumber(n)}`).join(" · ");
}

async function refresh() {
  timer = null;
  try {
    current = await api(`/api/v1/broadcasts/${encodeURIComponent(id)}`);
    renderSummary(current);
    renderBoard(current);
  } catch (err) {
    clear($("#bc-facts")).append(h("dd", {class: "error"}, explain(err)));
  }
}

function soon() {
  if (timer === null) timer = setTimeout(refresh, 150);  // a burst of receipts is one read
}

async function act(button, path, confirmText) {
  if (confirmText && button.dataset.armed !== "1") {
    button.dataset.armed = "1";
    button.dataset.label = button.textContent;
    button.textContent = confirmText;
    setTimeout(() => {
      if (button.dataset.armed === "1") { button.dataset.armed = ""; button.textContent = button.dataset.label; }
    }, 6000);
    return;
  }
  button.dataset.armed = "";
  if (button.dataset.label) button.textContent = button.dataset.label;
  button.disabled = true;
  try {
    await api(path, {method: "POST", body: {}});
    toast(t("Done."));
  } catch (err) {
    toast(explain(err), "error");
  } finally {
    button.disabled = false;
    await refresh();
  }
}

function toast(message, kind = "info") {
  const el = $("#toast");
  if (!el) return;
  el.textContent = message;
  el.dataset.kind = kind;
  el.hidden = false;
  setTimeout(() => { el.hidden = true; }, 5000);
}

function stream() {
  const es = new EventSource("/api/v1/events?kinds=receipt");
  let opened = 0;
  es.addEventListener("open", () => {
    opened += 1;
    document.body.dataset.stream = "open";
    if (opened > 1) soon();  // reconnected: what came meanwhile is on the board
  });
  es.addEventListener("error", () => { document.body.dataset.stream = "reconnecting"; });
  es.addEventListener("receipt", (ev) => {
    try {
      if (JSON.parse(ev.data).cmd === id) soon();
    } catch (e) { console.error(e); }
  });
  es.addEventListener("lost", soon);
}

const base = `/api/v1/broadcasts/${encodeURIComponent(id)}`;
if (may("broadcast.approve")) $("#bc-approve").addEventListener("click", (ev) => act(ev.target, `${base}/approve`));
if (may("broadcast.resend")) $("#bc-resend").addEventListener("click", (ev) => act(ev.target, `${base}/resend`));
if (may("broadcast.cancel")) {
  $("#bc-cancel").addEventListener("click", (ev) => act(ev.target, `${base}/cancel`, t("Click again to cancel it on every box")));
}
if (new URLSearchParams(location.search).has("changed")) {
  toast(t("The boxes changed between the preview and sending: check the list below."), "error");
}
try {
  for (const b of await api("/api/v1/boxes")) {
    places.set(b.id, [b.township_name, b.village_name].filter(Boolean).join(" · "));
  }
} catch (err) {
  console.warn("boxes not loaded", err);
}
stream();
await refresh();
loaded();
