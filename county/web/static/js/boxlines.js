// Shared by the boxes list and the box page: a box's clock and outbox counters in words.
import { h } from "./dom.js";
import { fmtNumber } from "./fmt.js";
import { t } from "./i18n.js";
import { classText } from "./words.js";

const COUNTERS = {
  evicted: t("evicted"), expired: t("expired"), refused: t("refused"), dropped: t("dropped"),
  sent: t("sent"), acked: t("acknowledged"), retried: t("retried"), stored: t("stored"),
};

export function clockCell(clock) {
  if (!clock) return h("span", {class: "muted"}, t("not reported"));
  if (clock.plausible === false) return h("span", {class: "badge bad", title: clock.reason || ""}, t("clock wrong"));
  if (clock.synchronised === false) {
    return h("span", {class: "badge warn", title: clock.reason || ""}, t("not synchronised"));
  }
  const off = typeof clock.offset_s === "number" ? t("{s} s off", {s: fmtNumber(Math.round(clock.offset_s * 10) / 10)}) : "";
  return h("span", {class: "badge ok", title: clock.reason || ""}, t("clock good"), off ? ` · ${off}` : "");
}

function counterName(name) {
  for (const [prefix, word] of Object.entries(COUNTERS)) {
    if (name === prefix) return word;
    if (name.startsWith(`${prefix}_`) || name.startsWith(`${prefix}.`)) {
      return `${word} (${classText(name.slice(prefix.length + 1))})`;
    }
  }
  return name;
}

export function countersText(counters) {
  if (!counters) return "";
  const parts = Object.entries(counters).filter(([, v]) => typeof v === "number" && v > 0)
    .map(([k, v]) => `${counterName(k)} ${fmtNumber(v)}`);
  return parts.length ? parts.join(" · ") : t("none");
}
