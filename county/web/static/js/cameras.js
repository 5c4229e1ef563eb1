// 摄像头: the camera report for a day or a month (GET /api/v1/reports/cameras), point-in-time and
// time-weighted side by side per county / township / village; the cameras not online now with their reason
// in words (GET /api/v1/cameras); the assessment sheet download (GET /api/v1/reports/cameras/sheet).
import { api, explain } from "./api.js";
import { $, clear, h } from "./dom.js";
import { countyDay, fmtDateTime, fmtNumber, fmtPercent } from "./fmt.js";
import { LOCALE, t } from "./i18n.js";
import { loaded } from "./session.js";
import { cameraBadge, cameraReasonWord } from "./words.js";

const period = $("#period");
const day = $("#day");
const month = $("#month");

function query() {
  const p = period.value;
  const date = p === "day" ? day.value : month.value;
  return new URLSearchParams({period: p, date});
}

function links() {
  const q = query();
  q.set("lang", LOCALE);
  $("#xlsx").href = `/api/v1/reports/cameras/sheet?${q}&format=xlsx`;
  $("#csv").href = `/api/v1/reports/cameras/sheet?${q}&format=csv`;
}

function rateRow(r) {
  const indent = {county: "", township: "　", village: "　　"}[r.level] || "";
  return h("tr", {dataset: {region: r.id, level: r.level}, class: r.level === "village" ? "" : "strong"},
    h("td", {title: r.id}, indent, r.name),
    h("td", {class: "num"}, fmtNumber(r.cameras)),
    h("td", {class: "num rate-pit"}, fmtPercent(r.online_rate_pit)),
    h("td", {class: "num rate-tw"}, fmtPercent(r.online_rate_tw)),
    h("td", {class: "num hide-narrow"}, fmtPercent(r.coverage)),
    h("td", {class: "num hide-narrow"}, fmtNumber(Math.round((r.offline_s / 3600) * 10) / 10)));
}

async function showRates() {
  const body = $("#rates tbody");
  try {
    const report = await api(`/api/v1/reports/cameras?${query()}`);
    clear(body).append(...report.rows.map(rateRow));
    if (!report.rows.length) body.append(h("tr", {}, h("td", {colspan: 6, class: "muted"}, t("No region to show."))));
  } catch (err) {
    clear(body).append(h("tr", {}, h("td", {colspan: 6, class: "error"}, explain(err))));
  }
}

async function showOffline() {
  const body = $("#offline tbody");
  try {
    const cams = (await api("/api/v1/cameras")).filter((c) => c.state !== "online");
    clear(body).append(...cams.map((c) => h("tr", {dataset: {camera: c.camera, box: c.box}},
      h("td", {title: c.village || ""}, [c.township_name, c.village_name].filter(Boolean).join(" · ") || t("Not in the regions file")),
      h("td", {title: c.box}, c.box_name || c.box),
      h("td", {}, c.camera),
      h("td", {}, cameraBadge(c.state)),
      h("td", {class: "reason"}, cameraReasonWord(c.reason) || "–"),
      h("td", {}, fmtDateTime(c.since)))));
    if (!cams.length) body.append(h("tr", {}, h("td", {colspan: 6, class: "muted"}, t("Every camera is online."))));
  } catch (err) {
    clear(body).append(h("tr", {}, h("td", {colspan: 6, class: "error"}, explain(err))));
  }
}

async function main() {
  const today = countyDay();
  day.value = today;
  month.value = today.slice(0, 7);
  period.addEventListener("change", () => {
    $("#day-label").hidden = period.value !== "day";
    $("#month-label").hidden = period.value !== "month";
    links();
  });
  day.addEventListener("change", links);
  month.addEventListener("change", links);
  $("#pick").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    delete document.body.dataset.loaded;
    links();
    await showRates();
    loaded();
  });
  links();
  await Promise.all([showRates(), showOffline()]);
  loaded();
}

main();
