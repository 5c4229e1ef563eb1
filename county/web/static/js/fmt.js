// Dates, times and numbers for the page's locale, in the county's timezone (<body data-tz>): every time
// the console shows goes through here, so no page ever shows epoch numbers.
import { LANG, t } from "./i18n.js";

export const TZ = document.body.dataset.tz || "Asia/Shanghai";
const tag = LANG === "en" ? "en-GB" : LANG;

const dateTime = new Intl.DateTimeFormat(tag, {
  timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
});
const dateOnly = new Intl.DateTimeFormat(tag, {timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit"});
const timeOnly = new Intl.DateTimeFormat(tag, {timeZone: TZ, hour: "2-digit", minute: "2-digit", hourCycle: "h23"});
const number = new Intl.NumberFormat(tag);
const percent = new Intl.NumberFormat(tag, {style: "percent", maximumFractionDigits: 1});
const relative = new Intl.RelativeTimeFormat(tag, {numeric: "auto"});

// epoch ms -> "2026/12/01 08:30:00" (zh-CN) / "01/12/2026, 08:30:00" (en); "" for null
export function fmtDateTime(ms) {
  return ms == null ? "" : dateTime.format(new Date(ms));
}
export function fmtDate(ms) {
  return ms == null ? "" : dateOnly.format(new Date(ms));
}
export function fmtTime(ms) {
  return ms == null ? "" : timeOnly.format(new Date(ms));
}
export function fmtNumber(n) {
  return n == null ? "–" : number.format(n);
}
// a rate 0..1 -> "97.5%"; null (nothing to rate) -> "–"
export function fmtPercent(r) {
  return r == null ? "–" : percent.format(r);
}
// epoch ms -> "3 minutes ago" / "3分钟前" against now (Date.now())
export function fmtAgo(ms, now = Date.now()) {
  if (ms == null) return t("never");
  const s = Math.round((ms - now) / 1000);
  const abs = Math.abs(s);
  if (abs < 60) return relative.format(s, "second");
  if (abs < 3600) return relative.format(Math.round(s / 60), "minute");
  if (abs < 86400) return relative.format(Math.round(s / 3600), "hour");
  return relative.format(Math.round(s / 86400), "day");
}
// seconds -> "1 h 5 min" in words of the locale
export function fmtDuration(seconds) {
  if (seconds == null) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return t("{n} s", {n: number.format(s)});
  if (s < 3600) return t("{n} min", {n: number.format(Math.round(s / 60))});
  const h = Math.floor(s / 3600), m = Math.round((s % 3600) / 60);
  return m ? t("{h} h {m} min", {h: number.format(h), m: number.format(m)}) : t("{h} h", {h: number.format(h)});
}
// a Date -> "YYYY-MM-DD" of the county's calendar (for <input type=date> and the report API)
export function countyDay(date = new Date()) {
  const parts = new Intl.DateTimeFormat("en-CA", {timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit"})
    .formatToParts(date);
  const get = (k) => parts.find((p) => p.type === k).value;
  return `${get("year")}-${get("month")}-${get("day")}`;
}
