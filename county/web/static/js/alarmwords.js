// Alarm kinds and states in words (the API's codes are never shown), and the order of the alarm list.
import { t } from "./i18n.js";

const KINDS = {
  sos: () => t("SOS call"),
  fall: () => t("Fall detected"),
  band_removed: () => t("Wristband taken off"),
  geofence_exit: () => t("Left the geofence"),
  lost_contact: () => t("Lost contact"),
};
const STATES = {
  new: () => t("New"),
  acknowledged: () => t("Acknowledged"),
  assigned: () => t("Assigned"),
  resolved: () => t("Resolved"),
};
export const STATE_BADGE = {new: "bad", acknowledged: "warn", assigned: "warn", resolved: "ok"};

export function kindText(kind) {
  return KINDS[kind] ? KINDS[kind]() : t("Alarm ({kind})", {kind});
}

export function stateText(state) {
  return STATES[state] ? STATES[state]() : state;
}

// box id -> {name, village_name}: the names of the boxes in the user's scope, for alarms that arrive over the
// event stream with the box id only (ingest announces what it stored; the names are the regions file's)
const boxNames = new Map();
export async function loadBoxNames(api) {
  try {
    for (const b of await api("/api/v1/boxes")) {
      if (b.registered !== false) boxNames.set(b.id, {name: b.name, village_name: b.village_name});
    }
  } catch (e) {
    console.warn("box names", e);
  }
}

// where: the box's name and village, else the box id (an unregistered box)
export function placeText(a) {
  const known = boxNames.get(a.box);
  const name = a.box_name || (known && known.name);
  const village = a.village_name || (known && known.village_name);
  if (name) return village && !name.includes(village) ? `${village} · ${name}` : name;
  return t("Unregistered box {box}", {box: a.box});
}

// newest unacknowledged first, then the rest newest first (as GET /api/v1/alarms orders them)
export function alarmOrder(a, b) {
  const an = a.state === "new" ? 0 : 1, bn = b.state === "new" ? 0 : 1;
  if (an !== bn) return an - bn;
  if (a.ts !== b.ts) return b.ts - a.ts;
  return a.id < b.id ? -1 : 1;
}

// The live alarm events (GET /api/v1/events?kinds=alarm): onAlarm(alarm) for each; onGap() when events may
// have been missed (a `lost` event, or the stream reconnected), so the page reloads its list.
export function alarmStream(onAlarm, onGap) {
  const es = new EventSource("/api/v1/events?kinds=alarm");
  let opened = 0;
  es.addEventListener("open", () => {
    opened += 1;
    document.body.dataset.stream = "open";
    if (opened > 1) onGap();
  });
  es.addEventListener("error", () => { document.body.dataset.stream = "reconnecting"; });
  es.addEventListener("alarm", (ev) => {
    try { onAlarm(JSON.parse(ev.data)); } catch (e) { console.error(e); }
  });
  es.addEventListener("lost", () => onGap());
  es.addEventListener("session_expired", () => { es.close(); location.assign("/login?next=" + encodeURIComponent(location.pathname)); });
  return es;
}

// links that open a WGS-84 point in the phone's map app: geo: (Android) and AMap (GCJ-02, what AMap expects)
export function mapAppLinks(lat, lon, label, toGcj) {
  const q = encodeURIComponent(label);
  const f = (x) => x.toFixed(6);
  const [glat, glon] = toGcj(lat, lon);
  return {
    geo: `geo:${f(lat)},${f(lon)}?q=${f(lat)},${f(lon)}(${q})`,
    amap: `https://uri.amap.com/marker?position=${f(glon)},${f(glat)}&name=${q}&coordinate=gaode&callnative=1`,
  };
}

// a short message in the page's toast (the shell's element; shell.js is not imported twice)
let noticeTimer = null;
export function notice(message, kind = "info") {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = message;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { el.hidden = true; }, 6000);
}
