// 审计日志: the audit log newest first, filtered (GET /api/v1/audit), with the hash chain's check result
// (GET /api/v1/audit/check). Dates are the county's calendar days.
import { api, explain } from "./api.js";
import { $, clear, h } from "./dom.js";
import { fmtDateTime, fmtNumber, TZ } from "./fmt.js";
import { t } from "./i18n.js";
import { loaded } from "./session.js";
import { ACTION_WORDS, actionWord } from "./roles.js";

let before = null;

// "YYYY-MM-DD" of the county's calendar -> epoch ms of its local midnight
function countyMidnight(day) {
  const [y, m, d] = day.split("-").map(Number);
  const guess = Date.UTC(y, m - 1, d);
  const parts = new Intl.DateTimeFormat("en-US", {timeZone: TZ, hourCycle: "h23", year: "numeric", month: "2-digit",
    day: "2-digit", hour: "2-digit", minute: "2-digit"}).formatToParts(new Date(guess));
  const get = (k) => Number(parts.find((p) => p.type === k).value);
  const local = Date.UTC(get("year"), get("month") - 1, get("day"), get("hour"), get("minute"));
  return guess - (local - guess);
}

function detailText(d) {
  if (d == null) return "";
  if (typeof d !== "object") return String(d);
  return Object.entries(d).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
}

async function showChain() {
  const el = $("#chain");
  try {
    const c = await api("/api/v1/audit/check");
    clear(el);
    if (c.ok) {
      el.append(h("span", {class: "chain-ok", id: "chain-ok"}, t("The audit chain is intact.")), " ",
        t("{n} entries; newest No. {seq}, hash {hash}…", {n: fmtNumber(c.rows), seq: c.head_seq ?? "–",
          hash: (c.head_hash || "").slice(0, 16)}));
    } else {
      const why = {
        edited: t("the entry was changed after it was written"), deleted: t("entries before it were deleted"),
        unchained: t("an entry before it was changed or replaced"),
        head_changed: t("the newest entry recorded earlier was changed"),
        head_missing: t("entries at the end were deleted"),
      }[c.broken.kind] || t("the entry does not check");
      el.append(h("span", {class: "chain-bad", id: "chain-bad"}, t("The audit chain is broken!")), " ",
        t("At entry No. {seq}: {problem}", {seq: c.broken.seq, problem: why}), " ",
        h("code", {translate: "no"}, c.broken.problem));
    }
  } catch (err) {
    clear(el).append(h("span", {class: "error"}, explain(err)));
  }
}

function filterQuery() {
  const f = new FormData($("#filter"));
  const q = new URLSearchParams();
  for (const k of ["actor", "action", "target"]) if (f.get(k)) q.set(k, f.get(k));
  if (f.get("from")) q.set("from", String(countyMidnight(f.get("from"))));
  if (f.get("to")) q.set("to", String(countyMidnight(f.get("to")) + 86400000));
  return q;
}

async function showRows(append) {
  const body = $("#audit tbody");
  const q = filterQuery();
  if (append && before) q.set("before", String(before));
  try {
    const page = await api(`/api/v1/audit?${q}`);
    if (!append) clear(body);
    body.append(...page.rows.map((r) => h("tr", {dataset: {seq: r.seq, action: r.action}},
      h("td", {class: "num"}, r.seq), h("td", {}, fmtDateTime(r.ts)), h("td", {class: "actor"}, r.actor),
      h("td", {class: "action"}, actionWord(r.action)), h("td", {}, r.target || "–"),
      h("td", {class: "detail", translate: "no"}, detailText(r.detail)))));
    if (!append && !page.rows.length) body.append(h("tr", {}, h("td", {colspan: 6, class: "muted"}, t("No entries."))));
    before = page.next_before;
    $("#older").hidden = !before;
  } catch (err) {
    clear(body).append(h("tr", {}, h("td", {colspan: 6, class: "error"}, explain(err))));
  }
}

async function main() {
  const select = $("#action");
  for (const [code, word] of Object.entries(ACTION_WORDS)) select.append(h("option", {value: code}, word));
  $("#filter").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    delete document.body.dataset.loaded;
    await showRows(false);
    loaded();
  });
  $("#older").addEventListener("click", () => showRows(true));
  await Promise.all([showChain(), showRows(false)]);
  loaded();
}

main();
