// 广播 list: newest first, with the state in words, the class, when it plays (local time) and how many boxes.
import { api, explain } from "./api.js";
import { broadcastStateText, classText, repeatText } from "./broadcastwords.js";
import { $, clear, h } from "./dom.js";
import { fmtDateTime, fmtNumber } from "./fmt.js";
import { t } from "./i18n.js";
import { loaded } from "./session.js";

const STATE_BADGE = {sent: "ok", publishing: "warn", awaiting_review: "warn", publish_failed: "bad", cancelled: "off"};
const body = $("#broadcast-list tbody");
let all = [];

function when(b) {
  if (b.repeat) return repeatText(b.repeat);
  if (b.start) return fmtDateTime(b.start * 1000);
  return t("at once");
}

function render() {
  const filter = $("#filter-state").value;
  const shown = all.filter((b) => !filter || b.state === filter);
  clear(body);
  if (!shown.length) body.append(h("tr", {}, h("td", {colspan: 7, class: "muted"}, t("No broadcasts."))));
  for (const b of shown) {
    const href = `/broadcasts/${encodeURIComponent(b.id)}`;
    body.append(h("tr", {dataset: {id: b.id, state: b.state}},
      h("td", {}, fmtDateTime(b.created_at)),
      h("td", {}, h("a", {href, title: b.id}, b.title || t("(untitled)"))),
      h("td", {}, classText(b.class)),
      h("td", {class: "hide-narrow"}, when(b)),
      h("td", {class: "num"}, fmtNumber(b.boxes.length)),
      h("td", {}, h("span", {class: `badge ${STATE_BADGE[b.state] || "off"}`, "data-field": "state"},
        broadcastStateText(b.state))),
      h("td", {class: "hide-narrow"}, b.created_by)));
  }
}

$("#filter-state").addEventListener("change", render);
try {
  all = await api("/api/v1/broadcasts?limit=200");
  render();
} catch (err) {
  clear(body).append(h("tr", {}, h("td", {colspan: 7, class: "error"}, explain(err))));
}
loaded();
