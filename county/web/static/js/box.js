// One box: its place, state, clock, outbox, cameras and its last envelopes (GET /api/v1/boxes/{id}).
import { api, explain } from "./api.js";
import { $, clear, h } from "./dom.js";
import { fmtAgo, fmtDateTime, fmtDuration, fmtNumber } from "./fmt.js";
import { t } from "./i18n.js";
import { loaded } from "./session.js";
import { clockCell, countersText } from "./boxlines.js";
import { boxBadge, cameraBadge, cameraReasonWord, classWord, kindWord, receiptWord, cameraStateWord } from "./words.js";

function kv(dl, pairs) {
  clear(dl);
  for (const [k, v] of pairs) dl.append(h("dt", {}, k), h("dd", {}, v == null || v === "" ? "–" : v));
}

function detailText(e) {
  const d = e.data || {};
  const parts = [];
  if (e.kind === "camera" && d.camera) parts.push(d.camera, " ", cameraStateWord(d.state));
  else if (e.kind === "cmd" && d.state) parts.push(receiptWord(d.state));
  else if (e.kind === "state" && d.state) parts.push(d.state === "online" ? t("online") : t("offline"));
  else if (e.kind === "heartbeat" && d.uptime_s != null) parts.push(t("up {d}", {d: fmtDuration(d.uptime_s)}));
  if (d.reason) parts.push(" · ", cameraReasonWord(d.reason));
  if (d.wearer) parts.push(" · ", t("wearer {w}", {w: d.wearer}));
  return parts;
}

async function main() {
  const id = $("#box-name").dataset.box;
  try {
    const b = await api(`/api/v1/boxes/${encodeURIComponent(id)}`);
    const now = Date.now();
    const name = $("#box-name");
    name.textContent = b.registered ? b.name : b.id;
    name.title = b.id;
    document.title = `${name.textContent} · ${document.title}`;
    kv($("#facts"), [
      [t("Township"), b.township_name], [t("Village"), b.village_name], [t("State"), boxBadge(b.state)],
      [t("Last seen"), b.last_seen ? `${fmtDateTime(b.last_seen)} (${fmtAgo(b.last_seen, now)})` : t("never")],
      [t("First seen"), fmtDateTime(b.first_seen)], [t("Version"), b.version],
      [t("Clock"), clockCell(b.clock)], [t("Up for"), b.uptime_s != null ? fmtDuration(b.uptime_s) : null],
      [t("Disk free"), b.disk_free_mb != null ? t("{n} MB", {n: fmtNumber(b.disk_free_mb)}) : null],
    ]);
    const depth = b.outbox_depth ? Object.entries(b.outbox_depth).map(([c, n]) => [classWord(c), fmtNumber(n)]) : [];
    kv($("#outbox"), [[t("Backlog"), fmtNumber(b.backlog)], ...depth,
      [t("Outbox counters"), countersText(b.outbox_counters)],
      [t("Missing"), fmtNumber(b.missing ?? 0)],
      [t("Last heartbeat"), fmtDateTime(b.heartbeat_ts)]]);
    const cams = $("#cameras");
    clear(cams).append(b.cameras.length ? h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, t("Camera")), h("th", {}, t("State")), h("th", {}, t("Reason")),
        h("th", {}, t("Since")))),
      h("tbody", {}, b.cameras.map((c) => h("tr", {}, h("td", {}, c.camera), h("td", {}, cameraBadge(c.state)),
        h("td", {}, cameraReasonWord(c.reason) || "–"), h("td", {}, fmtDateTime(c.since)))))) :
      h("p", {class: "muted"}, t("This box reports no cameras.")));
    const tl = clear($("#timeline"));
    if (b.timeline === null) tl.append(h("li", {class: "muted"}, t("Your role may not read the box's messages.")));
    else if (!b.timeline.length) tl.append(h("li", {class: "muted"}, t("Nothing stored from this box yet.")));
    else {
      for (const e of b.timeline) {
        tl.append(h("li", {dataset: {seq: e.seq, kind: e.kind}},
          h("time", {title: t("received {at}", {at: fmtDateTime(e.received)})}, fmtDateTime(e.ts)),
          h("span", {class: "badge off"}, classWord(e.class)), h("b", {}, kindWord(e.kind)),
          h("span", {}, ...detailText(e)), h("span", {class: "muted"}, `#${e.seq}`)));
      }
    }
  } catch (err) {
    clear($("#facts")).append(h("p", {class: "error"}, explain(err)));
  }
  loaded();
}

main();
