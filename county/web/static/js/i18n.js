// The console's catalog in the browser: t("Boxes") looks the msgid up in the page's locale (the same
// county/web/locale/*/console.po the templates use, served as /i18n/LOCALE.json); placeholders
// t("{n} boxes", {n: 3}). Write every shown string as t("literal") so `python -m county.web.i18n` finds it.
const locale = document.body.dataset.locale || "zh_CN";
let messages = {};
try {
  const r = await fetch(`/i18n/${encodeURIComponent(locale)}.json`, {credentials: "same-origin"});
  if (r.ok) messages = (await r.json()).messages || {};
} catch (e) {
  console.warn("catalog not loaded", e);
}

export function t(msgid, params) {
  let text = Object.prototype.hasOwnProperty.call(messages, msgid) ? messages[msgid] : msgid;
  if (params) {
    text = text.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (m, k) => (k in params ? String(params[k]) : m));
  }
  return text;
}

export const LOCALE = locale;
export const LANG = document.body.dataset.lang || "zh-CN";
