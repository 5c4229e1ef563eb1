// 设备: every box in the user's scope with its state, last seen, version, backlog, clock, outbox counters
// and missing seq count (GET /api/v1/fleet); filter by text and state in the page.
import { api, explain } from "./api.js";
import { $, clear, h } from "./dom.js";
import { fmtAgo, fmtDateTime, fmtNumber } from "./fmt.js";
import { t } from "./i18n.js";
import { loaded } from "./session.js";
import { clockCell, countersText } from "./boxlines.js";
import { boxBadge } from "./words.js";

let boxes = [];

function row(b, now) {
  const place = b.registered ? [b.township_name, b.village_name].filter(Boolean).join(" · ") : t("Not in the regions file");
  return h("tr", {dataset: {box: b.id, state: b.state}},
    h("td", {}, h("a", {href: `/boxes/${encodeURIComponent(b.id)}`, title: b.id}, b.registered ? b.name : b.id)),
    h("td", {title: b.village || ""}, place),
    h("td", {}, boxBadge(b.state)),
    h("td", {title: b.last_seen ? fmtDateTime(b.last_seen) : ""}, fmtAgo(b.last_seen, now)),
    h("td", {}, b.version || "–"),
    h("td", {class: "num"}, fmtNumber(b.backlog)),
    h("td", {}, clockCell(b.clock)),
    h("td", {class: "counters"}, countersText(b.outbox_counters)),
    h("td", {class: "num", title: t("seq numbers neither stored nor explained by the box")},
      b.missing ? h("span", {class: "error"}, fmtNumber(b.missing)) : fmtNumber(b.missing ?? 0)));
}

function render() {
  const text = $("#filter").value.trim().toLowerCase();
  const state = $("#state").value;
  const now = Date.now();
  const shown = boxes.filter((b) => (!state || b.state === state) && (!text ||
    [b.name, b.id, b.village_name, b.township_name].some((s) => s && s.toLowerCase().includes(text))));
  clear($("#boxes tbody")).append(...(shown.length ? shown.map((b) => row(b, now))
    : [h("tr", {}, h("td", {colspan: 9, class: "muted"}, t("No box matches.")))]));
  $("#shown").textContent = t("{n} of {all} boxes", {n: fmtNumber(shown.length), all: fmtNumber(boxes.length)});
}

async function main() {
  try {
    boxes = await api("/api/v1/fleet");
    render();
  } catch (err) {
    clear($("#boxes tbody")).append(h("tr", {}, h("td", {colspan: 9, class: "error"}, explain(err))));
  }
  $("#filter").addEventListener("input", render);
  $("#state").addEventListener("change", render);
  loaded();
}

main();
