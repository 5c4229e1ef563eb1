// 升级: the rollouts (GET /api/v1/rollouts) and, for the one in ?id=, one row per box with its state as the
// boxes' receipts tell it (GET /api/v1/rollouts/{id}); refreshed every 5 s while the rollout is active.
import { api, explain } from "./api.js";
import { $, clear, h } from "./dom.js";
import { fmtDateTime } from "./fmt.js";
import { t } from "./i18n.js";
import { loaded, may } from "./session.js";

const STATES = {
  pilot: t("pilot"), running: t("running"), halted: t("halted"), done: t("done"),
  pending: t("pending"), downloading: t("downloading"), installed: t("installed"), healthy: t("healthy"),
  rolled_back: t("rolled back"), failed: t("failed"), timed_out: t("timed out"), not_sent: t("not sent"),
};
const word = (s) => STATES[s] || s;
const selected = new URLSearchParams(location.search).get("id");

async function showList() {
  const body = $("#rollouts tbody");
  try {
    const rows = await api("/api/v1/rollouts");
    clear(body).append(...rows.map((r) => h("tr", {dataset: {id: r.id, state: r.state}},
      h("td", {translate: "no"}, h("a", {href: `/rollouts?id=${encodeURIComponent(r.id)}`}, r.id)),
      h("td", {translate: "no"}, r.version), h("td", {class: "state"}, word(r.state)),
      h("td", {}, fmtDateTime(r.created_at)))));
    if (!rows.length) body.append(h("tr", {}, h("td", {colspan: 4, class: "muted"}, t("No rollouts yet."))));
  } catch (err) {
    clear(body).append(h("tr", {}, h("td", {colspan: 4, class: "error"}, explain(err))));
  }
}

async function showDetail() {
  const doc = await api(`/api/v1/rollouts/${encodeURIComponent(selected)}`);
  $("#detail").hidden = false;
  $("#detail").dataset.state = doc.state;
  $("#detail-title").textContent = t("Rollout of {version}: {state}", {version: doc.version, state: word(doc.state)});
  $("#detail-summary").textContent = Object.entries(doc.counts).filter(([, n]) => n)
    .map(([s, n]) => `${word(s)} ${n}`).join(" · ");
  $("#detail-reason").hidden = !doc.reason;
  $("#detail-reason").textContent = doc.reason || "";
  $("#halt").hidden = !(may("release.manage") && (doc.state === "pilot" || doc.state === "running"));
  clear($("#boxes tbody")).append(...doc.boxes.map((b) => h("tr", {dataset: {box: b.box, state: b.state}},
    h("td", {translate: "no"}, b.box), h("td", {class: "num"}, b.wave ?? "–"), h("td", {class: "state"}, word(b.state)),
    h("td", {translate: "no"}, b.version || ""), h("td", {translate: "no"}, [b.reason, b.detail].filter(Boolean).join(": ")))));
  return doc.state === "pilot" || doc.state === "running";
}

async function main() {
  await showList();
  if (selected) {
    $("#halt").addEventListener("click", async () => {
      try {
        await api(`/api/v1/rollouts/${encodeURIComponent(selected)}/halt`, {method: "POST", body: {}});
        await showDetail();
      } catch (err) {
        $("#detail-reason").hidden = false;
        $("#detail-reason").textContent = explain(err);
      }
    });
    try {
      let active = await showDetail();
      const tick = async () => {
        if (!active) return;
        active = await showDetail().catch(() => active);
        setTimeout(tick, 5000);
      };
      setTimeout(tick, 5000);
    } catch (err) {
      $("#detail").hidden = false;
      $("#detail-summary").textContent = explain(err);
    }
  }
  loaded();
}

main();
